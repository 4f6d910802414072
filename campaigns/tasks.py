"""Celery tasks of the campaign engine. Each takes ids, re-reads rows and calls a service;
running one twice does no harm."""

from __future__ import annotations

from celery import shared_task

from campaigns.audience import recipients_erase_expired


@shared_task(name="campaigns.retention", ignore_result=True)
def retention_task() -> int:
    return recipients_erase_expired()
