from django.urls import path

from . import views

urlpatterns = [
    path("", views.index),
    path("login/", views.login_view),
    path("logout/", views.logout_view),
    path("publish/", views.publish),
    path("slow/", views.slow),
]
