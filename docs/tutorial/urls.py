from chat.views import room
from django.contrib import admin
from django.urls import path

urlpatterns = [
    path("", room, name="room"),
    path("admin/", admin.site.urls),
]
