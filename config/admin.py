"""The admin site: a warning on its index when the change feed is held back, a login
limited per address and username, optional two-factor login (config.two_factor), and
a language choice in the header (Django's set_language; otherwise Accept-Language)."""

from __future__ import annotations

from functools import wraps

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.main import ERROR_FLAG
from django.db import DatabaseError
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.translation import gettext_lazy as _
from django.views.i18n import set_language
from django_ratelimit.core import is_ratelimited

from config import two_factor
from config.health import feed_blockers
from optout.models import LedgerCheck

# The admin's Content Security Policy: the site's own (config/settings.py, where no
# script runs) plus Django's admin scripts and the data: images of its widgets, all from
# this origin. Still no inline script or style; the two pages that show a notice mail in
# a sandboxed frame add inline styles for it (campaigns.admin.NOTICE_FRAME_CSP).
ADMIN_CSP = {
    "script-src": ["'self'"],
    "img-src": ["data:"],
    "connect-src": ["'self'"],
    "font-src": ["'self'"],
    "frame-src": ["'self'"],  # the campaign's progress panel, framed by its change page
}


def with_admin_csp(response):
    """The response with ADMIN_CSP added to what its view asked for (django-csp's
    _csp_update, which the CSP middleware applies)."""
    merged = {name: list(sources) for name, sources in ADMIN_CSP.items()}
    for name, sources in (getattr(response, "_csp_update", None) or {}).items():
        merged[name] = [*merged.get(name, []), *sources]
    response._csp_update = merged
    return response


class DemurAdminSite(admin.AdminSite):
    site_header = _("Demur")
    site_title = _("Demur")
    index_title = _("Notices and objections")
    index_template = "admin/demur_index.html"
    login_form = two_factor.LoginForm
    login_template = "admin/demur_login.html"

    def has_permission(self, request) -> bool:
        """Staff, and verified by their code when they turned two-factor login on."""
        if not super().has_permission(request):
            return False
        if not hasattr(request, "_demur_verified"):
            request._demur_verified = two_factor.session_is_verified(request)
        return request._demur_verified

    def login(self, request, extra_context=None):
        """Django's admin login, refused with 429 after too many attempts from one address
        or for one username (django-ratelimit on the shared cache)."""
        if request.method == "POST" and _login_limited(request):
            context = {**self.each_context(request), "title": _("Too many login attempts")}
            return with_admin_csp(TemplateResponse(request, "admin/login_limited.html", context, status=429))
        return with_admin_csp(super().login(request, extra_context))

    def admin_view(self, view, cacheable=False):
        """Every admin page, under the admin's CSP; a query string holding a NUL character
        (which no PostgreSQL text can hold, so a filter or search on it failed with a 500)
        goes where Django sends any filter it cannot apply: the same page with ?e=1."""
        checked = super().admin_view(view, cacheable)

        @wraps(checked)
        def inner(request, *args, **kwargs):
            if any("\x00" in key or any("\x00" in value for value in values) for key, values in request.GET.lists()):
                return HttpResponseRedirect(f"{request.path}?{ERROR_FLAG}=1")
            return with_admin_csp(checked(request, *args, **kwargs))

        return inner

    def get_urls(self):
        # Dashboards and the regulator's report (campaigns/admin_dashboard.py), staff only.
        from campaigns.admin_dashboard import urlpatterns as dashboard_urls

        wrapped = [path(str(p.pattern), self.admin_view(p.callback), name=p.name) for p in dashboard_urls]
        own = [
            path(
                "two-factor/",
                self.admin_view(lambda request: two_factor.two_factor_view(self, request)),
                name="two_factor",
            ),
            # Django's own view: stores the choice in the language cookie LocaleMiddleware reads.
            path("language/", set_language, name="set_language"),
        ]
        return wrapped + own + super().get_urls()

    def index(self, request, extra_context=None):
        try:
            stalls = feed_blockers(older_than=settings.DEMUR_FEED_STALL_WARNING)
        except DatabaseError:
            stalls = []
        try:
            check = LedgerCheck.objects.order_by("-checked_at").first()
        except DatabaseError:
            check = None
        alarm = check if check is not None and check.problems else None
        extra_context = {**(extra_context or {}), "feed_stalls": stalls, "ledger_alarm": alarm}
        return super().index(request, extra_context)


def _login_limited(request) -> bool:
    by_address = is_ratelimited(
        request,
        group="admin-login-ip",
        key="ip",
        rate=settings.DEMUR_ADMIN_LOGIN_RATE_IP,
        method="POST",
        increment=True,
    )
    by_username = is_ratelimited(
        request,
        group="admin-login-user",
        key=lambda group, req: (req.POST.get("username") or "").strip().lower(),
        rate=settings.DEMUR_ADMIN_LOGIN_RATE_USER,
        method="POST",
        increment=True,
    )
    return by_address or by_username
