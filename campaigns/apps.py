from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class CampaignsConfig(AppConfig):
    name = "campaigns"
    verbose_name = _("Campaigns")

    def ready(self) -> None:
        from anymail.signals import tracking

        # Registers the tasks in every process, so that campaigns.enqueue finds them by
        # name (and runs them at once when tasks run eagerly).
        import campaigns.tasks  # noqa: F401
        from campaigns.tracking import on_tracking

        tracking.connect(on_tracking, dispatch_uid="campaigns.tracking")
