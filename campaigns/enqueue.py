"""Starting the campaign engine's Celery tasks by their names.

campaigns.tasks calls dispatch, services and dashboard, and those start tasks in turn:
naming a task here instead of importing it keeps the dependency one way. A name resolves
to the registered task (CampaignsConfig.ready() imports campaigns.tasks in every
process), so with tasks run eagerly (the quick start) it still runs at once.
"""

from __future__ import annotations

import logging

from celery import current_app
from django.conf import settings

logger = logging.getLogger(__name__)


def dispatch_enqueue(*, campaign_id: int, chains: int | None = None) -> None:
    """Start dispatch tasks for a running campaign (call on commit). Each task sends a
    batch and enqueues its successor, so `chains` tasks work in parallel. A publish that
    fails is logged and left to the tick, which restarts stalled campaigns."""
    eager = current_app.conf.task_always_eager
    for _n in range(1 if eager else chains or settings.DEMUR_DISPATCH_PARALLELISM):
        try:
            current_app.signature("campaigns.dispatch", args=(campaign_id,)).apply_async(retry=False)
        except Exception:  # kombu raises several types for an unreachable broker
            logger.warning("campaign %s: could not enqueue dispatch; the tick will", campaign_id, exc_info=True)
            return


def dashboard_refresh_enqueue(*, campaign_id: int | None) -> None:
    """Ask for a new count of a dashboard (None: the overall one). Raises what the broker
    raises when it cannot take the task."""
    current_app.signature("campaigns.dashboard_refresh", args=(campaign_id,)).delay()
