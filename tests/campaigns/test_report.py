"""The regulator's report of the hand-built campaign (tests/campaigns/dashboard_data.py)
as CSV and as PDF: its rows and figures, the Greek and Cyrillic text in the PDF, the
font check, the audit line, and who may export it."""

from __future__ import annotations

import csv
import io

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.urls import reverse
from pypdf import PdfReader

from campaigns import report as report_module
from optout.models import AuditEntry
from tests.campaigns.dashboard_data import HASHES, build_campaign

pytestmark = pytest.mark.django_db


@pytest.fixture
def campaign(purpose):
    return build_campaign(purpose)


@pytest.fixture
def viewer() -> Client:
    user = User.objects.create_user("val", "val@example.org", "pw", is_staff=True)
    user.groups.add(Group.objects.get(name="Privacy viewer"))
    client = Client()
    client.force_login(user)
    return client


def _sections(text: str) -> dict[str, list[list[str]]]:
    """The CSV's sections by title (a line of one cell after an empty line); "facts" first."""
    sections: dict[str, list[list[str]]] = {"facts": []}
    current, after_blank = "facts", False
    for row in csv.reader(io.StringIO(text)):
        if not row:
            after_blank = True
            continue
        if after_blank and len(row) == 1:
            current = row[0]
            sections[current] = []
        else:
            sections[current].append(row)
        after_blank = False
    return sections


def test_the_csv_has_the_versions_dates_reach_objections_and_time_to_effect(campaign, viewer):
    response = viewer.get(reverse("admin:demur-campaign-report", args=[campaign.pk, "csv"]))

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith(f'attachment; filename="demur-report-campaign-{campaign.pk}-')
    sections = _sections(response.content.decode())
    facts = dict(row for row in sections["facts"] if len(row) == 2)
    assert facts["Campaign"] == "Κοινοποίηση AI 2026"
    assert facts["Launched"] == "2026-03-02T10:00:00+00:00"
    assert facts["Ended"] == "2026-03-12T10:00:00+00:00"
    assert sections["Notice versions"][1:] == [
        ["German (de)", HASHES["de"], sections["Notice versions"][1][2]],
        ["Greek (el)", HASHES["el"], sections["Notice versions"][2][2]],
    ]
    assert sections["Reach and objections per country"] == [
        ["Country", "Audience", "Reached", "Reach (%)", "Objected", "Objection rate (%)", "Withdrew later"],
        ["Germany (DE)", "4", "2", "50.00", "1", "25.00", "0"],
        ["Greece (GR)", "3", "2", "66.67", "1", "33.33", "1"],
        ["Total", "7", "4", "57.14", "2", "28.57", "1"],
    ]
    assert sections["Reach and objections per language"][1][0] == "German (de)"
    assert sections["Time from objection to effect"] == [
        ["Objections", "Median (seconds)", "Longest (seconds)"],
        ["2", "60", "90"],
    ]


def test_the_pdf_parses_and_holds_the_figures_in_greek(campaign, viewer):
    response = viewer.get(reverse("admin:demur-campaign-report", args=[campaign.pk, "pdf"]), HTTP_ACCEPT_LANGUAGE="el")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(response.content)).pages)
    assert "Κοινοποίηση AI 2026" in text  # the campaign's name, in Greek script
    assert "Ελλάδα (GR)" in text and "Γερμανία (DE)" in text  # country names in the reader's language
    assert HASHES["el"] in text.replace("\n", "")
    assert "66,7" in text  # Greek decimal comma


def test_the_pdf_in_bulgarian_holds_cyrillic(campaign, viewer):
    response = viewer.get(reverse("admin:demur-campaign-report", args=[campaign.pk, "pdf"]), HTTP_ACCEPT_LANGUAGE="bg")

    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(response.content)).pages)
    assert "Германия (DE)" in text


def test_without_the_font_the_pdf_answers_503_and_names_the_package(campaign, viewer, monkeypatch, tmp_path):
    from reportlab.pdfbase import pdfmetrics

    monkeypatch.setattr(report_module, "FONT_DIRS", (tmp_path,))
    monkeypatch.setattr(pdfmetrics, "getRegisteredFontNames", lambda: [])
    response = viewer.get(reverse("admin:demur-campaign-report", args=[campaign.pk, "pdf"]))

    assert response.status_code == 503
    assert "fonts-dejavu-core" in response.content.decode()
    assert viewer.get(reverse("admin:demur-campaign-report", args=[campaign.pk, "csv"])).status_code == 200


def test_each_export_goes_into_the_audit_log(campaign, viewer):
    viewer.get(reverse("admin:demur-campaign-report", args=[campaign.pk, "csv"]))

    entry = AuditEntry.objects.get()
    assert (entry.username, entry.action, entry.details) == (
        "val",
        "export",
        {"report": "csv", "campaign": campaign.pk},
    )


def test_other_formats_and_other_staff_are_refused(campaign, viewer):
    assert viewer.get(f"/admin/report/campaign/{campaign.pk}.xlsx").status_code == 404
    nobody = User.objects.create_user("nora", "nora@example.org", "pw", is_staff=True)
    client = Client()
    client.force_login(nobody)
    assert client.get(reverse("admin:demur-campaign-report", args=[campaign.pk, "csv"])).status_code == 403
    assert AuditEntry.objects.count() == 0
