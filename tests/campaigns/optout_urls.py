"""Stand-in for the opt-out pages' URLs (optout:link, optout:status, optout:unsubscribe)
while optout/urls.py does not serve them yet: same names, same language prefix, same
token argument, so `optout.links` builds the URLs it builds in production."""

from __future__ import annotations

from django.conf.urls.i18n import i18n_patterns
from django.http import HttpResponse
from django.urls import include, path

from config.urls import urlpatterns as project_urlpatterns


def _page(request, token):
    return HttpResponse(token)


optout_patterns = (
    [
        path("t/<str:token>/", _page, name="link"),
        path("status/<str:token>/", _page, name="status"),
        path("unsubscribe/<str:token>/", _page, name="unsubscribe"),
    ],
    "optout",
)

urlpatterns = [p for p in project_urlpatterns if getattr(p, "namespace", None) != "optout"]
urlpatterns = [*urlpatterns[:2], *i18n_patterns(path("optout/", include(optout_patterns)), prefix_default_language=True)]
