"""Celery tasks of the campaign engine. Each takes ids, re-reads rows and calls a service;
running one twice does no harm (claims are conditional UPDATEs)."""

from __future__ import annotations

from celery import shared_task

from campaigns.audience import recipients_erase_expired
from campaigns.dispatch import campaigns_tick, dispatch_batch


@shared_task(name="campaigns.dispatch", ignore_result=True, bind=True)
def dispatch_task(self, campaign_id: int) -> None:
    """Send one batch, then hand over to a successor task: short tasks keep what a killed
    worker holds small, and spread a campaign over every worker. Run eagerly (the quick
    start, no broker), it loops instead of recursing."""
    while True:
        result = dispatch_batch(campaign_id=campaign_id)
        if not result.more:
            return
        if not self.app.conf.task_always_eager:
            self.apply_async((campaign_id,), countdown=result.delay or None, retry=False)
            return
        if result.delay:
            return  # retries not due yet: the tick picks them up


@shared_task(name="campaigns.tick", ignore_result=True)
def tick_task() -> None:
    campaigns_tick()


@shared_task(name="campaigns.retention", ignore_result=True)
def retention_task() -> int:
    return recipients_erase_expired()
