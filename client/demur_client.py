"""Demur reference client for training pipelines: a local SQLite copy of who objects.

Standard library only (urllib, gzip, json, sqlite3); copy this one file into a pipeline.

    mirror = ObjectionMirror("https://demur.example", api_key, "objections.sqlite3")
    mirror.sync()                        # first run: snapshot; later runs: the change feed
    if not mirror.is_objected("user-42"):
        train_on("user-42")
    usable = mirror.allowed(batch_of_ids)  # the ids that may be used, in input order

The first sync downloads the snapshot (`/api/v1/objections/export`) and the cursor it is
consistent with; every later sync follows the change feed (`/api/v1/objections/changes`)
from the stored cursor, so nothing is missed between the two. Each page of events and the
cursor after it are committed together, so a crash never leaves the copy ahead of or
behind its cursor. While one page is parsed and applied, a thread already fetches the next
(its cursor comes in the X-Next-Cursor header), so the server and this process work at
the same time; `feed_pages()` is that reader on its own, for pipelines that keep their
own store.

Each event carries `seq`, its place in its subject's history; the copy keeps the newest
seq it applied per subject (table `seen`) and skips an event that is not newer, so a
redelivered or reordered event can never undo a later one. When the server's ledger was
restored from a backup older than the copy's cursor, the feed answers 410: `sync()`
drops the cursor and the time of the last sync (the copy answers "everyone objects"
meanwhile) and starts again from the snapshot, in the same call.

It fails closed. When the API cannot be reached or answers with an error, `sync()` raises
`DemurUnavailable`, and once the copy is older than `max_staleness` seconds (or has
never been synced) `is_objected()` answers True for everyone and `allowed()` returns
nothing: an unreachable API means "not allowed to train", never "no objection".

The copy is checked when it is opened and after every sync: SQLite's `quick_check`, this
client's tables and columns, and its bookkeeping (cursor, purpose, time of the last
sync). A damaged copy (corrupt, truncated, a table gone) raises `CopyDamaged` (a
`DemurUnavailable`) and answers as a stale one does, everyone objecting, until the file
is deleted and synced anew; the command line says so and exits with status 2.

Command line:

    DEMUR_API_KEY=... python demur_client.py --url https://demur.example --db objections.sqlite3 sync
    DEMUR_API_KEY=... python demur_client.py --url ... --db ... check user-1 user-2
"""

from __future__ import annotations

import argparse
import functools
import gzip
import http.client
import json
import math
import os
import queue
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from email.message import Message

__all__ = ["CopyDamaged", "DemurUnavailable", "ObjectionMirror", "ResyncRequired", "feed_pages"]

