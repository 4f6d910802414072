"""Celery tasks of the opt-out pages: send one outbox mail; sweep the outbox."""

from __future__ import annotations

from celery import shared_task

from optout.outbox import outbox_send, outbox_sweep


@shared_task(name="optout.outbox_send", ignore_result=True)
def outbox_send_task(message_id: int) -> bool:
    return outbox_send(message_id=message_id)


@shared_task(name="optout.outbox_sweep", ignore_result=True)
def outbox_sweep_task() -> int:
    return len(outbox_sweep())
