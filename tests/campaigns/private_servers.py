"""Private Redis and PostgreSQL servers that a test may stop and start again, so that the
shared servers other work depends on are never touched.

PostgreSQL runs from the Debian binaries (/usr/lib/postgresql/<version>/bin) as the
`postgres` OS user (initdb refuses root), with its data directory and socket in a fresh
temporary directory and trust authentication on 127.0.0.1.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REDIS_PORTS = range(6390, 6400)


def free_port(candidates=None) -> int:
    for port in candidates or [0]:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError(f"no free port among {candidates}")


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
        self.port = free_port(REDIS_PORTS)
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


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def postgres_missing() -> str | None:
    """Why a private PostgreSQL cluster cannot run here, or None."""
    if _pg_bin() is None:
        return "needs PostgreSQL's server binaries (/usr/lib/postgresql/<version>/bin/initdb)"
    if os.geteuid() != 0:
        return "needs root to run initdb and pg_ctl as the postgres OS user (runuser)"
    if not shutil.which("runuser"):
        return "needs runuser to run PostgreSQL as the postgres OS user"
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "needs a postgres OS user to own the private cluster"
    return None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster: initdb, pg_ctl start/stop/restart, removed at close."""

    def __init__(self) -> None:
        self.bin = _pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="demur-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}"
        shutil.chown(self.root, "postgres")
        self._as_postgres(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        )

    def _as_postgres(self, program: str, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(self.bin / program), *args],
            check=True,
            capture_output=True,
            cwd=self.root,
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off -c max_connections=50"
        self._as_postgres("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-o", options, "start")

    def stop(self) -> None:
        """A fast shutdown: open sessions are ended, as in a real restart."""
        self._as_postgres("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def restart(self, *, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def close(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