# `seen` holds, for each subject the copy has heard of, the place in the subject's history
# (the events' seq) of the newest event applied: an older one, delivered again, changes
# nothing. Copies made before it existed get it on open.
_SEEN = "CREATE TABLE IF NOT EXISTS seen (subject_id TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;"
# Records an event's seq if it is newer than the subject's; changes no row otherwise.
_NEWER = (
    "INSERT INTO seen VALUES (?, ?) ON CONFLICT (subject_id) DO UPDATE SET seq = excluded.seq"
    " WHERE excluded.seq > seen.seq"
)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS objectors (subject_id TEXT PRIMARY KEY, effective_at TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
{_SEEN}
"""


class DemurUnavailable(Exception):
    """The API could not be reached or refused the request: treat everyone as objecting."""


class CopyDamaged(DemurUnavailable):
    """The local copy failed its check: treat everyone as objecting until it is rebuilt."""


class ResyncRequired(DemurUnavailable):
    """The server's ledger was restored from a backup older than this copy's cursor
    (HTTP 410): the copy may hold changes the server no longer has. sync() then starts
    again from a snapshot by itself."""


def _busy(exc: sqlite3.Error) -> bool:
    """Another connection holds the file's lock (SQLITE_BUSY, SQLITE_LOCKED): not damage."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    return (code & 0xFF) in (5, 6) if code is not None else "locked" in str(exc)


def _table_shapes(db: sqlite3.Connection, names) -> dict[str, list[tuple]]:
    """Each named table's columns as (name, type, primary key position); absent tables left out."""
    shapes = {}
    for name in names:
        columns = [(column[1], column[2].upper(), column[5]) for column in db.execute(f"PRAGMA table_info({name})")]
        if columns:
            shapes[name] = columns
    return shapes


def _schema_shapes() -> dict[str, list[tuple]]:
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(_SCHEMA)
        names = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return _table_shapes(db, names)
    finally:
        db.close()


# What a sound copy holds: _SCHEMA's tables with exactly their columns.
_SHAPES = _schema_shapes()


def _guarded(method):
    """An SQLite error inside `method` ends as CopyDamaged when the copy then fails its
    check, else as DemurUnavailable (e.g. the disk is full): never as sqlite3's own."""

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        if self.damage is not None:
            raise CopyDamaged(self.damage)
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            self._check_copy()  # raises CopyDamaged when damaged
            raise DemurUnavailable(f"the local copy {self.path} could not be used: {exc}") from exc

    return guarded


class ObjectionMirror:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        path: str,
        *,
        purpose: str = "ai-training",
        max_staleness: float = 900.0,
        timeout: float = 60.0,
        page_limit: int = 10_000,
        max_retries: int = 5,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.purpose = purpose
        self.max_staleness = max_staleness
        self.timeout = timeout
        self.page_limit = page_limit
        self.max_retries = max_retries
        self.path = path
        self.damage: str | None = None  # what the copy's check found, once it failed
        try:
            self.db = sqlite3.connect(path, isolation_level=None)  # explicit BEGIN/COMMIT below
        except sqlite3.Error as exc:
            raise DemurUnavailable(f"cannot open the local copy {path}: {exc}") from exc
        try:
            self._check_copy(create=True)
        except DemurUnavailable:
            self.db.close()
            raise
        stored = self._meta("purpose")
        if stored is not None and stored != purpose:
            raise ValueError(f"{path} holds objections for {stored!r}, not {purpose!r}")

    # --- Answers --------------------------------------------------------------------------

    def is_fresh(self) -> bool:
        """True when the last complete sync finished less than max_staleness seconds ago
        (never for a damaged copy)."""
        try:
            synced_at = self._meta("synced_at") if self.damage is None else None
        except sqlite3.DatabaseError:
            return False
        return synced_at is not None and time.time() - float(synced_at) <= self.max_staleness

    def is_objected(self, subject_id: str) -> bool:
        """Whether this person's data must be left out. True for everyone when the copy is
        stale, damaged or cannot be read."""
        if not self.is_fresh():
            return True
        try:
            row = self.db.execute("SELECT 1 FROM objectors WHERE subject_id = ?", (subject_id,)).fetchone()
        except sqlite3.DatabaseError:
            self._note_damage()
            return True
        return row is not None

    def allowed(self, subject_ids: Iterable[str]) -> list[str]:
        """The ids that may be used, in input order; none at all when the copy is stale,
        damaged or cannot be read."""
        ids = list(subject_ids)
        if not self.is_fresh():
            return []
        objecting: set[str] = set()
        try:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self.db.execute(f"SELECT subject_id FROM objectors WHERE subject_id IN ({marks})", chunk)
                objecting.update(subject_id for (subject_id,) in rows)
        except sqlite3.DatabaseError:
            self._note_damage()
            return []
        return [subject_id for subject_id in ids if subject_id not in objecting]

    @_guarded
    def objector_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM objectors").fetchone()[0]

    # --- Sync -----------------------------------------------------------------------------

    @_guarded
    def sync(self) -> int:
        """Bring the copy up to date; returns the number of events applied (or snapshot rows).

        Raises DemurUnavailable when the API cannot be used; the copy then goes stale;
        CopyDamaged when the copy fails its check afterwards."""
        try:
            applied = self._follow()
        except ResyncRequired:
            # Not fresh from here until the snapshot is in: fail closed, then start again.
            self._set_meta({}, drop=("cursor", "synced_at", "etag", "etag_cursor"))
            applied = self._follow()
        self._check_copy()  # before the copy counts as fresh
        self._set_meta({"synced_at": repr(time.time())})
        return applied

    def _follow(self) -> int:
        """The snapshot if the copy has no cursor, then the feed to its end."""
        applied = 0
        if self._meta("cursor") is None:
            applied += self._snapshot()
        cursor = self._meta("cursor") or ""
        etag = self._meta("etag") if self._meta("etag_cursor") == cursor else None
        pages = feed_pages(self.send, purpose=self.purpose, cursor=cursor, etag=etag, limit=self.page_limit)
        for asked, page, page_etag in pages:
            self._apply(page["events"], page["next_cursor"], page_etag, asked)
            applied += len(page["events"])
        return applied

    def _snapshot(self) -> int:
        query = urllib.parse.urlencode({"purpose": self.purpose})
        request = self._build(f"/api/v1/objections/export?{query}", {"Accept-Encoding": "gzip"})
        try:
            with self._open(request) as response:
                stream = (
                    gzip.GzipFile(fileobj=response) if response.headers.get("Content-Encoding") == "gzip" else response
                )
                return self._load_snapshot(_lines(stream))
        except (OSError, ValueError, EOFError) as exc:  # URLError, timeouts, a truncated gzip stream
            raise DemurUnavailable(f"snapshot failed: {exc}") from exc

    def _load_snapshot(self, lines: Iterator[bytes]) -> int:
        count, trailer, batch = 0, None, []
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("DELETE FROM objectors")
            self.db.execute("DELETE FROM seen")
            for line in lines:
                record = json.loads(line)
                if "next_cursor" in record:
                    trailer = record
                    break
                batch.append((record["subject_id"], record["effective_at"], record.get("seq", 0)))
                if len(batch) >= 10_000:
                    self._insert_objectors(batch)
                    count, batch = count + len(batch), []
            self._insert_objectors(batch)
            count += len(batch)
            if trailer is None or trailer["count"] != count:
                raise DemurUnavailable("the snapshot was cut off before its last line")
            self._write_meta({"cursor": trailer["next_cursor"], "purpose": self.purpose})
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return count

    def _insert_objectors(self, rows: list[tuple]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO objectors VALUES (?, ?)", [row[:2] for row in rows])
        self.db.executemany("INSERT OR REPLACE INTO seen VALUES (?, ?)", [(row[0], row[2]) for row in rows])

    def _apply(self, events: list[dict], next_cursor: str, etag: str | None, cursor: str) -> None:
        """One page: each event newer than what the copy holds for its subject, and the
        cursor after the page, in one transaction."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for event in events:
                seq = event.get("seq")  # a server before seq: every event applies, in order
                if seq is not None and not self.db.execute(_NEWER, (event["subject_id"], seq)).rowcount:
                    continue  # not newer than what the copy holds for this subject
                if event["action"] == "objected":
                    self.db.execute(
                        "INSERT OR REPLACE INTO objectors VALUES (?, ?)", (event["subject_id"], event["effective_at"])
                    )
                else:
                    self.db.execute("DELETE FROM objectors WHERE subject_id = ?", (event["subject_id"],))
            self._write_meta({"cursor": next_cursor, "etag": etag or "", "etag_cursor": cursor})
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # --- HTTP -----------------------------------------------------------------------------

    def _build(self, path: str, headers: dict[str, str]) -> urllib.request.Request:
        headers = {"Authorization": f"Bearer {self.api_key}", "Accept": "application/json", **headers}
        return urllib.request.Request(self.base_url + path, headers=headers)

    def _open(self, request: urllib.request.Request):
        """urlopen with retries on 429 (after Retry-After) and on 503; any other failure raises."""
        for attempt in range(self.max_retries + 1):
            try:
                return urllib.request.urlopen(request, timeout=self.timeout)
            except urllib.error.HTTPError as exc:
                if exc.code in (429, 503) and attempt < self.max_retries:
                    time.sleep(min(float(exc.headers.get("Retry-After") or 1), 60.0))
                    continue
                if exc.code == 304:
                    raise
                refused = ResyncRequired if exc.code == 410 else DemurUnavailable
                raise refused(f"{request.full_url}: HTTP {exc.code} {exc.read()[:500]!r}") from exc
        raise AssertionError("unreachable")

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
        """One GET of an API path with this key, retrying 429 and 503: (status, headers,
        body). A 304 is returned; any other failure raises DemurUnavailable. The headers
        are looked up without regard to case."""
        try:
            with self._open(self._build(path, headers or {})) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 304:
                return 304, exc.headers, b""
            raise (ResyncRequired if exc.code == 410 else DemurUnavailable)(f"HTTP {exc.code}") from exc
        except (OSError, ValueError) as exc:
            raise DemurUnavailable(f"{path}: {exc}") from exc

    def send(self, path: str, headers: dict[str, str] | None = None):
        """Sends a GET of an API path and returns a function that waits for its answer,
        as get() gives it (and raises what get() would): the server can work on it while
        this process does something else. urllib cannot split a request so; behind a
        proxy this is a plain get() when the answer is asked for."""
        if urllib.request.getproxies():
            return lambda: self.get(path, headers)
        url = urllib.parse.urlsplit(self.base_url + path)
        connection_class = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        connection = connection_class(url.netloc, timeout=self.timeout)
        target = f"{url.path}?{url.query}" if url.query else url.path
        try:
            connection.request("GET", target, headers=self._build(path, headers or {}).headers)
        except (OSError, http.client.HTTPException) as exc:
            failure = exc  # raised by answer(), like every other failure
        else:
            failure = None

        def answer() -> tuple[int, Message, bytes]:
            try:
                if failure is not None:
                    raise failure
                response = connection.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as exc:
                raise DemurUnavailable(f"{path}: {exc}") from exc
            finally:
                connection.close()
            if response.status in (429, 503):  # again, with get()'s waiting and retries
                return self.get(path, headers)
            if response.status >= 400:
                refused = ResyncRequired if response.status == 410 else DemurUnavailable
                raise refused(f"{path}: HTTP {response.status} {body[:500]!r}")
            return response.status, response.headers, body

        return answer

    # --- Local state ----------------------------------------------------------------------

    def _check_copy(self, *, create: bool = False) -> None:
        """Raise CopyDamaged (and keep saying so) unless the file passes SQLite's
        quick_check, holds _SCHEMA's tables with their columns, and its bookkeeping makes
        sense. With `create`, a file without any of the tables (a new one) gets them."""
        try:
            problem = self._copy_problem(create=create)
        except sqlite3.DatabaseError as exc:
            if _busy(exc):
                raise DemurUnavailable(f"the local copy {self.path} is locked by another process: {exc}") from exc
            problem = str(exc)  # e.g. "file is not a database", "database disk image is malformed"
        if problem is not None:
            self.damage = (
                f"the local copy {self.path} is damaged ({problem}), so nobody may be used. "
                f"Delete {self.path} (and {self.path}-journal, if there is one) and run sync again."
            )
            raise CopyDamaged(self.damage)

    def _copy_problem(self, *, create: bool) -> str | None:
        checked = [row[0] for row in self.db.execute("PRAGMA quick_check")]
        if checked != ["ok"]:
            return "; ".join(map(str, checked[:3]))
        shapes = _table_shapes(self.db, _SHAPES)
        if create and not shapes:
            self.db.executescript(_SCHEMA)
            return None
        if create and "seen" not in shapes and shapes:  # a copy from before `seen`
            self.db.executescript(_SEEN)
            shapes = _table_shapes(self.db, _SHAPES)
        for name, columns in _SHAPES.items():
            if name not in shapes:
                return f"its table {name} is missing"
            if shapes[name] != columns:
                return f"its table {name} does not have the columns this client makes"
        meta = dict(self.db.execute("SELECT key, value FROM meta"))
        if not all(isinstance(value, str) for value in meta.values()):
            return "its meta table holds a value that is not text"
        if "cursor" in meta and not (meta["cursor"] and meta.get("purpose")):
            return "its cursor is empty or has no purpose"
        if "synced_at" in meta:
            if "cursor" not in meta:
                return "it is marked synced but has no cursor"
            try:
                synced_at = float(meta["synced_at"])
            except ValueError:
                synced_at = math.nan
            if not math.isfinite(synced_at):
                return "the time of its last sync is not a number"
        return None

    def _note_damage(self) -> None:
        """After a failed read: the copy counts as damaged from now on if its check fails
        (a read refused by another process's lock is not damage)."""
        try:
            self._check_copy()
        except DemurUnavailable:
            pass

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _write_meta(self, values: dict[str, str]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()))

    def _set_meta(self, values: dict[str, str], *, drop: tuple[str, ...] = ()) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany("DELETE FROM meta WHERE key = ?", [(key,) for key in drop])
        self._write_meta(values)
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


def _lines(stream) -> Iterator[bytes]:
    for line in stream:
        if line.strip():
            yield line


def feed_pages(
    send, *, purpose: str | None, cursor: str = "", etag: str | None = None, limit: int = 10_000
) -> Iterator[tuple[str, dict, str | None]]:
    """The change feed from `cursor` until has_more is false, as (the cursor the page was
    asked with, the parsed page, its ETag); nothing when an `etag` poll answers 304.

    `send(path, headers)` starts one GET and returns a function that waits for its
    answer, (status, headers, body), as ObjectionMirror.send does. A thread sends the
    request for page N+1 (its cursor from the X-Next-Cursor header) before it hands page
    N over, so the server works on the next page while the caller parses and uses this
    one; at most two pages wait in memory. Errors of that thread are raised here."""
    pages: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item) -> None:
        while not stop.is_set():
            try:
                pages.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def ask(cursor: str, etag: str | None):
        query = {"cursor": cursor, "limit": limit, **({"purpose": purpose} if purpose else {})}
        return send(
            f"/api/v1/objections/changes?{urllib.parse.urlencode(query)}", {"If-None-Match": etag} if etag else {}
        )

    def fetch(cursor: str, etag: str | None) -> None:
        try:
            answer = ask(cursor, etag)
            while not stop.is_set():
                status, headers, body = answer()
                if status == 304:
                    break
                if "X-Next-Cursor" in headers:
                    next_cursor, has_more = headers["X-Next-Cursor"], headers.get("X-Has-More") == "true"
                else:  # a server without the headers: read them from the body
                    page = json.loads(body)
                    next_cursor, has_more = page["next_cursor"], page["has_more"]
                if has_more:
                    answer = ask(next_cursor, None)  # on its way before this page is handed over
                put((cursor, headers.get("ETag"), body))
                if not has_more:
                    break
                cursor = next_cursor
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread, which raises it
            put(exc)
        put(None)

    fetcher = threading.Thread(target=fetch, args=(cursor, etag), name="demur-feed", daemon=True)
    fetcher.start()
    try:
        while (item := pages.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            asked, page_etag, body = item
            try:
                page = json.loads(body)
            except ValueError as exc:
                raise DemurUnavailable(f"the change feed sent a malformed page: {exc}") from exc
            yield asked, page, page_etag
    finally:
        stop.set()
        fetcher.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Keep a local copy of Demur objections in SQLite.")
    parser.add_argument("--url", required=True, help="Demur's base URL")
    parser.add_argument("--db", required=True, help="the SQLite file to keep")
    parser.add_argument("--purpose", default="ai-training")
    parser.add_argument("--key-env", default="DEMUR_API_KEY", help="environment variable holding the API key")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("sync", help="snapshot on first use, then follow the change feed")
    check = commands.add_parser("check", help="print each id with 'allowed' or 'excluded'")
    check.add_argument("subject_ids", nargs="+")
    args = parser.parse_args(argv)

    # Exit status 2: the copy is damaged (nothing was printed as allowed); 1: it is not usable now.
    try:
        mirror = ObjectionMirror(args.url, os.environ.get(args.key_env, ""), args.db, purpose=args.purpose)
    except CopyDamaged as exc:
        print(exc, file=sys.stderr)
        return 2
    except (DemurUnavailable, ValueError) as exc:
        print(f"cannot use the copy: {exc}", file=sys.stderr)
        return 1
    if args.command == "sync":
        try:
            applied = mirror.sync()
            objectors = mirror.objector_count()
        except CopyDamaged as exc:
            print(exc, file=sys.stderr)
            return 2
        except DemurUnavailable as exc:
            print(f"sync failed, the copy is not fresh: {exc}", file=sys.stderr)
            return 1
        print(f"{applied} changes applied; {objectors} objectors")
        return 0
    allowed = set(mirror.allowed(args.subject_ids))
    if mirror.damage is not None:
        print(mirror.damage, file=sys.stderr)
        return 2
    for subject_id in args.subject_ids:
        print(subject_id, "allowed" if subject_id in allowed else "excluded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
