"""Worker hosts sharing one campaign, each in its own Linux network namespace: prints how
many mails went out, how many people got one twice and how many got none.

    sudo scripts/multihost-check --hosts 3 --recipients 5000
    sudo scripts/multihost-check --database postgres://postgres@127.0.0.1/demur_scratch

Each "host" is a namespace (`ip netns add`, a veth pair) with its own loopback and
address, running one Celery worker. It reaches PostgreSQL, the broker, the cache (the
shared send-rate bucket) and the SMTP server only through its veth link: a small TCP
forwarder listens on the root side of each link and connects to the real servers, which
stay bound to their own addresses, unchanged. This process plays celery beat (calls the
tick every half second) and runs the SMTP server that counts what each address got.

Needs root (CAP_NET_ADMIN) and iproute2, and requirements-dev.txt (the SMTP server).
Without --database it creates a scratch database next to DATABASE_URL's, migrates it
and drops it afterwards; a database given with --database must hold no recipients.
Exit status: 0 nothing sent twice and nobody missed, 1 otherwise, 2 bad arguments,
77 the kernel or the user may not create network namespaces."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import ipaddress
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
NETNS_REFUSED = 77
PREFIX = "demur-h8-"


class Forwarder:
    """TCP forwarding on an asyncio loop of its own thread: listen on one address,
    connect each client to the target, copy bytes both ways."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="forwarder", daemon=True)
        self.servers: list[asyncio.Server] = []

    def __enter__(self) -> Forwarder:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for server in self.servers:
            self.loop.call_soon_threadsafe(server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def add(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        handler = functools.partial(self._connect, target)
        start = asyncio.start_server(handler, listen[0], listen[1], reuse_address=True)
        self.servers.append(asyncio.run_coroutine_threadsafe(start, self.loop).result(5))

    async def _connect(self, target, reader, writer) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._copy(reader, upstream_writer), self._copy(upstream_reader, writer))

    @staticmethod
    async def _copy(reader, writer) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True)


class Host:
    """One network namespace joined to the root namespace by a veth pair (a /30)."""

    def __init__(self, index: int, network: ipaddress.IPv4Network) -> None:
        tag = f"{os.getpid() % 100000}"
        self.name = f"{PREFIX}{tag}-{index}"
        self.outside_if, self.inside_if = f"h8{tag}r{index}", f"h8{tag}n{index}"
        subnet = list(network.subnets(new_prefix=30))[index]
        self.outside, self.inside = (str(address) for address in list(subnet.hosts())[:2])
        self.process: subprocess.Popen | None = None
        self.log: Path | None = None

    def create(self) -> None:
        _run("ip", "netns", "add", self.name)
        _run("ip", "link", "add", self.outside_if, "type", "veth", "peer", "name", self.inside_if)
        _run("ip", "link", "set", self.inside_if, "netns", self.name)
        _run("ip", "addr", "add", f"{self.outside}/30", "dev", self.outside_if)
        _run("ip", "link", "set", self.outside_if, "up")
        inside = ("ip", "netns", "exec", self.name, "ip")
        _run(*inside, "addr", "add", f"{self.inside}/30", "dev", self.inside_if)
        _run(*inside, "link", "set", self.inside_if, "up")
        _run(*inside, "link", "set", "lo", "up")

    def reaches(self, host: str, port: int) -> bool:
        probe = f"import socket; socket.create_connection(({host!r}, {port}), timeout=1).close()"
        command = ["ip", "netns", "exec", self.name, sys.executable, "-c", probe]
        return subprocess.run(command, capture_output=True, check=False).returncode == 0

    def start_worker(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        command = [
            "ip", "netns", "exec", self.name, sys.executable, "-m", "celery", "-A", "config", "worker",
            "--pool=solo", "-n", f"{self.name}@%h", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "-l", "INFO",
        ]  # fmt: skip
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop_worker(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def batches(self) -> int:
        text = self.log.read_text(errors="replace") if self.log and self.log.exists() else ""
        return sum(1 for line in text.splitlines() if "campaigns.dispatch" in line and "succeeded" in line)

    def delete(self) -> None:
        self.stop_worker()
        # Deleting the namespace deletes the veth end inside it, and so the pair.
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, check=False)
        subprocess.run(["ip", "link", "delete", self.outside_if], capture_output=True, check=False)


def _free_network() -> ipaddress.IPv4Network:
    """A 10.208.x.0/24 that no interface uses yet."""
    used = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    for offset in range(250):
        network = ipaddress.ip_network(f"10.208.{(os.getpid() + offset) % 250}.0/24")
        if f" {str(network.network_address)[:-1]}" not in used:
            return network
    raise RuntimeError("no free 10.208.x.0/24 network for the veth links")


def _swap_host(url: str, host: str, default_port: int) -> str:
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host}:{parts.port or default_port}"))


