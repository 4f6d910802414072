"""Celery tasks of the campaign engine. Each takes ids, re-reads rows and calls a service;
running one twice does no harm (claims are conditional UPDATEs). The modules called here
start these tasks by name (campaigns.enqueue), never by importing this one."""

from __future__ import annotations

import time

from celery import shared_task
from django.conf import settings

from campaigns.audience import recipients_erase_expired
from campaigns.dashboard import stats_refresh
from campaigns.dispatch import campaigns_tick, dispatch_batch


@shared_task(name="campaigns.dispatch", ignore_result=True, bind=True)
def dispatch_task(self, campaign_id: int) -> None:
    """Send batches of the campaign while it runs, for DEMUR_DISPATCH_TASK_SECONDS, then
    hand over to a successor task. What a killed worker leaves behind does not grow with
    that time (outcomes are recorded group by group), and fewer hand-overs spare the
    broker's pick-up latency. Run eagerly (the quick start, no broker), it goes on until
    the campaign is done instead of re-enqueueing itself."""
    eager = self.app.conf.task_always_eager
    started = time.monotonic()
    while True:
        result = dispatch_batch(campaign_id=campaign_id)
        if not result.more:
            return
        if result.delay and eager:
            return  # retries not due yet: the tick picks them up
        if not eager and (result.delay or time.monotonic() - started > settings.DEMUR_DISPATCH_TASK_SECONDS):
            self.apply_async((campaign_id,), countdown=result.delay or None, retry=False)
            return


@shared_task(name="campaigns.tick", ignore_result=True)
def tick_task() -> None:
    campaigns_tick()


@shared_task(name="campaigns.retention", ignore_result=True)
def retention_task() -> int:
    return recipients_erase_expired()


@shared_task(name="campaigns.dashboard_refresh", ignore_result=True)
def dashboard_refresh_task(campaign_id: int | None) -> None:
    """Count a dashboard's figures again (campaigns.dashboard); None: the overall one."""
    stats_refresh(campaign_id=campaign_id)
