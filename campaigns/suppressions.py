"""The suppression list's one write from a person: the one-click unsubscribe (RFC 8058).
Bounces and complaints reach the list through campaigns.tracking."""

from __future__ import annotations

from campaigns.models import Suppression


def unsubscribe_record(*, subject_id: str, email: str) -> None:
    """Stop notice mails to this person. Not an objection: the ledger is untouched."""
    already = Suppression.objects.filter(subject_id=subject_id, reason=Suppression.Reason.UNSUBSCRIBED).exists()
    if not already:
        Suppression.objects.create(subject_id=subject_id, email=email, reason=Suppression.Reason.UNSUBSCRIBED)
