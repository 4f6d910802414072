"""Two-factor login for the admin (TOTP, django-otp): staff turn it on for themselves,
the login then asks for the code, superusers reset a lost device, and the login's
rate limit still holds. Codes are computed as an authenticator app would."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Group, User
from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

pytestmark = pytest.mark.django_db

PASSWORD = "pw-for-tests-only"


def code(device: TOTPDevice, steps_ahead: int = 0) -> str:
    """The code an authenticator app shows now (or `steps_ahead` periods later)."""
    value = totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits, drift=steps_ahead)
    return f"{value:0{device.digits}d}"


def wrong(device: TOTPDevice) -> str:
    right = {code(device, n) for n in (-1, 0, 1)}
    return next(c for c in (f"{n:06d}" for n in range(1000000)) if c not in right)


@pytest.fixture(autouse=True)
def _fresh_limits():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def sam() -> User:
    user = User.objects.create_user("sam", "sam@example.org", PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name="Privacy staff"))
    return user


def login(client: Client, token: str = "", username: str = "sam"):
    return client.post(
        reverse("admin:login"),
        {"username": username, "password": PASSWORD, "otp_token": token, "next": "/admin/"},
    )


def test_without_two_factor_the_password_is_enough(client, sam):
    response = login(client)

    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_staff_turn_it_on_with_a_first_code_and_then_the_login_asks_for_one(client, sam, settings):
    settings.OTP_TOTP_THROTTLE_FACTOR = 0
    client.force_login(sam)
    page = client.get(reverse("admin:two_factor")).content.decode()
    device = TOTPDevice.objects.get(user=sam)
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page).group(1)
    assert "<svg" in page and secret and not device.confirmed
    assert client.get(reverse("admin:two_factor")).content.decode().count(secret) == 1  # same device on reload

    refused = client.post(reverse("admin:two_factor"), {"otp_token": wrong(device)})
    assert refused.status_code == 400 and "not valid" in refused.content.decode()
    assert not TOTPDevice.objects.get(pk=device.pk).confirmed

    accepted = client.post(reverse("admin:two_factor"), {"otp_token": code(device)})
    assert accepted.status_code == 302
    assert TOTPDevice.objects.get(pk=device.pk).confirmed
    assert client.get("/admin/").status_code == 200  # this session was verified by the code

    fresh = Client()
    without = login(fresh)
    assert without.status_code == 200 and "enter the code from your authenticator app" in without.content.decode()
    assert fresh.get("/admin/").status_code == 302
    bad = login(fresh, wrong(device))
    assert bad.status_code == 200 and "This code is not valid" in bad.content.decode()
    assert PASSWORD not in bad.content.decode()  # the password is never written back into the page
    good = login(fresh, code(device, steps_ahead=1))  # the next period: a code is good once
    assert good.status_code == 302
    assert fresh.get("/admin/").status_code == 200


def test_a_session_not_verified_by_a_code_does_not_reach_the_admin(client, sam):
    TOTPDevice.objects.create(user=sam, name="Demur", confirmed=True)
    client.force_login(sam)  # password only, as a session from before two-factor was turned on

    response = client.get("/admin/")

    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_staff_turn_it_off_only_with_a_current_code(client, sam, settings):
    settings.OTP_TOTP_THROTTLE_FACTOR = 0
    device = TOTPDevice.objects.create(user=sam, name="Demur", confirmed=True)
    assert login(client, code(device)).status_code == 302

    assert client.post(reverse("admin:two_factor"), {"otp_token": wrong(device)}).status_code == 400
    assert TOTPDevice.objects.filter(user=sam).exists()
    assert client.post(reverse("admin:two_factor"), {"otp_token": code(device, 1)}).status_code == 302
    assert not TOTPDevice.objects.filter(user=sam).exists()
    assert login(Client()).status_code == 302


def test_a_superuser_resets_a_lost_device_and_staff_cannot(client, sam):
    device = TOTPDevice.objects.create(user=sam, name="Demur", confirmed=True)
    other = User.objects.create_user("olga", "olga@example.org", PASSWORD, is_staff=True)
    other.groups.add(Group.objects.get(name="Privacy staff"))
    client.force_login(other)
    delete = reverse("admin:otp_totp_totpdevice_delete", args=[device.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 403
    assert TOTPDevice.objects.filter(pk=device.pk).exists()

    admin = Client()
    admin.force_login(User.objects.create_superuser("root", "root@example.org", PASSWORD))
    page = admin.get(reverse("admin:otp_totp_totpdevice_change", args=[device.pk])).content.decode()
    assert device.key not in page  # nobody reads another person's secret
    assert admin.post(delete, {"post": "yes"}).status_code == 302

    assert not TOTPDevice.objects.filter(pk=device.pk).exists()
    assert login(Client()).status_code == 302  # the password alone again, until sam turns it on anew


def test_the_login_limit_holds_with_two_factor_on(client, sam):
    device = TOTPDevice.objects.create(user=sam, name="Demur", confirmed=True)
    statuses = [login(client, wrong(device)).status_code for _ in range(5)]

    assert statuses == [200] * 5
    # Even the right password and code are refused while the limit holds.
    assert login(client, code(device)).status_code == 429
    assert client.get("/admin/").status_code == 302
