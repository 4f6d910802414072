"""Settings come from the environment; bad values stop start-up with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": "x" * 20 + "a-long-random-production-secret-for-tests-only",
    "ALLOWED_HOSTS": "demur.example.org",
    "SITE_URL": "https://demur.example.org",
    "DATABASE_URL": "postgres://demur@db.internal/demur",
    "CACHE_URL": "redis://cache.internal:6379/0",
}


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    # Only what a deployment would have: nothing leaks in from the test process.
    clean = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "PYTHONPATH") if k in os.environ}
    clean.update(env, DJANGO_SETTINGS_MODULE="config.settings")
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120
    )


def test_production_settings_pass_the_deploy_check(tmp_path):
    result = manage("check", "--deploy", "--fail-level", "WARNING", env={**PRODUCTION, "DEMUR_VAR_DIR": str(tmp_path)})

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"SECRET_KEY": ""}, "The environment variable SECRET_KEY must be set."),
        ({"SECRET_KEY": "short"}, "SECRET_KEY must be at least 50 characters"),
        ({"ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS must be set"),
        ({"SITE_URL": ""}, "The environment variable SITE_URL must be set."),
        ({"DATABASE_URL": ""}, "DATABASE_URL must be set when DEBUG is off"),
        ({"DATABASE_URL": "mongodb://x/y"}, "DATABASE_URL must be a postgres:// URL, not 'mongodb'"),
        ({"DATABASE_URL": "sqlite:///var/demur.sqlite3"}, "DATABASE_URL must be a postgres:// URL, not 'sqlite'"),
        ({"CACHE_URL": "nonsense://x"}, "CACHE_URL is not a valid cache URL"),
        ({"DEBUG": "maybe"}, "DEBUG must be a boolean"),
        ({"DB_CONN_MAX_AGE": "ten"}, "DB_CONN_MAX_AGE must be a whole number"),
    ],
)
def test_a_missing_or_malformed_variable_stops_start_up_and_is_named(tmp_path, override, message):
    result = manage("check", env={**PRODUCTION, "DEMUR_VAR_DIR": str(tmp_path), **override})

    assert result.returncode != 0
    assert message in result.stderr


def test_manage_py_in_a_developer_shell_runs_on_local_defaults(tmp_path):
    result = manage("check", env={"DEMUR_VAR_DIR": str(tmp_path)})

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_manage_py_with_debug_off_still_demands_a_secret_key(tmp_path):
    result = manage("check", env={"DEMUR_VAR_DIR": str(tmp_path), "DEBUG": "false"})

    assert result.returncode != 0
    assert "The environment variable SECRET_KEY must be set." in result.stderr
