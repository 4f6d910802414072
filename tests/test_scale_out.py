"""Beyond one machine, at small scale: worker hosts in separate network namespaces share
one campaign and nobody is mailed twice (scripts/multihost-check); two gunicorn masters
on one address (SO_REUSEPORT) both answer, a form fetched from one is posted to the other,
and /metrics on that address counts every worker of both."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.db import connection
from prometheus_client.parser import text_string_to_metric_families

from optout.links import LinkClaims, objection_url
from optout.models import ObjectionEvent
from tests.campaigns.private_servers import free_port
from tests.redis_dbs import own_database

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
BROKER = own_database("DEMUR_TEST_SCALE_OUT_BROKER_URL", 12)
NETNS_REFUSED = 77


def _database_url() -> str:
    source = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(source._replace(path="/" + connection.settings_dict["NAME"]))


def test_worker_hosts_in_their_own_network_namespaces_mail_everyone_once(purpose):
    cache = os.environ.get("CACHE_URL", "")
    if not cache.startswith("redis"):
        pytest.skip("the hosts share the send-rate bucket through a Redis cache: set CACHE_URL=redis://...")
    command = [
        str(ROOT / "scripts" / "multihost-check"), "--hosts", "2", "--recipients", "300", "--timeout", "120",
        "--database", _database_url(), "--broker", BROKER, "--cache", cache,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)

    if result.returncode == NETNS_REFUSED:
        pytest.skip(f"the kernel refuses network namespaces here: {result.stderr.strip()}")
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "recipients=300 mails=300 duplicates=0 lost=0" in result.stdout
    batches = dict(re.findall(r"(demur-h8-[\w-]+)=(\d+)", result.stdout.splitlines()[-1]))
    assert len(batches) == 2 and all(int(n) > 0 for n in batches.values()), result.stdout
    leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    assert not [name for name in batches if name in leftovers], "namespaces left behind"


class Master:
    """One gunicorn master (one sync worker) on the shared address, logging to a file."""

    def __init__(self, name: str, tmp_path: Path, metrics_dir: Path, port: int) -> None:
        self.log = tmp_path / f"{name}.log"
        self.port = port
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings_test",
            "DATABASE_URL": _database_url(),
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "GUNICORN_REUSE_PORT": "true",
            "WEB_CONCURRENCY": "1",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "LOG_LEVEL": "INFO",
        }
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "config.wsgi"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def answered(self) -> set[str]:
        """Request ids of the requests this master's worker answered (its access log)."""
        ids = set()
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"demur.access"' in line:
                ids.add(json.loads(line)["request_id"])
        return ids

    def stop(self) -> None:
        """TERM to the master (a graceful stop); its whole process group killed if it hangs."""
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def _request(port: int, method: str, path: str, *, body: str = "", headers: dict | None = None):
    """One request on a connection of its own, so that the kernel picks a master anew."""
    request_id = uuid.uuid4().hex
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body or None, headers={"X-Request-ID": request_id, **(headers or {})})
        response = conn.getresponse()
        return request_id, response.status, response.getheader("Set-Cookie") or "", response.read().decode()
    finally:
        conn.close()


@pytest.fixture
def masters(tmp_path):
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    port = free_port()
    started = [Master(name, tmp_path, metrics_dir, port) for name in ("web-a", "web-b")]
    try:
        # Up when each master has answered a request itself (its access log names the
        # request's id); /readyz, so that the test's own /healthz count starts at zero.
        deadline = time.monotonic() + 60
        asked: set[str] = set()
        while not all(asked & master.answered() for master in started):
            for master in started:
                assert master.process.poll() is None, master.log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the web masters did not both answer"
            try:
                asked.add(_request(port, "GET", "/readyz")[0])
            except OSError:
                pass  # not listening yet
            time.sleep(0.1)
        yield started
    finally:
        for master in started:
            master.stop()


def _who(masters, request_id: str) -> str:
    owners = [master.log.stem for master in masters if request_id in master.answered()]
    assert len(owners) == 1, (request_id, owners)
    return owners[0]


def test_two_masters_on_one_address_both_answer_and_share_no_state(purpose, masters):
    port = masters[0].port
    healthz = [_request(port, "GET", "/healthz") for _ in range(30)]
    assert {status for _, status, _, _ in healthz} == {200}
    time.sleep(0.5)  # the access lines are written after the response
    assert {_who(masters, request_id) for request_id, *_ in healthz} == {"web-a", "web-b"}

    # A form fetched from one master, posted to the other: the CSRF token and the signed
    # link are checked against the shared secret key, nothing held by the process.
    for attempt in range(40):
        path = urlsplit(objection_url(LinkClaims(f"scale-{attempt}", purpose.slug, "en"))).path
        get_id, status, set_cookie, page = _request(port, "GET", path)
        assert status == 200
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        cookie = SimpleCookie(set_cookie)["csrftoken"].value
        post_id, status, _, receipt = _request(
            port,
            "POST",
            path,
            body=f"csrfmiddlewaretoken={token}&object=yes",
            headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": f"csrftoken={cookie}"},
        )
        assert status == 200, "\n".join(master.log.read_text(errors="replace")[-3000:] for master in masters)
        time.sleep(0.2)
        if _who(masters, get_id) != _who(masters, post_id):
            break
    else:
        pytest.fail("40 form round trips never crossed from one master to the other")
    assert ObjectionEvent.objects.filter(subject_id=f"scale-{attempt}").count() == 1

    # Every worker of both masters writes to one PROMETHEUS_MULTIPROC_DIR: the scrape
    # answered by either master counts all of them.
    _, status, _, text = _request(port, "GET", "/metrics")
    assert status == 200
    counted = sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "demur_http_request_duration_seconds_count" and sample.labels["view"] == "healthz"
    )
    assert counted == 30
