from __future__ import annotations

import os

from celery import Celery

from config import logs, metrics

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("demur")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
logs.connect_celery(app)
metrics.connect_celery(app)
