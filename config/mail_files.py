"""The quick start's mail backend: every message becomes files a person can open.

Each mail is written to EMAIL_FILE_PATH (var/mail/) as `<time>-<n>.eml` (the message as
sent, for any mail program) and, when it has an HTML part, `<time>-<n>.html` (that part,
for the browser: its links lead to the local server). `index.html` lists them all, newest
first. Django's file backend writes every message of a connection into one .log file,
encoded as sent (quoted-printable, base64), which nobody can read or click.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
from email import message_from_bytes, policy
from html import escape
from pathlib import Path

from django.conf import settings
from django.core.mail.backends.base import BaseEmailBackend

_counter = itertools.count(1)
_lock = threading.Lock()


class EmailBackend(BaseEmailBackend):
    def __init__(self, *args, file_path: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.folder = Path(file_path or settings.EMAIL_FILE_PATH)

    def send_messages(self, email_messages) -> int:
        if not email_messages:
            return 0
        self.folder.mkdir(parents=True, exist_ok=True)
        sent = 0
        with _lock:
            for message in email_messages:
                raw = message.message().as_bytes()
                stem = f"{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-{next(_counter):06d}"
                (self.folder / f"{stem}.eml").write_bytes(raw)
                parsed = message_from_bytes(raw, policy=policy.default)
                html = parsed.get_body(("html",))
                if html is not None:
                    (self.folder / f"{stem}.html").write_text(html.get_content(), encoding="utf-8")
                sent += 1
            self._write_index()
        return sent

    def _write_index(self) -> None:
        rows = []
        for eml in sorted(self.folder.glob("*.eml"), reverse=True):
            parsed = message_from_bytes(eml.read_bytes(), policy=policy.default)
            html = eml.with_suffix(".html")
            subject = escape(str(parsed["Subject"] or "").strip())
            title = f'<a href="{html.name}">{subject}</a>' if html.exists() else subject
            rows.append(
                f"<tr><td>{escape(str(parsed['Date'] or ''))}</td><td>{escape(str(parsed['To'] or ''))}</td>"
                f'<td>{title}</td><td><a href="{eml.name}">.eml</a></td></tr>'
            )
        (self.folder / "index.html").write_text(
            '<!doctype html><html lang="en"><meta charset="utf-8"><title>Demur: mail sent locally</title>'
            "<h1>Mail sent locally</h1><p>Newest first. Open a subject to read the mail as HTML;"
            " its links lead to the local server.</p>"
            "<table><tr><th>Date</th><th>To</th><th>Subject</th><th>Message</th></tr>"
            + "".join(rows)
            + "</table></html>\n",
            encoding="utf-8",
        )
