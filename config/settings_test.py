"""Settings for the test suite: the environment-driven settings with local defaults.

DATABASE_URL, CACHE_URL and CELERY_BROKER_URL pass through unchanged, so `.ci/run` runs
the same suite against PostgreSQL and Redis; unset, the suite runs on SQLite.
"""

import os

os.environ.setdefault("DEBUG", "true")  # for the defaults below; tests run with DEBUG off
os.environ.setdefault("DEMUR_VAR_DIR", os.path.join(os.path.dirname(__file__), "..", "var", "test"))

from config.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed only
# Pages call static() without a collectstatic run; the manifest storage would refuse.
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
# The tracking webhooks exist only behind a shared secret (config/urls.py).
ANYMAIL = {**ANYMAIL, "WEBHOOK_SECRET": "tracking:test-only-secret"}  # noqa: F405
