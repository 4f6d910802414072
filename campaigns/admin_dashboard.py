"""Staff dashboards and the regulator's report, served inside the admin site.

DemurAdminSite.get_urls() mounts `urlpatterns` under /admin/ and wraps each view in
admin_view(), so every page needs a staff login. The URL names are fixed: the campaign
admin links to them.
"""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.urls import path


def dashboard(request: HttpRequest) -> HttpResponse:
    raise Http404


def campaign_dashboard(request: HttpRequest, campaign_id: int) -> HttpResponse:
    raise Http404


def campaign_report(request: HttpRequest, campaign_id: int, fmt: str) -> HttpResponse:
    raise Http404


urlpatterns = [
    path("dashboard/", dashboard, name="demur-dashboard"),
    path("dashboard/campaign/<int:campaign_id>/", campaign_dashboard, name="demur-campaign-dashboard"),
    path("report/campaign/<int:campaign_id>.<str:fmt>", campaign_report, name="demur-campaign-report"),
]
