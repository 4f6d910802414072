"""CSRF origin checking that works with `Referrer-Policy: no-referrer`.

Links to the opt-out pages carry tokens, so the pages send no referrer. Under that policy
browsers send `Origin: null` on the pages' own form POSTs, which Django's CSRF check
rightly refuses, so no form would work. `Sec-Fetch-Site` is set by the browser (page
script cannot set it) and says whether the request came from our own origin; for such a
request we hand Django the origin it really came from. The CSRF cookie and token are
still checked as always; a cross-site or header-less request keeps `Origin: null` and
is refused."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse


class SameOriginFetchMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        meta = request.META
        if meta.get("HTTP_ORIGIN") == "null" and meta.get("HTTP_SEC_FETCH_SITE") == "same-origin":
            meta["HTTP_ORIGIN"] = f"{request.scheme}://{request.get_host()}"
        return self.get_response(request)
