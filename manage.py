#!/usr/bin/env python
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    # A developer's shell with neither DEBUG nor SECRET_KEY set gets the quick start's local
    # defaults. Deployments set SECRET_KEY (and DEBUG=false), so this never applies there;
    # gunicorn and Celery do not come through here.
    if "DEBUG" not in os.environ and "SECRET_KEY" not in os.environ:
        os.environ["DEBUG"] = "true"
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
