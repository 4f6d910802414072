"""Launch, pause, resume and cancel from the campaign's admin page, and its live progress.

Each control is a link to a confirmation page: GET only says what will happen (how many
people, per channel) and never acts, a POST with the CSRF token calls the service in
campaigns.services, and the audit line is written in the same transaction. The service
is the authority on what the campaign's state allows; its message is shown as it is.
Only users with `campaigns.control_campaign` (granted to "Privacy staff") see the
buttons; everyone else gets 403 on these URLs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from csp.decorators import csp_replace
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.clickjacking import xframe_options_sameorigin

from campaigns.console import launch_estimate, progress_panel
from campaigns.models import Campaign, Delivery
from campaigns.notices import NoticeNotReady
from campaigns.services import (
    CampaignStateError,
    campaign_cancel,
    campaign_launch,
    campaign_pause,
    campaign_resume,
    notice_versions_freeze,
)
from optout.models import AuditEntry
from optout.services import audit_record

CONTROL_PERMISSION = "campaigns.control_campaign"
S = Campaign.Status
# The progress panel reloads itself this often (seconds) while anything is in flight.
PROGRESS_REFRESH_SECONDS = 5


@dataclass(frozen=True)
class Control:
    action: str
    label: str
    audit: str
    # The states in which the button is offered; the service decides in the end.
    offered_in: tuple[str, ...]
    run: Callable[[int], object]


CONTROLS = {
    control.action: control
    for control in (
        Control(
            "launch",
            _("Launch"),
            AuditEntry.Action.LAUNCH,
            (S.DRAFT,),
            lambda pk: campaign_launch(campaign_id=pk),
        ),
        Control(
            "pause",
            _("Pause"),
            AuditEntry.Action.PAUSE,
            (S.RUNNING,),
            lambda pk: campaign_pause(campaign_id=pk),
        ),
        Control(
            "resume",
            _("Resume"),
            AuditEntry.Action.RESUME,
            (S.PAUSED,),
            lambda pk: campaign_resume(campaign_id=pk),
        ),
        Control(
            "cancel",
            _("Cancel"),
            AuditEntry.Action.CANCEL,
            (S.DRAFT, S.SCHEDULED, S.RUNNING, S.PAUSED),
            lambda pk: campaign_cancel(campaign_id=pk),
        ),
    )
}


def can_control(request: HttpRequest) -> bool:
    return request.user.has_perm(CONTROL_PERMISSION)


def control_links(request: HttpRequest, campaign: Campaign) -> list[tuple[str, str, str]]:
    """(action, label, confirmation URL) of the buttons this user gets for this campaign."""
    if not can_control(request):
        return []
    return [
        (c.action, str(c.label), reverse("admin:campaigns_campaign_control", args=[campaign.pk, c.action]))
        for c in CONTROLS.values()
        if campaign.status in c.offered_in
    ]


def report_links(campaign: Campaign) -> list[tuple[str, str]]:
    """The campaign's dashboard and its regulator's report (campaigns.admin_dashboard)."""
    wanted = [
        (_("Dashboard"), "admin:demur-campaign-dashboard", [campaign.pk]),
        (_("Report (PDF)"), "admin:demur-campaign-report", [campaign.pk, "pdf"]),
        (_("Report (CSV)"), "admin:demur-campaign-report", [campaign.pk, "csv"]),
    ]
    links = []
    for label, name, args in wanted:
        try:
            links.append((str(label), reverse(name, args=args)))
        except NoReverseMatch:
            continue
    return links


def _pending_mail(campaign: Campaign) -> int:
    return Delivery.objects.filter(
        campaign_id=campaign.pk,
        channel=Delivery.Channel.MAIL,
        status__in=[Delivery.Status.PENDING, Delivery.Status.CLAIMED],
    ).count()


def control_view(model_admin, request: HttpRequest, campaign_id: int, action: str) -> HttpResponse:
    control = CONTROLS.get(action)
    if control is None:
        raise Http404
    if not can_control(request):
        raise PermissionDenied
    campaign = get_object_or_404(Campaign.objects.select_related("purpose"), pk=campaign_id)
    change_url = reverse("admin:campaigns_campaign_change", args=[campaign.pk])
    if request.method == "POST":
        try:
            if action == "launch" and campaign.status == S.DRAFT:
                # Rendered before the transaction opens (idempotent; the launch finds the
                # versions frozen), so it stays as short as the service's own.
                notice_versions_freeze(campaign_id=campaign.pk)
            with transaction.atomic():
                result = control.run(campaign.pk)
                details = {"campaign": campaign.pk}
                if action in ("launch", "cancel"):
                    details["deliveries"] = result
                audit_record(
                    user=request.user, action=control.audit, target=f"{campaign.pk}: {campaign.name}", details=details
                )
        except CampaignStateError as error:
            messages.error(request, str(error))
        except NoticeNotReady:
            messages.error(
                request,
                gettext("The campaign lacks values the notice needs: fill in every field under “Notice”."),
            )
        else:
            messages.success(request, _done_message(action, campaign, result))
        return HttpResponseRedirect(change_url)
    if request.method != "GET":
        return HttpResponse(status=405, headers={"Allow": "GET, POST"})
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "original": campaign,
        "campaign": campaign,
        "action": action,
        "title": control.label,
        "button": control.label,
        "offered": campaign.status in control.offered_in,
        "change_url": change_url,
    }
    if action == "launch":
        context["estimate"] = launch_estimate(campaign=campaign)
        context["starts_later"] = bool(campaign.scheduled_at and campaign.scheduled_at > timezone.now())
    else:
        context["pending_mail"] = _pending_mail(campaign)
    return TemplateResponse(request, "campaigns/control_confirm.html", context)


def _done_message(action: str, campaign: Campaign, result) -> str:
    if action == "launch":
        return gettext("{campaign} launched. Deliveries created: {count}.").format(campaign=campaign, count=result)
    if action == "cancel":
        return gettext("{campaign} cancelled. Mails that will not be sent: {count}.").format(
            campaign=campaign, count=result
        )
    if action == "pause":
        return gettext("{campaign} paused.").format(campaign=campaign)
    return gettext("{campaign} resumed.").format(campaign=campaign)


@xframe_options_sameorigin
@csp_replace({"frame-ancestors": ["'self'"]})  # framed by the campaign's own change page
def progress_view(model_admin, request: HttpRequest, campaign_id: int) -> HttpResponse:
    """The progress panel on its own, framed by the change page; it reloads itself with
    <meta http-equiv="refresh"> while mail is in flight (no script: the admin's pages
    need none for this)."""
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    if not model_admin.has_view_permission(request, campaign):
        raise PermissionDenied
    progress = progress_panel(campaign=campaign)
    live = campaign.status in (S.SCHEDULED, S.RUNNING) or progress.active
    shown = request.GET.get("shown")
    context = {
        "campaign": campaign,
        "progress": progress,
        "refresh": PROGRESS_REFRESH_SECONDS if live else None,
        # The page around the panel offers the buttons of the status it was drawn for.
        "status_changed": bool(shown) and shown != campaign.status,
        "change_url": reverse("admin:campaigns_campaign_change", args=[campaign.pk]),
    }
    return TemplateResponse(request, "campaigns/progress.html", context)
