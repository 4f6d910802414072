"""Bench-only settings for bench/optout_pages.py: production settings plus a URLconf
that adds a trivial insert-one-row view as the baseline. Never used by the app."""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.optout_urls"