def _endpoint(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _scratch_database(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"{parts.path or '/demur'}_multihost_{os.getpid()}"))


def _psql(server_url: str, sql: str) -> None:
    admin = urlunsplit(urlsplit(server_url)._replace(path="/postgres"))
    subprocess.run(["psql", "-q", admin, "-c", sql], check=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=2, help="worker hosts (network namespaces), 2 to 60")
    parser.add_argument("--recipients", type=int, default=2000)
    parser.add_argument("--rate", type=int, default=1000, help="the campaign's send rate, mails/s for all hosts")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the campaign to complete")
    parser.add_argument("--database", help="a migrated PostgreSQL database with no recipients (default: scratch)")
    parser.add_argument("--broker", default=os.environ.get("CELERY_BROKER_URL") or "redis://127.0.0.1:6380/8")
    parser.add_argument("--cache", default=os.environ.get("CACHE_URL") or "redis://127.0.0.1:6379/8")
    parser.add_argument("--logs", type=Path, default=ROOT / "var" / "multihost", help="the workers' log files")
    args = parser.parse_args(argv)
    if not 2 <= args.hosts <= 60 or args.recipients < 1:
        parser.error("--hosts must be 2 to 60 and --recipients at least 1")
    for url, name in ((args.broker, "--broker"), (args.cache, "--cache")):
        if not urlsplit(url).scheme.startswith("redis"):
            parser.error(f"{name} must be a redis:// URL")
    database = args.database
    if not database:
        if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
            parser.error(
                "set DATABASE_URL to a PostgreSQL server (a scratch database is made there) or pass --database"
            )
        database = _scratch_database(os.environ["DATABASE_URL"])

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        probe = f"{PREFIX}probe-{os.getpid()}"
        _run("ip", "netns", "add", probe)
        _run("ip", "netns", "delete", probe)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        print(f"multihost-check: cannot create network namespaces here: {detail.strip()}", file=sys.stderr)
        return NETNS_REFUSED

    scratch = not args.database
    if scratch:
        _psql(database, f'CREATE DATABASE "{urlsplit(database).path[1:]}"')
    queue = f"demur-multihost-{uuid.uuid4().hex[:10]}"
    os.environ.update(
        DATABASE_URL=database,
        CELERY_BROKER_URL=args.broker,
        CACHE_URL=args.cache,
        CELERY_TASK_DEFAULT_QUEUE=queue,
        DEMUR_DISPATCH_PARALLELISM=str(2 * args.hosts),
    )
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings_test")
    hosts: list[Host] = []
    try:
        if scratch:
            subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, check=True)
        return _check(args, database, queue, hosts)
    finally:
        for host in hosts:
            host.delete()
        if scratch:
            from django.db import connections

            connections.close_all()
            _psql(database, f'DROP DATABASE IF EXISTS "{urlsplit(database).path[1:]}"')


