from __future__ import annotations

from django.contrib.admin.apps import AdminConfig


class DemurAdminConfig(AdminConfig):
    default_site = "config.admin.DemurAdminSite"
