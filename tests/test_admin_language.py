"""The admin in the staff member's language: the browser's Accept-Language by default,
or the language chosen in the admin's header (kept in Django's language cookie)."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.test import Client

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client() -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(User.objects.create_superuser("priya", "priya@example.org", "pw"))
    return client


@pytest.mark.parametrize(
    ("language", "django_says", "demur_says"),
    [
        ("de", "Abmelden", "Mitteilungen und Widersprüche"),
        ("pl", "Wyloguj się", "Informacje i sprzeciwy"),
        ("el", "Αποσύνδεση", None),
        # Django's admin has no Maltese; Demur's own strings still are.
        ("mt", "Log out", "Avviżi u oġġezzjonijiet"),
    ],
)
def test_the_admin_follows_the_browsers_language(staff_client, language, django_says, demur_says):
    page = staff_client.get("/admin/", HTTP_ACCEPT_LANGUAGE=f"{language},en;q=0.5").content.decode()

    assert f'<html lang="{language}"' in page
    assert django_says in page
    if demur_says:
        assert demur_says in page


def test_a_language_chosen_in_the_header_wins_over_the_browsers(staff_client):
    page = staff_client.get("/admin/", HTTP_ACCEPT_LANGUAGE="de").content.decode()
    token = re.search(r'id="language-form".*?name="csrfmiddlewaretoken" value="([^"]+)"', page, re.S).group(1)
    assert 'name="language"' in page and 'value="sv" lang="sv"' in page

    response = staff_client.post(
        "/admin/language/", {"language": "sv", "next": "/admin/", "csrfmiddlewaretoken": token}
    )

    assert response.status_code == 302 and response["Location"] == "/admin/"
    page = staff_client.get("/admin/", HTTP_ACCEPT_LANGUAGE="de").content.decode()
    assert '<html lang="sv"' in page and "Logga ut" in page


def test_a_language_demur_does_not_offer_is_ignored(staff_client):
    page = staff_client.get("/admin/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)

    staff_client.post("/admin/language/", {"language": "ja", "next": "/admin/", "csrfmiddlewaretoken": token})

    assert '<html lang="en"' in staff_client.get("/admin/", HTTP_ACCEPT_LANGUAGE="en").content.decode()
