"""Demur settings. Every value comes from the environment (see .env.example).

Defaults let the quick start run on one machine with nothing installed: the private
PostgreSQL under var/ that scripts/run starts (scripts/pg.py), tasks run in-process, mail
written to var/mail/, a local-memory cache. Production sets DEBUG=false, which makes
DATABASE_URL, SECRET_KEY, ALLOWED_HOSTS and SITE_URL mandatory and turns on the HTTPS
hardening that `manage.py check --deploy` asks for.
"""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

from config.env import embedded_database_url, env_bool, env_int, env_list, env_str, env_url_config

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("DEMUR_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)

# The quick start keeps its PostgreSQL cluster, mail and static files here.
VAR_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = env_str("SECRET_KEY", required=not DEBUG)
if DEBUG and not SECRET_KEY:
    # Only for a local DEBUG run; production refuses to start without SECRET_KEY.
    SECRET_KEY = "insecure-local-development-key-never-used-with-debug-off"
if not DEBUG and len(SECRET_KEY) < 50:
    raise ImproperlyConfigured("SECRET_KEY must be at least 50 characters long when DEBUG is off.")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"] if DEBUG else [])
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must be set when DEBUG is off.")

SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000" if DEBUG else None, required=not DEBUG).rstrip("/")

INSTALLED_APPS = [
    "config.apps.DemurAdminConfig",  # django.contrib.admin with the feed-stall warning
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # Two-factor login for the admin, TOTP (config.two_factor)
    "django_otp",
    "django_otp.plugins.otp_totp",
    "rest_framework",
    "rest_framework_api_key",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "anymail",
    "csp",
    "optout",
    "campaigns",
]

MIDDLEWARE = [
    "config.logs.RequestIdMiddleware",
    "config.metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    # Before the CSRF check: lets same-origin form posts through under no-referrer.
    "optout.middleware.SameOriginFetchMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        # Notices and public pages: Jinja2, from templates/.
        "BACKEND": "django.template.backends.jinja2.Jinja2",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": False,
        "OPTIONS": {"environment": "config.jinja2.environment"},
    },
    {
        # The admin and its overrides: Django templates.
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates" / "django"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------------------

# PostgreSQL only. Production names its database; a DEBUG run without DATABASE_URL (a
# developer's manage.py) uses the private server that scripts/run and scripts/test start.
if not DEBUG and not env_str("DATABASE_URL"):
    raise ImproperlyConfigured("DATABASE_URL must be set when DEBUG is off (a postgres:// URL).")
DATABASES = {"default": env_url_config("DATABASE_URL", embedded_database_url(VAR_DIR), "db")}
# Persistent connections: with sync gunicorn workers they measured ~11 % faster than
# psycopg's pool and 6.7x faster than a new connection per request (issue 2).
DATABASES["default"]["CONN_MAX_AGE"] = env_int("DB_CONN_MAX_AGE", 600, minimum=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache (rate limits, throttles) -----------------------------------------------------

CACHES = {"default": env_url_config("CACHE_URL", env_str("REDIS_URL") or "locmemcache://demur", "cache")}

# --- Celery ------------------------------------------------------------------------------

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL")
# With no broker the quick start runs tasks in-process when they are enqueued (on commit).
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
# Deployments (or test runs) sharing one broker keep apart by queue name.
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_TASK_DEFAULT_QUEUE", "celery")
# Sends outbox mail left pending while the broker was down (optout/outbox.py).
CELERY_BEAT_SCHEDULE = {
    "optout-outbox-sweep": {
        "task": "optout.outbox_sweep",
        "schedule": env_int("DEMUR_OUTBOX_SWEEP_SECONDS", 60, minimum=5),
    },
    # Starts due campaigns, expires late ones, settles dead workers' claims, restarts
    # stalled dispatch, completes finished campaigns (campaigns/dispatch.py).
    "campaigns-tick": {"task": "campaigns.tick", "schedule": env_int("DEMUR_CAMPAIGN_TICK_SECONDS", 10, minimum=1)},
    "campaigns-retention": {"task": "campaigns.retention", "schedule": 3600},
    # Verifies the whole ledger and records the outcome (optout.services.ledger_check_record):
    # a finding shows on the admin's index page and in /metrics (demur_ledger_problems).
    "optout-ledger-verify": {
        "task": "optout.ledger_verify",
        "schedule": env_int("DEMUR_LEDGER_VERIFY_SECONDS", 6 * 3600, minimum=60),
    },
    # Records how far the change feed is complete (optout.services.ledger_checkpoint): a
    # feed cursor read before the last checkpoint survives a restore of a backup taken
    # after it.
    "optout-ledger-checkpoint": {
        "task": "optout.ledger_checkpoint",
        "schedule": env_int("DEMUR_LEDGER_CHECKPOINT_SECONDS", 60, minimum=5),
    },
}

# --- Campaigns -----------------------------------------------------------------------------

# A recipient's email is erased this many days after their last campaign ended.
DEMUR_RECIPIENT_RETENTION_DAYS = env_int("DEMUR_RECIPIENT_RETENTION_DAYS", 180, minimum=1)
# Mails one dispatch task claims at a time (fewer when the campaign's rate is lower).
DEMUR_DISPATCH_BATCH = env_int("DEMUR_DISPATCH_BATCH", 200, minimum=1)
# Dispatch tasks each running campaign keeps in the queue (spread over all workers).
DEMUR_DISPATCH_PARALLELISM = env_int("DEMUR_DISPATCH_PARALLELISM", 4, minimum=1)
# Seconds a dispatch task sends before it hands over to a successor task (campaigns.tasks).
DEMUR_DISPATCH_TASK_SECONDS = env_int("DEMUR_DISPATCH_TASK_SECONDS", 20, minimum=1)
# The most mails a dispatch task hands to the backend between two writes of their
# outcomes (campaigns.dispatch, about 10 ms of the campaign's rate): fewer round trips to
# the database, more mails of unknown outcome when a worker dies mid-group.
DEMUR_DISPATCH_GROUP = env_int("DEMUR_DISPATCH_GROUP", 10, minimum=1)
# A delivery in "sending" longer than this (s) belongs to a dead worker. Workers give
# back a claim after half of it, so keep it well above EMAIL_TIMEOUT.
DEMUR_DELIVERY_CLAIM_TIMEOUT = env_int("DEMUR_DELIVERY_CLAIM_TIMEOUT", 300, minimum=1)
# Transient errors are retried with backoff until this many attempts.
DEMUR_DELIVERY_MAX_ATTEMPTS = env_int("DEMUR_DELIVERY_MAX_ATTEMPTS", 5, minimum=1)
# A campaign pauses itself when a batch of at least MIN mails fails at this rate (%).
DEMUR_CAMPAIGN_PAUSE_ERROR_PERCENT = env_int("DEMUR_CAMPAIGN_PAUSE_ERROR_PERCENT", 50, minimum=1)
DEMUR_CAMPAIGN_PAUSE_MIN_MAILS = env_int("DEMUR_CAMPAIGN_PAUSE_MIN_MAILS", 20, minimum=1)
# Dashboards (campaigns/dashboard.py) show a snapshot of the counts with its time; one
# older than this (s) is shown while a Celery task counts again.
DEMUR_DASHBOARD_MAX_AGE = env_int("DEMUR_DASHBOARD_MAX_AGE", 60, minimum=1)
# Rates (percent) from which the dashboards warn, ahead of the mail providers' limits:
# 0.3 % spam complaints (Gmail, Yahoo), 5 % bounces (Amazon SES puts the account under review).
try:
    DEMUR_COMPLAINT_RATE_WARNING = float(env_str("DEMUR_COMPLAINT_RATE_WARNING", "0.1"))
    DEMUR_BOUNCE_RATE_WARNING = float(env_str("DEMUR_BOUNCE_RATE_WARNING", "2"))
except ValueError:
    raise ImproperlyConfigured(
        "DEMUR_COMPLAINT_RATE_WARNING and DEMUR_BOUNCE_RATE_WARNING must be numbers (percent)."
    ) from None

# --- Mail --------------------------------------------------------------------------------

_email = env_url_config("EMAIL_URL", "filemail://", "email")
EMAIL_BACKEND = env_str("EMAIL_BACKEND", _email["EMAIL_BACKEND"])
EMAIL_HOST = _email.get("EMAIL_HOST") or "localhost"
EMAIL_PORT = _email.get("EMAIL_PORT") or 25
EMAIL_HOST_USER = _email.get("EMAIL_HOST_USER") or ""
EMAIL_HOST_PASSWORD = _email.get("EMAIL_HOST_PASSWORD") or ""
EMAIL_USE_TLS = bool(_email.get("EMAIL_USE_TLS"))
EMAIL_USE_SSL = bool(_email.get("EMAIL_USE_SSL"))
EMAIL_FILE_PATH = _email.get("EMAIL_FILE_PATH") or str(VAR_DIR / "mail")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Demur <privacy@localhost>")
# Seconds an SMTP connection may block; a dispatch claim outlives it (DEMUR_DELIVERY_CLAIM_TIMEOUT).
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 30, minimum=1)
SERVER_EMAIL = DEFAULT_FROM_EMAIL
# Provider credentials for django-anymail backends (EMAIL_BACKEND=anymail.backends.<esp>.EmailBackend).
ANYMAIL = {
    key.removeprefix("ANYMAIL_"): value for key, value in __import__("os").environ.items() if key.startswith("ANYMAIL_")
}

# --- Languages ---------------------------------------------------------------------------

LANGUAGE_CODE = "en"
LANGUAGES = [
    ("bg", _("Bulgarian")),
    ("cs", _("Czech")),
    ("da", _("Danish")),
    ("de", _("German")),
    ("el", _("Greek")),
    ("en", _("English")),
    ("es", _("Spanish")),
    ("et", _("Estonian")),
    ("fi", _("Finnish")),
    ("fr", _("French")),
    ("ga", _("Irish")),
    ("hr", _("Croatian")),
    ("hu", _("Hungarian")),
    ("is", _("Icelandic")),
    ("it", _("Italian")),
    ("lt", _("Lithuanian")),
    ("lv", _("Latvian")),
    ("mt", _("Maltese")),
    ("nb", _("Norwegian Bokmål")),
    ("nl", _("Dutch")),
    ("pl", _("Polish")),
    ("pt", _("Portuguese")),
    ("ro", _("Romanian")),
    ("sk", _("Slovak")),
    ("sl", _("Slovenian")),
    ("sv", _("Swedish")),
]
LOCALE_PATHS = [BASE_DIR / "locale"]
USE_I18N = True
USE_TZ = True
TIME_ZONE = "UTC"

# --- Static files --------------------------------------------------------------------------

STATIC_URL = "/static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "static")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# --- Auth and security ---------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

SECURE_REFERRER_POLICY = "no-referrer"
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# The public pages carry no inline script or style (django-csp). The admin and the API
# docs are left out: their bundled templates use inline code this policy would block.
CONTENT_SECURITY_POLICY = {
    # The admin adds its own scripts to this policy (config.admin.ADMIN_CSP); the API
    # answers JSON, and its docs page (/api/docs/) is drf-spectacular's Swagger UI page.
    "EXCLUDE_URL_PREFIXES": ["/api/"],
    "DIRECTIVES": {
        "default-src": ["'none'"],
        "style-src": ["'self'"],
        "img-src": ["'self'"],
        "form-action": ["'self'"],
        "base-uri": ["'none'"],
        "frame-ancestors": ["'none'"],
    },
}
CSRF_FAILURE_VIEW = "optout.views.csrf_failure"
SESSION_COOKIE_HTTPONLY = True
# Two-factor login (config.two_factor): the name authenticator apps show, and nobody,
# superusers included, reads another person's TOTP secret in the admin.
OTP_TOTP_ISSUER = "Demur"
OTP_ADMIN_HIDE_SENSITIVE_DATA = True
CSRF_COOKIE_HTTPONLY = True
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [SITE_URL] if SITE_URL.startswith("https") else [])

# --- API -----------------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": None,
    "EXCEPTION_HANDLER": "core.api.exception_handler",
}
# Requests per API key, for all endpoints together ("<n>/<second|minute|hour|day>").
DEMUR_API_THROTTLE_RATE = env_str("DEMUR_API_THROTTLE_RATE", "1200/minute")
SPECTACULAR_SETTINGS = {
    "TITLE": "Demur objection API",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Demur -------------------------------------------------------------------------------

DEMUR_DEFAULT_PURPOSE = "ai-training"
# How long the signed links in notices and receipts stay valid (seconds; 12 months).
DEMUR_LINK_MAX_AGE = env_int("DEMUR_LINK_MAX_AGE", 365 * 24 * 3600, minimum=60)
# The public form's verification link: single use, valid this long (seconds).
DEMUR_VERIFY_MAX_AGE = env_int("DEMUR_VERIFY_MAX_AGE", 30 * 60, minimum=60)
# Public form rate limits (django-ratelimit on the shared cache): per IP and per address.
DEMUR_FORM_RATE_IP = env_str("DEMUR_FORM_RATE_IP", "30/h")
DEMUR_FORM_RATE_EMAIL = env_str("DEMUR_FORM_RATE_EMAIL", "5/h")

# --- Operations ----------------------------------------------------------------------------

# /metrics answers a bearer token or these addresses; nobody else.
METRICS_TOKEN = env_str("METRICS_TOKEN")
METRICS_ALLOWED_IPS = env_list("METRICS_ALLOWED_IPS", ["127.0.0.1", "::1"])
# Behind a proxy, the request.META key that holds the client's address for rate limits
# (e.g. HTTP_X_REAL_IP, set by the proxy); unset: REMOTE_ADDR.
RATELIMIT_IP_META_KEY = env_str("RATELIMIT_IP_META_KEY") or None
# Admin login attempts allowed per address and per username (django-ratelimit rates).
DEMUR_ADMIN_LOGIN_RATE_IP = env_str("DEMUR_ADMIN_LOGIN_RATE_IP", "20/10m")
DEMUR_ADMIN_LOGIN_RATE_USER = env_str("DEMUR_ADMIN_LOGIN_RATE_USER", "5/10m")
# The admin warns when a transaction has held the change feed back longer than this (s).
DEMUR_FEED_STALL_WARNING = env_int("DEMUR_FEED_STALL_WARNING", 60, minimum=1)

# One JSON object per line (LOG_FORMAT=plain for a terminal), with the request id, and
# email addresses, tokens and keys masked (config.logs).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "config.logs.ContextFilter"}},
    "formatters": {
        "json": {
            "()": "config.logs.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(process)d %(request_id)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"},
        },
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["context"],
            "formatter": env_str("LOG_FORMAT", "json"),
        }
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
if LOGGING["handlers"]["console"]["formatter"] not in LOGGING["formatters"]:
    raise ImproperlyConfigured("LOG_FORMAT must be json or plain.")
