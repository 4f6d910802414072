"""Typed helpers that read settings from the environment.

Every helper raises ImproperlyConfigured naming the variable when a value is malformed,
so a bad deployment stops at start-up instead of misbehaving later. The last two say
where the quick start's private PostgreSQL lives, for the settings and scripts/pg.py.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from urllib.parse import quote

import environ
from django.core.exceptions import ImproperlyConfigured

_env = environ.Env()

SUPPORTED_DATABASE_ENGINES = {"django.db.backends.postgresql"}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None, *, required: bool = False) -> str:
    value = os.environ.get(name)
    if value is None or value == "":
        if required:
            raise ImproperlyConfigured(f"The environment variable {name} must be set.")
        if default is None:
            return ""
        return default
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false, 1/0, yes/no), not {raw!r}.")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {raw!r}.") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}.")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_url_config(name: str, default: str, kind: str) -> dict:
    """Parse a DATABASE_URL / CACHE_URL / EMAIL_URL style value with django-environ."""
    raw = os.environ.get(name) or default
    parse = {"db": _env.db_url_config, "cache": _env.cache_url_config, "email": _env.email_url_config}[kind]
    try:
        config = parse(raw)
    except Exception as exc:  # noqa: BLE001 - django-environ raises several types for bad URLs
        raise ImproperlyConfigured(f"{name} is not a valid {kind} URL: {exc}") from None
    if kind == "db" and config.get("ENGINE") not in SUPPORTED_DATABASE_ENGINES:
        raise ImproperlyConfigured(
            f"{name} must be a postgres:// URL, not {raw.split(':', 1)[0]!r}. Demur runs on PostgreSQL only; "
            "with it unset, scripts/run and scripts/test start a private one (scripts/pg.py)."
        )
    if kind == "cache" and not config.get("BACKEND"):
        raise ImproperlyConfigured(f"{name} names an unknown cache scheme: {raw.split(':', 1)[0]!r}.")
    if kind == "email" and not config.get("EMAIL_BACKEND"):
        raise ImproperlyConfigured(f"{name} names an unknown mail scheme: {raw.split(':', 1)[0]!r}.")
    return config


def embedded_postgres_dirs(var_dir: Path) -> tuple[Path, Path]:
    """The data and socket directories of the private PostgreSQL that scripts/pg.py keeps
    under the var dir. It listens only on a Unix socket, in its data directory unless that
    path is too long for a socket address (107 bytes), then in a short one under the temp dir."""
    data = var_dir.absolute() / "postgres"
    if len(os.fsencode(data / ".s.PGSQL.5432")) <= 107:
        return data, data
    digest = hashlib.sha256(os.fsencode(data)).hexdigest()[:12]
    return data, Path(tempfile.gettempdir()) / f"demur-pg-{digest}"


def embedded_database_url(var_dir: Path) -> str:
    """DATABASE_URL of the private PostgreSQL's database `demur` (libpq's socket form)."""
    _data, sockets = embedded_postgres_dirs(var_dir)
    return f"postgres://postgres@/demur?host={quote(str(sockets))}"
