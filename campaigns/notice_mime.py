"""A notice mail's bytes, built once per frozen version and filled in per person.

Building a MIME message with Python's email package (headers folded and encoded, parts
assembled, the whole flattened) costs more CPU than everything else dispatch does for a
mail together. Frozen versions do not change, so Django builds the message once per
version (and, for people who already objected, per objection date) with markers in place
of the per-person values: address, Message-ID, Date, delivery id, signed links. Each mail
is then that template's bytes with the values joined in, byte for byte what Django would
have built (tests/campaigns/test_dispatch_mime.py compares them part by part).

The shortcut is taken only where it is exact: Django's SMTP backend (other backends,
django-anymail's among them, get the ordinary message), text parts sent as 7bit or 8bit
(quoted-printable would re-wrap the markers), an ASCII address, values that HTML-escaping
leaves unchanged, and no line longer than RFC 5322 allows once filled in. Otherwise the
mail is built the ordinary way (`None`).
"""

from __future__ import annotations

import datetime as dt
import re
import smtplib
from dataclasses import dataclass
from email.utils import formatdate
from functools import lru_cache
from html import escape

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.core.mail.backends.smtp import EmailBackend as SmtpBackend
from django.core.mail.message import sanitize_address

from campaigns.models import NoticeVersion
from campaigns.notices import notice_email

_MARK = "__demur_mime_{}__"
SLOTS = ("to", "message_id", "date", "delivery", "object_url", "unsubscribe_url")
_MARKS = {slot: _MARK.format(slot) for slot in SLOTS}
_MARK_RE = re.compile(rb"__demur_mime_([a-z_]+?)__")
_TO_MARK = f"{_MARKS['to']}@demur.invalid"
LINE_LIMIT = 998  # RFC 5322 2.1.1, without the CRLF
_ADDRESS_RE = re.compile(r"[!-~]+@[!-~]+")  # printable ASCII, no whitespace


@dataclass(frozen=True)
class _Template:
    pieces: tuple[bytes, ...]  # static bytes, with a slot name at every odd index
    lines: tuple[tuple[int, tuple[str, ...]], ...]  # (static length, slots) of lines with slots
    from_email: str  # as Django's SMTP backend hands it to smtplib
    widest: int  # the longest static part of a line with slots
    most_slots: int  # the most slots on one line


class PrebuiltSmtpBackend(SmtpBackend):
    """Django's SMTP backend (same settings, connection, errors), which hands a prebuilt
    notice's bytes to smtplib as they are: its addresses were checked when it was built,
    so they are not parsed and encoded again for every mail."""

    def _send(self, email_message) -> bool:
        if not isinstance(email_message, PrebuiltEmail):
            return super()._send(email_message)
        try:
            self.connection.sendmail(email_message.from_email, email_message.to, email_message.raw)
        except smtplib.SMTPException:
            if not self.fail_silently:
                raise
            return False
        return True


def mail_connection():
    """A connection to the configured mail backend; Django's SMTP backend comes as
    PrebuiltSmtpBackend, which takes prebuilt notices."""
    backend = settings.EMAIL_BACKEND
    if backend == f"{SmtpBackend.__module__}.{SmtpBackend.__name__}":
        backend = f"{__name__}.PrebuiltSmtpBackend"
    return get_connection(backend, fail_silently=False)


def fits(connection) -> bool:
    """Whether mail for this connection may be sent as prebuilt bytes."""
    return isinstance(connection, PrebuiltSmtpBackend)


def _marked_email(version: NoticeVersion, objected_on: dt.date | None) -> EmailMessage:
    message = notice_email(
        version,
        to=_TO_MARK,
        name="",
        subject_id="",
        objected_on=objected_on,
        links=(_MARKS["object_url"], _MARKS["unsubscribe_url"]),
    )
    message.extra_headers["Message-ID"] = _MARKS["message_id"]
    message.extra_headers["Date"] = _MARKS["date"]
    message.extra_headers["X-Demur-Campaign"] = str(version.campaign_id)
    message.extra_headers["X-Demur-Delivery"] = _MARKS["delivery"]
    return message


@lru_cache(maxsize=256)
def _template(version: NoticeVersion, content_hash: str, objected_on: dt.date | None) -> _Template | None:
    message = _marked_email(version, objected_on)
    mime = message.message()
    encodings = {
        part.get("Content-Transfer-Encoding", "7bit").lower() for part in mime.walk() if not part.is_multipart()
    }
    if not encodings <= {"7bit", "8bit"}:
        return None
    raw = mime.as_bytes(linesep="\r\n").replace(_TO_MARK.encode(), _MARKS["to"].encode())
    pieces = tuple(piece.decode() if index % 2 else piece for index, piece in enumerate(_MARK_RE.split(raw)))
    sources = [message.body, *(content for content, _type in message.alternatives), *message.extra_headers.values()]
    placed = [slot for slot in SLOTS if slot != "to" for _n in range(sum(text.count(_MARKS[slot]) for text in sources))]
    if sorted(pieces[1::2]) != sorted([*placed, "to"]):
        return None  # a marker was encoded or folded away
    lines = []
    for line in raw.split(b"\r\n"):
        slots = tuple(slot.decode() for slot in _MARK_RE.findall(line))
        if slots:
            lines.append((len(_MARK_RE.sub(b"", line)), slots))
    return _Template(
        pieces=pieces,
        lines=tuple(lines),
        from_email=sanitize_address(message.from_email, "utf-8"),
        widest=max(static for static, _slots in lines),
        most_slots=max(len(slots) for _static, slots in lines),
    )


class _Raw:
    """What Django's SMTP backend asks a message for: its bytes."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def as_bytes(self, unixfrom: bool = False, linesep: str = "\n") -> bytes:
        assert linesep == "\r\n", "prebuilt notices are only handed to the SMTP backend"
        return self.raw


class PrebuiltEmail(EmailMessage):
    """A notice whose bytes are already built; sent through Django's mail API."""

    def __init__(self, raw: bytes, *, to: str, from_email: str, connection) -> None:
        super().__init__(to=[to], from_email=from_email, connection=connection)
        self.raw = raw

    def message(self) -> _Raw:
        return _Raw(self.raw)


def prebuilt_email(
    version: NoticeVersion,
    *,
    to: str,
    objected_on: dt.date | None,
    object_url: str,
    unsubscribe_url: str,
    message_id: str,
    delivery_id: int,
    connection,
) -> PrebuiltEmail | None:
    """The notice for one person as prebuilt bytes, or None where the shortcut is not
    exact (build it the ordinary way then)."""
    if not _ADDRESS_RE.fullmatch(to):
        return None
    template = _template(version, version.content_hash, objected_on)
    if template is None:
        return None
    values = {
        "to": to,
        "message_id": message_id,
        "date": formatdate(localtime=settings.EMAIL_USE_LOCALTIME),
        "delivery": str(delivery_id),
        "object_url": object_url,
        "unsubscribe_url": unsubscribe_url,
    }
    for value in (object_url, unsubscribe_url):
        if escape(value) != value or not value.isascii() or not value.isprintable():
            return None
    longest = max(len(value) for value in values.values())
    if template.widest + template.most_slots * longest > LINE_LIMIT:  # else every line fits
        for static, slots in template.lines:
            if static + sum(len(values[slot]) for slot in slots) > LINE_LIMIT:
                return None
    out = list(template.pieces)
    for index in range(1, len(out), 2):
        out[index] = values[out[index]].encode()
    return PrebuiltEmail(b"".join(out), to=to, from_email=template.from_email, connection=connection)
