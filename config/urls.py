from __future__ import annotations

from django.conf.urls.i18n import i18n_patterns
from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("optout.api_urls")),
]
urlpatterns += i18n_patterns(
    path("optout/", include("optout.urls")),
    prefix_default_language=True,
)
