"""Scope checks for the API: each view names the scope it needs."""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from rest_framework.permissions import BasePermission

from optout.models import ApiClient


class HasScope(BasePermission):
    """Allows an ApiClient that carries the view's `required_scope`.

    With no key DRF answers 401 (the authenticator sets WWW-Authenticate); with a key
    that lacks the scope, 403."""

    message = _("This API key does not have the scope this endpoint needs.")

    def has_permission(self, request, view) -> bool:
        client = request.auth
        if not isinstance(client, ApiClient):
            return False
        scope = view.required_scope
        if not client.has_scope(scope):
            self.message = _("This API key lacks the scope {scope}.").format(scope=scope)
            return False
        return True
