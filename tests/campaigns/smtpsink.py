"""A local SMTP server for the dispatch tests (aiosmtpd): counts the mails each address
received, keeps them if asked, and refuses chosen addresses with a chosen reply."""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Self

from aiosmtpd.controller import Controller

logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Handler:
    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.messages: list[bytes] = []
        self.refuse: dict[str, str] = {}

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.refuse.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            for address in envelope.rcpt_tos:
                self.counts[address] += 1
            if self.keep:
                self.messages.append(envelope.content)
        return "250 OK"


class SmtpSink:
    def __init__(self, *, keep: bool = True) -> None:
        self.port = free_port()
        self.handler = _Handler(keep)
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> Self:
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()

    @property
    def counts(self) -> Counter[str]:
        with self.handler.lock:
            return Counter(self.handler.counts)

    @property
    def refuse(self) -> dict[str, str]:
        return self.handler.refuse

    def messages(self) -> list[EmailMessage]:
        with self.handler.lock:
            raw = list(self.handler.messages)
        return [message_from_bytes(content, policy=policy.default) for content in raw]
