from django.urls import include, path

from . import token_views

urlpatterns = [
    path("tokens/make/", token_views.make),
    path("tokens/user/", token_views.user),
    path("", include("testproject.urls")),
]
