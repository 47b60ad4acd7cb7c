from django.urls import path

from . import views

urlpatterns = [
    path("", views.index),
    path("login/", views.login_view),
    path("session/", views.new_session),
    path("logout/", views.logout_view),
    path("publish/", views.publish),
    path("apublish/", views.apublish),
    path("fetch/", views.fetch),
    path("afetch/", views.afetch),
    path("slow/", views.slow),
    path("body-digest/", views.body_digest),
]
