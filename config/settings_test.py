"""Settings for the test suite: the environment-driven settings with local defaults.

DATABASE_URL, CACHE_URL and CELERY_BROKER_URL pass through unchanged, so `.ci/run` runs
the same suite against the machine's PostgreSQL and Redis. Without DATABASE_URL the suite
runs on the private PostgreSQL that scripts/test starts under the var dir (scripts/pg.py),
where pytest-django creates its test database.
"""

import os
from pathlib import Path

from config.env import embedded_database_url

_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("DEBUG", "true")  # for the defaults below; tests run with DEBUG off
# The server scripts/test starts, under the var dir itself (not var/test/).
os.environ.setdefault("DATABASE_URL", embedded_database_url(Path(os.environ.get("DEMUR_VAR_DIR") or _ROOT / "var")))
os.environ.setdefault("DEMUR_VAR_DIR", str(_ROOT / "var" / "test"))

from config.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed only
# Pages call static() without a collectstatic run; the manifest storage would refuse.
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
# The tracking webhooks exist only behind a shared secret (config/urls.py).
ANYMAIL = {**ANYMAIL, "WEBHOOK_SECRET": "tracking:test-only-secret"}  # noqa: F405
