"""Per-key rate limits on the API, counted in the shared cache (Redis in production)."""

from __future__ import annotations

from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle

from optout.models import ApiClient


class ApiClientRateThrottle(SimpleRateThrottle):
    """One budget per API key, across all endpoints and web processes.

    The rate is read from settings at each request (not frozen at import like DRF's
    THROTTLE_RATES), so an operator's change and a test's override both apply."""

    scope = "api_client"

    def get_rate(self) -> str | None:
        return settings.DEMUR_API_THROTTLE_RATE or None

    def allow_request(self, request, view) -> bool:
        self.rate = self.get_rate()
        if self.rate is None:
            return True
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request, view) -> str | None:
        client = request.auth
        if not isinstance(client, ApiClient):
            return None  # unauthenticated requests are refused before they cost anything
        return self.cache_format % {"scope": self.scope, "ident": client.prefix}
