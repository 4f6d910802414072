"""Staff dashboards and the regulator's report, served inside the admin site.

DemurAdminSite.get_urls() mounts `urlpatterns` under /admin/ and wraps each view in
admin_view(), so every page needs a staff login. The URL names are fixed: the campaign
admin links to them. Reading needs the permission to view campaigns, which both roles
("Privacy staff", "Privacy viewer") have; other staff get 403.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.translation import get_language
from django.utils.translation import gettext as _

from campaigns import charts
from campaigns.charts import Bar, Series, count_text, percent_text
from campaigns.dashboard import BOUNCE_RATE_LIMIT, COMPLAINT_RATE_LIMIT, Counts, Stats, dashboard_stats
from campaigns.models import Campaign
from campaigns.report import FontMissing, report_build, report_csv, report_pdf
from core.countries import babel_locale

READ_PERMISSION = "campaigns.view_campaign"


def _require_reader(request: HttpRequest) -> None:
    if not request.user.has_perm(READ_PERMISSION):
        raise PermissionDenied


def dashboard(request: HttpRequest) -> HttpResponse:
    _require_reader(request)
    stats = dashboard_stats()
    counted = stats.campaigns if stats else {}
    names = dict(Campaign.objects.filter(pk__in=counted).values_list("pk", "name"))
    statuses = dict(Campaign.objects.filter(pk__in=counted).values_list("pk", "status"))
    campaign_rows = [
        {
            "id": pk,
            "name": names.get(pk, pk),
            "status": Campaign.Status(statuses[pk]).label if pk in statuses else "",
            "audience": count_text(counts.audience),
            "reach": percent_text(counts.reach),
            "objected": count_text(counts.objected),
            "bounce_rate": percent_text(mail.bounce_rate, 2),
            "complaint_rate": percent_text(mail.complaint_rate, 2),
            "warning": mail.bounce_warning or mail.complaint_warning,
        }
        for pk, (counts, mail) in sorted(counted.items(), reverse=True)
    ]
    context = {
        **admin.site.each_context(request),
        "title": _("Dashboard: all campaigns"),
        "campaign_rows": campaign_rows,
        **(_figures(stats) if stats else {}),
    }
    return TemplateResponse(request, "campaigns/dashboard/overall.html", context)


def campaign_dashboard(request: HttpRequest, campaign_id: int) -> HttpResponse:
    _require_reader(request)
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    stats = dashboard_stats(campaign_id=campaign.pk)
    context = {
        **admin.site.each_context(request),
        "title": _("Dashboard: {campaign}").format(campaign=campaign.name),
        "campaign": campaign,
        "opts": Campaign._meta,
        **(_figures(stats) if stats else {}),
    }
    return TemplateResponse(request, "campaigns/dashboard/campaign.html", context)


def campaign_report(request: HttpRequest, campaign_id: int, fmt: str) -> HttpResponse:
    _require_reader(request)
    if fmt not in ("csv", "pdf"):
        raise Http404
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    report = report_build(campaign_id=campaign.pk)
    if fmt == "csv":
        response = HttpResponse(report_csv(report), content_type="text/csv; charset=utf-8")
    else:
        try:
            response = HttpResponse(report_pdf(report), content_type="application/pdf")
        except FontMissing as exc:
            return HttpResponse(str(exc), status=503, content_type="text/plain; charset=utf-8")
    filename = f"demur-report-campaign-{campaign.pk}-{report.made_at:%Y%m%d-%H%M}.{fmt}"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    from optout.models import AuditEntry
    from optout.services import audit_record

    with transaction.atomic():
        audit_record(
            user=request.user,
            action=AuditEntry.Action.EXPORT,
            target=campaign.name,
            details={"report": fmt, "campaign": campaign.pk},
        )
    return response


def _figures(stats: Stats) -> dict:
    """Charts and table rows for templates/django/campaigns/dashboard/_figures.html."""
    locale = babel_locale(get_language() or "en")
    total = stats.total
    steps = [
        (_("Audience"), total.audience),
        (_("Delivered or shown"), total.reached),
        (_("Opened or shown in the app"), total.opened),
        (_("Clicked"), total.clicked),
        (_("Objected"), total.objected),
    ]
    funnel = [
        {
            "label": label,
            "count": count_text(n),
            "share": percent_text(100 * n / total.audience if total.audience else None),
        }
        for label, n in steps
    ]

    def rows(groups: dict[str, Counts], names: dict[str, str]) -> list[dict]:
        return [
            {
                "code": code,
                "name": names.get(code, code) if code else _("unknown"),
                "audience": count_text(c.audience),
                "reached": count_text(c.reached),
                "reach": percent_text(c.reach),
                "reach_value": c.reach or 0,
                "objected": count_text(c.objected),
                "objected_value": c.objected,
                "objection_rate": percent_text(c.objection_rate),
                "withdrawn": count_text(c.withdrawn),
            }
            for code, c in groups.items()
        ]

    countries = rows(stats.countries, locale.territories)
    languages = rows(stats.languages, locale.languages)
    mail = stats.mail
    days = [d.day for d in stats.days]
    return {
        # Headers with a percent sign come from here: in a template, {% translate %} would
        # make each a second message ("Reach (%%)") for the translators.
        "headers": {
            "reach": _("Reach (%)"),
            "objection_rate": _("Objection rate (%)"),
            "bounce_rate": _("Bounce rate (%)"),
            "complaint_rate": _("Complaint rate (%)"),
            "share": _("Share of the audience (%)"),
        },
        "stats": stats,
        "max_age": settings.DEMUR_DASHBOARD_MAX_AGE,
        "age": count_text(stats.age),
        "counted_in": percent_text(stats.seconds, 1),
        "funnel": funnel,
        "funnel_chart": charts.bar_chart(
            chart_id="chart-funnel",
            title=_("From audience to objection (people)"),
            bars=[Bar(label, n, count_text(n)) for label, n in steps],
        ),
        "countries": countries,
        "reach_chart": charts.bar_chart(
            chart_id="chart-reach",
            title=_("Reach per country (share of the audience, %)"),
            bars=[Bar(r["name"], r["reach_value"], f"{r['reach']} %") for r in countries],
            maximum=100,
        ),
        "country_objections_chart": charts.bar_chart(
            chart_id="chart-objections-country",
            title=_("Objections per country"),
            bars=[Bar(r["name"], r["objected_value"], r["objected"]) for r in countries],
        ),
        "languages": languages,
        "language_objections_chart": charts.bar_chart(
            chart_id="chart-objections-language",
            title=_("Objections per language"),
            bars=[Bar(r["name"], r["objected_value"], r["objected"]) for r in languages],
        ),
        "days": [
            {"day": d.day, "objected": count_text(d.objected), "withdrawn": count_text(d.withdrawn)} for d in stats.days
        ],
        "time_chart": charts.time_chart(
            chart_id="chart-time",
            title=_("Objections and withdrawals per day"),
            days=days,
            series=[
                Series(_("Objections"), [d.objected for d in stats.days], "area"),
                Series(_("Withdrawals"), [d.withdrawn for d in stats.days], "line"),
            ],
        )
        if days
        else "",
        "mail": {
            "sent": count_text(mail.sent),
            "delivered": count_text(mail.delivered),
            "bounced": count_text(mail.bounced),
            "complained": count_text(mail.complained),
            "failed": count_text(mail.failed),
            "bounce_rate": percent_text(mail.bounce_rate, 2),
            "complaint_rate": percent_text(mail.complaint_rate, 2),
            "bounce_warning": mail.bounce_warning,
            "complaint_warning": mail.complaint_warning,
            "bounce_warn_at": percent_text(settings.DEMUR_BOUNCE_RATE_WARNING, 2),
            "complaint_warn_at": percent_text(settings.DEMUR_COMPLAINT_RATE_WARNING, 2),
            "bounce_limit": percent_text(BOUNCE_RATE_LIMIT, 2),
            "complaint_limit": percent_text(COMPLAINT_RATE_LIMIT, 2),
        },
    }


urlpatterns = [
    path("dashboard/", dashboard, name="demur-dashboard"),
    path("dashboard/campaign/<int:campaign_id>/", campaign_dashboard, name="demur-campaign-dashboard"),
    path("report/campaign/<int:campaign_id>.<str:fmt>", campaign_report, name="demur-campaign-report"),
]
