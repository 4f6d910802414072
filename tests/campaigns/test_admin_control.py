"""The campaign console in the admin: edit while draft, the launch, pause, resume and
cancel buttons with their confirmation pages, who may press them, the audit trail, and
the live progress panel."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from campaigns.models import Campaign, Delivery, Recipient, Suppression
from campaigns.services import campaign_launch, notice_versions_freeze
from optout.models import AuditEntry, Source
from optout.services import objection_record
from tests.campaigns.factories import make_campaign

pytestmark = pytest.mark.django_db

ACTIONS = ("launch", "pause", "resume", "cancel")


def _member(group: str, username: str) -> Client:
    user = User.objects.create_user(username, f"{username}@example.org", "pw", is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


@pytest.fixture
def staff() -> Client:
    return _member("Privacy staff", "sam")


@pytest.fixture
def viewer() -> Client:
    return _member("Privacy viewer", "val")


@pytest.fixture
def audience(purpose) -> None:
    Recipient.objects.bulk_create(
        [
            Recipient(subject_id="u-1", email="u1@example.org", language="de", country="DE"),
            Recipient(subject_id="u-2", email="", language="fr", country="FR"),
            Recipient(subject_id="u-3", email="u3@example.org", language="pl", country="PL"),
            Recipient(subject_id="u-4", email="u4@example.org", language="pl", country="PL"),
            Recipient(subject_id="elsewhere", email="e@example.org", language="sv", country="SE"),
        ]
    )
    Suppression.objects.create(subject_id="u-4", reason=Suppression.Reason.UNSUBSCRIBED)
    objection_record(subject_id="u-3", purpose="ai-training", source=Source.API)


def _control(campaign: Campaign, action: str) -> str:
    return reverse("admin:campaigns_campaign_control", args=[campaign.pk, action])


def _csrf(page: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)


def _confirm(client: Client, campaign: Campaign, action: str):
    """Open the confirmation page, then press its button, as a person would."""
    page = client.get(_control(campaign, action))
    assert page.status_code == 200
    return client.post(_control(campaign, action), {"csrfmiddlewaretoken": _csrf(page.content.decode())})


def _buttons(client: Client, campaign: Campaign) -> set[str]:
    page = client.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk])).content.decode()
    return set(re.findall(r'class="campaign-control campaign-control-(\w+)"', page))


def _in_state(purpose, status: str) -> Campaign:
    campaign = make_campaign(purpose)
    if status != Campaign.Status.DRAFT:
        Campaign.objects.filter(pk=campaign.pk).update(status=status, launched_at=timezone.now())
        campaign.refresh_from_db()
    return campaign


@pytest.mark.parametrize(
    ("status", "buttons"),
    [
        ("draft", {"launch", "cancel"}),
        ("scheduled", {"cancel"}),
        ("running", {"pause", "cancel"}),
        ("paused", {"resume", "cancel"}),
        ("completed", set()),
        ("cancelled", set()),
    ],
)
def test_staff_get_the_buttons_the_campaigns_state_allows(staff, viewer, purpose, status, buttons):
    campaign = _in_state(purpose, status)

    assert _buttons(staff, campaign) == buttons
    assert _buttons(viewer, campaign) == set()


def test_the_launch_confirmation_says_how_many_people_per_channel_and_changes_nothing(staff, purpose, audience):
    campaign = make_campaign(purpose, countries=["DE", "FR", "PL"], send_inapp=True)

    page = staff.get(_control(campaign, "launch")).content.decode()

    counts = dict(re.findall(r'<dd id="launch-(\w+)">(\d+)', page))
    # u-2 has no address and u-4 unsubscribed: no mail, but the in-app notice; SE is filtered out.
    assert counts == {"audience": "4", "mail": "2", "inapp": "4", "objected": "1"}
    assert "Sending starts at once." in page
    campaign.refresh_from_db()
    assert campaign.status == "draft" and not Delivery.objects.exists() and not AuditEntry.objects.exists()


def test_staff_launch_after_confirming_and_the_audit_log_says_so(staff, purpose, audience):
    campaign = make_campaign(purpose, countries=["DE", "FR", "PL"])

    response = _confirm(staff, campaign, "launch")

    assert response.status_code == 302
    campaign.refresh_from_db()
    assert campaign.status == "running"
    assert Delivery.objects.filter(campaign=campaign).count() == 2
    entry = AuditEntry.objects.get()
    assert (entry.username, entry.action, entry.target) == ("sam", "launch", f"{campaign.pk}: {campaign.name}")
    assert entry.details == {"campaign": campaign.pk, "deliveries": 2}
    assert "Deliveries created: 2." in staff.get(response["Location"]).content.decode()


def test_a_launch_without_the_csrf_token_is_refused(staff, purpose, audience):
    campaign = make_campaign(purpose)

    assert staff.post(_control(campaign, "launch")).status_code == 403

    campaign.refresh_from_db()
    assert campaign.status == "draft" and not Delivery.objects.exists() and not AuditEntry.objects.exists()


def test_a_viewer_cannot_launch_or_even_see_the_confirmation(viewer, purpose, audience):
    campaign = make_campaign(purpose)
    page = viewer.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk])).content.decode()

    for action in ACTIONS:
        assert viewer.get(_control(campaign, action)).status_code == 403
        assert viewer.post(_control(campaign, action), {"csrfmiddlewaretoken": _csrf(page)}).status_code == 403

    campaign.refresh_from_db()
    assert campaign.status == "draft" and not Delivery.objects.exists() and not AuditEntry.objects.exists()


def test_pause_resume_and_cancel_each_move_the_campaign_and_leave_an_audit_line(staff, purpose, audience):
    campaign = make_campaign(purpose)
    campaign_launch(campaign_id=campaign.pk)

    assert '<dd id="pending-mail">3</dd>' in staff.get(_control(campaign, "cancel")).content.decode()

    for action, status in (("pause", "paused"), ("resume", "running"), ("pause", "paused"), ("cancel", "cancelled")):
        assert _confirm(staff, campaign, action).status_code == 302
        campaign.refresh_from_db()
        assert campaign.status == status

    assert list(AuditEntry.objects.order_by("id").values_list("action", flat=True)) == [
        "pause",
        "resume",
        "pause",
        "cancel",
    ]
    assert AuditEntry.objects.get(action="cancel").details == {"campaign": campaign.pk, "deliveries": 3}
    assert not Delivery.objects.filter(status="pending", channel="mail").exists()


def test_a_move_the_state_does_not_allow_shows_the_services_reason_and_logs_nothing(staff, purpose, audience):
    campaign = make_campaign(purpose)
    page = staff.get(_control(campaign, "pause")).content.decode()
    assert "does not allow this now" in page and 'id="confirm-pause"' not in page

    response = staff.post(_control(campaign, "pause"), {"csrfmiddlewaretoken": _csrf(page)}, follow=True)

    messages = [str(m) for m in response.context["messages"]]
    assert len(messages) == 1 and "draft" in messages[0]
    campaign.refresh_from_db()
    assert campaign.status == "draft" and not AuditEntry.objects.exists()


def test_an_unknown_action_is_a_404(staff, purpose):
    assert staff.get(_control(make_campaign(purpose), "delete")).status_code == 404


def test_a_draft_can_be_edited_and_a_launched_campaign_cannot(staff, purpose, audience):
    draft = make_campaign(purpose)
    url = reverse("admin:campaigns_campaign_change", args=[draft.pk])
    page = staff.get(url).content.decode()
    form = {
        "csrfmiddlewaretoken": _csrf(page),
        "name": "Renamed",
        "purpose": purpose.pk,
        "notice_template": "ai-training",
        "controller_name": "Example Social Ltd",
        "product_name": "Demur Social",
        "training_starts_on": "2027-01-27",
        "dpo_email": "dpo@example.com",
        "contact_email": "privacy@example.com",
        "policy_url": "https://example.com/privacy",
        "send_mail": "on",
        "countries": ["DE", "AT"],
        "languages": ["de"],
        "objected_policy": "variant",
        "send_rate": "20",
    }
    assert staff.post(url, form).status_code == 302
    draft.refresh_from_db()
    assert (draft.name, draft.countries, draft.languages, draft.send_rate) == ("Renamed", ["DE", "AT"], ["de"], 20)

    campaign_launch(campaign_id=draft.pk)
    page = staff.get(url).content.decode()
    assert 'name="name"' not in page  # every field read-only
    assert staff.post(url, {**form, "name": "Changed after launch"}).status_code == 403
    draft.refresh_from_db()
    assert draft.name == "Renamed"


def test_the_form_refuses_a_campaign_without_a_channel_or_with_its_end_before_its_start(staff, purpose):
    page = staff.get(reverse("admin:campaigns_campaign_add")).content.decode()
    response = staff.post(
        reverse("admin:campaigns_campaign_add"),
        {
            "csrfmiddlewaretoken": _csrf(page),
            "name": "No channel",
            "purpose": purpose.pk,
            "notice_template": "ai-training",
            "objected_policy": "variant",
            "send_rate": "10",
            "scheduled_at_0": "2027-02-01",
            "scheduled_at_1": "10:00:00",
            "expires_at_0": "2027-01-01",
            "expires_at_1": "10:00:00",
        },
    )

    assert response.status_code == 200
    body = response.content.decode()
    assert "Choose at least one channel: mail or in-app." in body
    assert "The end of sending must come after its start." in body
    assert not Campaign.objects.exists()


def test_the_progress_panel_counts_each_channel_and_estimates_the_end(staff, viewer, purpose):
    campaign = make_campaign(purpose, send_inapp=True)
    version = next(v for v in notice_versions_freeze(campaign_id=campaign.pk) if v.language == "en")
    now = timezone.now()
    Campaign.objects.filter(pk=campaign.pk).update(status="running", launched_at=now - dt.timedelta(hours=1))
    statuses = ["sent"] * 60 + ["failed"] * 2 + ["unknown"] + ["sending"] + ["pending"] * 36
    Delivery.objects.bulk_create(
        [
            Delivery(
                campaign=campaign,
                subject_id=f"s-{n}",
                channel="mail",
                notice_version=version,
                status=status,
                sent_at=now - dt.timedelta(seconds=n) if status == "sent" else None,
                delivered_at=now if status == "sent" and n < 50 else None,
                bounced_at=now if status == "sent" and n >= 58 else None,
            )
            for n, status in enumerate(statuses)
        ]
        + [
            Delivery(
                campaign=campaign,
                subject_id=f"s-{n}",
                channel="inapp",
                notice_version=version,
                status="sent" if n < 5 else "pending",
                shown_at=now if n < 5 else None,
            )
            for n in range(10)
        ]
    )
    change = staff.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk])).content.decode()
    url = reverse("admin:campaigns_campaign_progress", args=[campaign.pk])
    assert f'src="{url}?shown=running"' in change

    response = viewer.get(url)

    page = response.content.decode()
    assert response.status_code == 200 and response["X-Frame-Options"] == "SAMEORIGIN"
    mail = re.search(r'id="progress-mail">.*?<tbody><tr>(.*?)</tr>', page, re.S).group(1)
    # pending, sending, sent, delivered, failed or bounced, unknown, not sent
    assert re.findall(r"<td>(\d+)</td>", mail) == ["36", "1", "60", "50", "4", "1", "0"]
    inapp = re.search(r'id="progress-inapp">.*?<tbody><tr>(.*?)</tr>', page, re.S).group(1)
    assert re.findall(r"<td>(\d+)</td>", inapp) == ["5", "0", "5", "5", "0", "0", "0"]
    assert "63 of 100 done" in page
    # 60 mails in the last five minutes: 0.2/s, so 37 left take about 185 s.
    assert "0.2 mails per second" in page and "Estimated end:" in page
    assert '<meta http-equiv="refresh" content="5">' in page
    assert "<script" not in page

    assert "The status has changed" not in viewer.get(url, {"shown": "running"}).content.decode()

    Campaign.objects.filter(pk=campaign.pk).update(status="cancelled")
    Delivery.objects.filter(status__in=["pending", "sending"]).update(status="cancelled")
    page = viewer.get(url, {"shown": "running"}).content.decode()
    assert "http-equiv" not in page and "Estimated end:" not in page
    assert "The status has changed" in page and 'target="_top"' in page


def test_a_launched_campaign_links_to_its_dashboard_and_report(staff, purpose, audience):
    campaign = make_campaign(purpose)
    change = reverse("admin:campaigns_campaign_change", args=[campaign.pk])
    assert "/report/" not in staff.get(change).content.decode()

    campaign_launch(campaign_id=campaign.pk)

    page = staff.get(change).content.decode()
    assert reverse("admin:demur-campaign-dashboard", args=[campaign.pk]) in page
    assert reverse("admin:demur-campaign-report", args=[campaign.pk, "pdf"]) in page
    assert reverse("admin:demur-campaign-report", args=[campaign.pk, "csv"]) in page


def test_the_campaign_list_links_to_the_overall_dashboard(viewer):
    page = viewer.get(reverse("admin:campaigns_campaign_changelist")).content.decode()

    assert f'href="{reverse("admin:demur-dashboard")}"' in page


def test_the_control_permission_belongs_to_privacy_staff_only():
    staff = Group.objects.get(name="Privacy staff").permissions.values_list("codename", flat=True)
    viewer = Group.objects.get(name="Privacy viewer").permissions.values_list("codename", flat=True)

    assert "control_campaign" in staff and "control_campaign" not in viewer
