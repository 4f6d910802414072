"""Bench-only URLs: every production URL, plus the baseline view of
bench/optout_pages.py. Not reachable in production (config/urls.py never includes it)."""

from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.urls import path

from config.urls import urlpatterns as production_urlpatterns


def insert_one_row(request: HttpRequest) -> HttpResponse:
    """The baseline: same middleware (sessions, locale, CSRF ...), one INSERT, a tiny answer."""
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO bench_optout_baseline DEFAULT VALUES")
    return HttpResponse("ok", content_type="text/plain")


urlpatterns = [path("bench/insert-one-row/", insert_one_row), *production_urlpatterns]
