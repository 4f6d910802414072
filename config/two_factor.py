"""Two-factor login for the admin (TOTP through django-otp), turned on by each staff
member for themselves.

Someone with a confirmed TOTP device must give its current code at login (the same
form, one more field) and their session counts only once a code has verified it
(DemurAdminSite.has_permission). Someone without a device logs in with a password as
before. A superuser resets a lost device by deleting it under "TOTP devices".
"""

from __future__ import annotations

import base64
import io

from django import forms
from django.contrib import messages
from django.contrib.admin.forms import AdminAuthenticationForm
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django_otp import login as otp_login
from django_otp.forms import OTPAuthenticationFormMixin
from django_otp.plugins.otp_totp.models import TOTPDevice

DEVICE_NAME = "Demur"


def confirmed_device(user) -> TOTPDevice | None:
    if not getattr(user, "pk", None):
        return None
    return TOTPDevice.objects.filter(user=user, confirmed=True).order_by("pk").first()


def session_is_verified(request: HttpRequest) -> bool:
    """True when the user has no device, or their session was verified with one."""
    user = request.user
    if getattr(user, "is_verified", None) and user.is_verified():
        return True
    return confirmed_device(user) is None


def token_field() -> forms.CharField:
    return forms.CharField(
        label=_("Code from your authenticator app"),
        required=False,
        max_length=8,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "size": 8}),
    )


class LoginForm(OTPAuthenticationFormMixin, AdminAuthenticationForm):
    """The admin's login form with the code asked of those who turned two-factor on."""

    otp_token = token_field()
    otp_error_messages = {
        **OTPAuthenticationFormMixin.otp_error_messages,
        "token_required": _("Two-factor login is on for this account: enter the code from your authenticator app."),
        "invalid_token": _("This code is not valid. Enter the current code from your authenticator app."),
    }

    def clean(self):
        cleaned = super().clean()
        user = self.get_user()
        if user is not None and confirmed_device(user) is not None:
            self.clean_otp(user)
        return cleaned

    def _chosen_device(self, user):
        return confirmed_device(user)  # one device per person: nothing to choose

    def _update_form(self, user) -> None:
        pass  # never write the password back into the page


class CodeForm(forms.Form):
    otp_token = token_field()

    def __init__(self, *args, device: TOTPDevice, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.device = device
        self.fields["otp_token"].required = True

    def clean_otp_token(self) -> str:
        token = self.cleaned_data["otp_token"].strip()
        allowed, _extra = self.device.verify_is_allowed()
        if not allowed or not self.device.verify_token(token):
            raise forms.ValidationError(
                gettext("This code is not valid. Enter the current code from your authenticator app.")
            )
        return token


def _qr_svg(device: TOTPDevice) -> str:
    import qrcode
    import qrcode.image.svg

    out = io.BytesIO()
    qrcode.make(device.config_url, image_factory=qrcode.image.svg.SvgPathImage).save(out)
    # qrcode's own SVG of an otpauth: URL; it starts with an XML declaration.
    svg = out.getvalue().decode()
    return mark_safe(svg[svg.index("<svg") :])  # noqa: S308


def two_factor_view(admin_site, request: HttpRequest) -> HttpResponse:
    """Turn two-factor login on (scan, then confirm with a first code) or off (with a
    current code) for oneself."""
    user = request.user
    device = confirmed_device(user)
    if device is None:
        # One pending device per person, so the QR code stays the same across reloads.
        pending = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("pk").first()
        if pending is None:
            pending = TOTPDevice.objects.create(user=user, name=DEVICE_NAME, confirmed=False)
        form = CodeForm(request.POST or None, device=pending)
        if request.method == "POST" and form.is_valid():
            with transaction.atomic():
                TOTPDevice.objects.filter(user=user).exclude(pk=pending.pk).delete()
                pending.confirmed = True
                pending.save(update_fields=["confirmed"])
            otp_login(request, pending)
            messages.success(request, gettext("Two-factor login is on. From now on the login asks for a code."))
            return HttpResponseRedirect(reverse("admin:index"))
        context = {
            "enabled": False,
            "form": form,
            "qr_svg": _qr_svg(pending),
            "secret": base64.b32encode(pending.bin_key).decode(),
        }
    else:
        form = CodeForm(request.POST or None, device=device)
        if request.method == "POST" and form.is_valid():
            TOTPDevice.objects.filter(user=user).delete()
            messages.success(request, gettext("Two-factor login is off."))
            return HttpResponseRedirect(reverse("admin:index"))
        context = {"enabled": True, "form": form}
    context.update(admin_site.each_context(request), title=gettext("Two-factor login"))
    return TemplateResponse(request, "admin/two_factor.html", context, status=400 if form.errors else 200)
