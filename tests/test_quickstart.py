"""The README's first command on a machine with no servers: SQLite, no broker, mail to files
that a person can read (the demo campaign's, whose links open the local pages)."""

from __future__ import annotations

import email
import email.policy
import http.cookiejar
import os
import re
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_scripts_run_serves_the_admin_with_demo_data_and_a_demo_campaign_on_sqlite(tmp_path):
    port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_URL") and k not in {"DEBUG", "SECRET_KEY", "DJANGO_SETTINGS_MODULE"}
    }
    env["DEMUR_VAR_DIR"] = str(tmp_path)
    log = (tmp_path / "run.log").open("w+")
    server = subprocess.Popen(
        [str(ROOT / "scripts" / "run"), f"127.0.0.1:{port}", "--noreload"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        deadline = time.monotonic() + 120
        while True:
            try:
                login_page = opener.open(f"{base}/admin/login/", timeout=5).read().decode()
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "run.log").read_text()
                assert time.monotonic() < deadline, "the quick start did not come up in time"
                time.sleep(0.5)

        output = (tmp_path / "run.log").read_text()
        username, password = re.search(r"Staff login: (\S+) / (\S+)", output).groups()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page).group(1)
        form = urllib.parse.urlencode(
            {"username": username, "password": password, "csrfmiddlewaretoken": token, "next": "/admin/"}
        ).encode()
        opener.open(urllib.request.Request(f"{base}/admin/login/", data=form, headers={"Referer": base}), timeout=10)
        events = opener.open(f"{base}/admin/optout/objectionevent/", timeout=10).read().decode()

        assert "demo-0001" in events and "demo-0004" in events
        assert (tmp_path / "demur.sqlite3").exists()
        assert opener.open(f"{base}/api/docs/", timeout=10).status == 200

        # The demo campaign's mails, where the output says, readable and with working links.
        index = tmp_path / "mail" / "index.html"
        assert f"Demo campaign: 6 notice mails (completed); read them in {index}" in output
        mails = {}
        for eml in (tmp_path / "mail").glob("*.eml"):
            message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
            mails[message["To"]] = (eml, message)
        assert len(mails) == 6
        eml, message = mails["demo-0102@example.org"]
        assert eml.with_suffix(".html").name in index.read_text()
        html = eml.with_suffix(".html").read_text()
        object_url = re.search(rf'href="({re.escape(base)}/de/optout/t/[^"]+)"', html).group(1)
        assert object_url in message.get_body(("plain",)).get_content()
        page = opener.open(object_url, timeout=10)
        body = page.read().decode()
        assert page.status == 200 and 'method="post"' in body and "csrfmiddlewaretoken" in body
        unsubscribe_url = message["List-Unsubscribe"].strip().strip("<>")
        assert unsubscribe_url.startswith(f"{base}/") and opener.open(unsubscribe_url, timeout=10).status == 200
        # Someone who objected before got the mail that says so, with no button to object again.
        _eml, objected = mails["demo-0001@example.org"]
        assert "/optout/t/" not in objected.get_body(("plain",)).get_content()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)
        log.close()
