"""The admin site, with a warning on its index when the change feed is held back."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.db import DatabaseError
from django.utils.translation import gettext_lazy as _

from config.health import feed_blockers


class DemurAdminSite(admin.AdminSite):
    site_header = _("Demur")
    site_title = _("Demur")
    index_title = _("Notices and objections")
    index_template = "admin/demur_index.html"

    def index(self, request, extra_context=None):
        try:
            stalls = feed_blockers(older_than=settings.DEMUR_FEED_STALL_WARNING)
        except DatabaseError:
            stalls = []
        extra_context = {**(extra_context or {}), "feed_stalls": stalls}
        return super().index(request, extra_context)
