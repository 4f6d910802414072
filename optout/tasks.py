"""Celery tasks of the opt-out pages: send outbox mail; sweep the outbox; checkpoint the
ledger's feed; verify the ledger. optout.outbox
publishes by task name (SEND_MANY_TASK), so it needs nothing from here."""

from __future__ import annotations

from celery import shared_task

from optout.outbox import SEND_MANY_TASK, outbox_send, outbox_send_many, outbox_sweep
from optout.services import ledger_check_record, ledger_checkpoint


@shared_task(name="optout.outbox_send", ignore_result=True)
def outbox_send_task(message_id: int) -> bool:
    """One mail; what releases before outbox_send_many published, which may still be
    queued on the broker when this one starts."""
    return outbox_send(message_id=message_id)


@shared_task(name=SEND_MANY_TASK, ignore_result=True)
def outbox_send_many_task(items: list[list]) -> int:
    """[message id, request id] pairs published together by one process."""
    return outbox_send_many(items=[(message_id, request_id) for message_id, request_id in items])


@shared_task(name="optout.outbox_sweep", ignore_result=True)
def outbox_sweep_task() -> int:
    return len(outbox_sweep())


@shared_task(name="optout.ledger_checkpoint", ignore_result=True)
def ledger_checkpoint_task() -> int:
    return ledger_checkpoint()


@shared_task(name="optout.ledger_verify", ignore_result=True)
def ledger_verify_task() -> int:
    """The number of problems found (0: intact)."""
    return ledger_check_record().problems