def _check(args, database: str, queue: str, hosts: list[Host]) -> int:
    import django

    django.setup()
    from django.db.models import Count

    from campaigns.dispatch import campaigns_tick
    from campaigns.models import Campaign, Delivery, Recipient
    from campaigns.services import campaign_launch
    from optout.models import Purpose
    from tests.campaigns.smtpsink import SmtpSink

    if Recipient.objects.exists():
        print("multihost-check: the database already holds recipients; give an empty one", file=sys.stderr)
        return 2
    network = _free_network()
    args.logs.mkdir(parents=True, exist_ok=True)
    with SmtpSink(keep=False) as sink, Forwarder() as forwarder:
        upstreams = {
            "db": _endpoint(database, 5432),
            "broker": _endpoint(args.broker, 6379),
            "cache": _endpoint(args.cache, 6379),
            "smtp": ("127.0.0.1", sink.port),
        }
        for index in range(args.hosts):
            host = Host(index, network)
            hosts.append(host)
            host.create()
            for target in set(upstreams.values()):
                forwarder.add((host.outside, target[1]), target)
            if host.reaches("127.0.0.1", upstreams["db"][1]) or not host.reaches(host.outside, upstreams["db"][1]):
                print(f"multihost-check: {host.name} is not isolated as expected", file=sys.stderr)
                return 1

        purpose, _ = Purpose.objects.get_or_create(
            slug="ai-training", defaults={"name": "training and improving AI models"}
        )
        Recipient.objects.bulk_create(
            [
                Recipient(subject_id=f"mh{i:07d}", email=f"mh{i:07d}@example.com", language="en", country="IE")
                for i in range(args.recipients)
            ],
            batch_size=5000,
        )
        campaign = Campaign.objects.create(
            name="multihost-check",
            purpose=purpose,
            controller_name="Example Social Ltd",
            product_name="Demur Social",
            training_starts_on=datetime.date.today() + datetime.timedelta(days=90),
            dpo_email="dpo@example.com",
            contact_email="privacy@example.com",
            policy_url="https://example.com/privacy",
            send_rate=args.rate,
        )
        for host in hosts:
            host.start_worker(
                {
                    **os.environ,
                    "DATABASE_URL": _swap_host(database, host.outside, 5432),
                    "CELERY_BROKER_URL": _swap_host(args.broker, host.outside, 6379),
                    "CACHE_URL": _swap_host(args.cache, host.outside, 6379),
                    "EMAIL_URL": f"smtp://{host.outside}:{sink.port}",
                    "DEMUR_DISPATCH_BATCH": "50",
                },
                args.logs / f"{host.name}.log",
            )
        started = time.monotonic()
        campaign_launch(campaign_id=campaign.pk)  # dispatch tasks enqueued on commit
        while Campaign.objects.get(pk=campaign.pk).status != Campaign.Status.COMPLETED:
            dead = [host.name for host in hosts if host.process.poll() is not None]
            if dead or time.monotonic() - started > args.timeout:
                print(
                    f"multihost-check: {'workers exited: ' + ', '.join(dead) if dead else 'timed out'}", file=sys.stderr
                )
                break
            campaigns_tick()  # what celery beat does
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        for host in hosts:
            host.stop_worker()
        counts = sink.counts

    emails = list(Recipient.objects.values_list("email", flat=True))
    statuses = dict(Delivery.objects.filter(campaign=campaign).values_list("status").annotate(n=Count("id")))
    duplicates = sum(1 for email in emails if counts[email] > 1)
    lost = sum(1 for email in emails if counts[email] == 0)
    batches = {host.name: host.batches() for host in hosts}
    print(
        f"hosts={args.hosts} recipients={args.recipients} mails={sum(counts.values())} "
        f"duplicates={duplicates} lost={lost} seconds={elapsed:.1f} statuses={statuses}"
    )
    print("batches per host: " + ", ".join(f"{name}={n}" for name, n in batches.items()))
    ok = duplicates == 0 and lost == 0 and all(batches.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
