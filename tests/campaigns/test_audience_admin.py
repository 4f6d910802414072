"""The audience in the admin: privacy staff upload a CSV of recipients (all or nothing,
every bad line listed, an audit line in the same transaction); viewers only read."""

from __future__ import annotations

import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from campaigns.models import Recipient
from optout.models import AuditEntry
from tests.optout.test_staff_admin import _member

pytestmark = pytest.mark.django_db

UPLOAD = "admin:campaigns_recipient_upload"
GOOD = b"subject_id,email,language,country\nacct-1,ana@example.org,de,DE\nacct-2,bo@example.org,pl,PL\n"
BAD = (
    b"subject_id,email,language,country\n"
    b"acct-1,ana@example.org,de,DE\n"
    b"acct-2,not-an-address,de,DE\n"
    b"acct-3,cy@example.org,xx,DE\n"
    b"acct-1,again@example.org,de,DE\n"
)


@pytest.fixture
def staff(client):
    return _member(client, "Privacy staff", "sam")


def _upload(client: Client, content: bytes, **extra):
    return client.post(reverse(UPLOAD), {"file": SimpleUploadedFile("audience.csv", content), **extra}, follow=True)


def test_staff_upload_a_file_and_see_the_counts_and_an_audit_line(client, staff):
    Recipient.objects.create(subject_id="acct-2", email="old@example.org", language="en", country="IE")
    changelist = client.get(reverse("admin:campaigns_recipient_changelist")).content.decode()
    assert reverse(UPLOAD) in changelist

    response = _upload(client, GOOD)

    assert response.redirect_chain[-1][0] == reverse("admin:campaigns_recipient_changelist")
    assert "2 rows read: 1 recipients added, 1 updated, 0 unchanged." in response.content.decode()
    assert dict(Recipient.objects.values_list("subject_id", "email")) == {
        "acct-1": "ana@example.org",
        "acct-2": "bo@example.org",
    }
    entry = AuditEntry.objects.get()
    assert (entry.username, entry.action, entry.target) == ("sam", "audience-import", "audience.csv")
    assert entry.details == {"rows": 2, "created": 1, "updated": 1, "unchanged": 0}


def test_a_bad_file_lists_every_bad_line_and_keeps_nothing(client, staff):
    response = _upload(client, BAD)

    assert response.status_code == 400
    page = response.content.decode()
    assert "Nothing was imported" in page
    assert "line 3: email &#x27;not-an-address&#x27; is not a valid address." in page
    assert "line 4: unknown language &#x27;xx&#x27;." in page
    assert "line 5: subject_id &#x27;acct-1&#x27; is also on line 2." in page
    assert not Recipient.objects.exists()
    assert not AuditEntry.objects.exists()


def test_the_import_and_its_audit_line_commit_together(client, staff, monkeypatch):
    def audit_fails(**kwargs):
        raise RuntimeError("the audit log is unavailable")

    monkeypatch.setattr("optout.admin_views.audit_record", audit_fails)
    with pytest.raises(RuntimeError):
        _upload(client, GOOD)
    assert not Recipient.objects.exists()


def test_a_viewer_sees_the_audience_but_cannot_upload(client):
    _member(client, "Privacy viewer", "val")
    changelist = client.get(reverse("admin:campaigns_recipient_changelist"))
    assert changelist.status_code == 200
    assert reverse(UPLOAD) not in changelist.content.decode()

    assert client.get(reverse(UPLOAD)).status_code == 403
    assert _upload(client, GOOD).status_code == 403
    assert not Recipient.objects.exists()
    assert not AuditEntry.objects.exists()


def test_the_upload_needs_the_csrf_token():
    client = Client(enforce_csrf_checks=True)
    _member(client, "Privacy staff", "sam")

    assert _upload(client, GOOD).status_code == 403
    assert not Recipient.objects.exists()

    page = client.get(reverse(UPLOAD)).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    response = _upload(client, GOOD, csrfmiddlewaretoken=token)
    assert response.status_code == 200
    assert Recipient.objects.count() == 2


def test_the_list_filters_and_searches_without_editing(client, staff):
    Recipient.objects.create(subject_id="acct-1", email="ana@example.org", language="de", country="DE")
    Recipient.objects.create(subject_id="acct-2", email="bo@example.org", language="pl", country="PL")
    url = reverse("admin:campaigns_recipient_changelist")

    by_country = client.get(url, {"country": "PL"}).content.decode()
    assert "acct-2" in by_country and "acct-1" not in by_country
    by_language = client.get(url, {"language": "de"}).content.decode()
    assert "acct-1" in by_language and "acct-2" not in by_language
    by_email = client.get(url, {"q": "ana@example.org"}).content.decode()
    assert "acct-1" in by_email and "acct-2" not in by_email
    assert client.get(reverse("admin:campaigns_recipient_add")).status_code == 403
