"""API key authentication: `Authorization: Bearer <key>`, keys hashed by
djangorestframework-api-key, and the `last_used_at` stamp."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from optout.models import ApiClient

# Stamping last use on every request would turn each read into a write; a minute is
# precise enough to tell a live client from a forgotten one.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`request.user` is None and `request.auth` the ApiClient; permissions check its scopes."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(_("Send the key as: Authorization: Bearer <key>."))
        try:
            key = header[1].decode("ascii")
        except UnicodeError:
            raise exceptions.AuthenticationFailed(_("This API key is not valid.")) from None
        try:
            client = ApiClient.objects.get_from_key(key)
        except ApiClient.DoesNotExist:
            raise exceptions.AuthenticationFailed(_("This API key is not valid or has been revoked.")) from None
        if client.has_expired:
            raise exceptions.AuthenticationFailed(_("This API key has expired."))
        self._stamp_last_use(client)
        return (None, client)

    def authenticate_header(self, request) -> str:
        return self.keyword

    @staticmethod
    def _stamp_last_use(client: ApiClient) -> None:
        now = timezone.now()
        if client.last_used_at is None or now - client.last_used_at >= LAST_USED_RESOLUTION:
            # A conditional UPDATE: concurrent requests do not overwrite other fields.
            ApiClient.objects.filter(pk=client.pk).update(last_used_at=now)
            client.last_used_at = now


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "optout.authentication.ApiKeyAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": str(_("An API key created in the admin or with `manage.py create_api_client`.")),
        }
