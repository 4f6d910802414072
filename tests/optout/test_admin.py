from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.urls import reverse

from optout.models import ObjectionEvent
from optout.services import objection_record

pytestmark = pytest.mark.django_db


@pytest.fixture
def superuser_client(client):
    user = User.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return client


@pytest.fixture
def event(purpose):
    objection_record(subject_id="subject-42", source="email-link")
    return ObjectionEvent.objects.get()


def test_the_ledger_is_read_only_even_for_a_superuser(superuser_client, event):
    change_url = reverse("admin:optout_objectionevent_change", args=[event.pk])
    assert superuser_client.get(change_url).status_code == 200  # can read
    assert superuser_client.get(reverse("admin:optout_objectionevent_add")).status_code == 403
    assert superuser_client.post(change_url, {"subject_id": "someone-else"}).status_code == 403
    delete_url = reverse("admin:optout_objectionevent_delete", args=[event.pk])
    assert superuser_client.post(delete_url, {"post": "yes"}).status_code == 403

    event.refresh_from_db()
    assert event.subject_id == "subject-42"


def test_events_can_be_found_by_receipt_and_subject(superuser_client, event, purpose):
    objection_record(subject_id="someone-else", source="api")
    url = reverse("admin:optout_objectionevent_changelist")

    by_receipt = superuser_client.get(url, {"q": event.receipt}).content.decode()
    by_subject = superuser_client.get(url, {"q": "subject-42"}).content.decode()

    assert "subject-42" in by_receipt and "someone-else" not in by_receipt
    assert "subject-42" in by_subject and "someone-else" not in by_subject


def test_the_state_list_filters_by_purpose_source_and_date(superuser_client, event):
    url = reverse("admin:optout_objectionstate_changelist")
    page = superuser_client.get(url, {"source__exact": "email-link", "purpose__id__exact": event.purpose_id})
    assert page.status_code == 200
    assert "subject-42" in page.content.decode()
    assert "subject-42" not in superuser_client.get(url, {"source__exact": "gpc"}).content.decode()


def test_the_roles_exist_and_only_viewers_cannot_change_campaigns():
    staff = set(Group.objects.get(name="Privacy staff").permissions.values_list("codename", flat=True))
    viewer = set(Group.objects.get(name="Privacy viewer").permissions.values_list("codename", flat=True))

    assert {"view_objectionevent", "view_objectionstate", "change_campaign"} <= staff
    assert "view_objectionevent" in viewer and "change_campaign" not in viewer
    assert not any(c.endswith("_objectionevent") and not c.startswith("view") for c in staff | viewer)


def test_a_privacy_staff_member_cannot_delete_a_ledger_event(client, event):
    user = User.objects.create_user("staff", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name="Privacy staff"))
    client.force_login(user)

    response = client.post(reverse("admin:optout_objectionevent_delete", args=[event.pk]), {"post": "yes"})

    assert response.status_code == 403
    assert ObjectionEvent.objects.filter(pk=event.pk).exists()
