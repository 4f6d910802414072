from __future__ import annotations

from django.urls import path

from optout import views

app_name = "optout"
urlpatterns = [
    path("", views.public_form, name="form"),
    path("t/<str:token>/", views.link, name="link"),
    path("status/<str:token>/", views.status, name="status"),
    path("verify/<str:token>/", views.verify, name="verify"),
]
