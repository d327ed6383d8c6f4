"""WSGI entry point for REST under a process-per-request server (gunicorn) when scaling out."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

from ledger.payments.base import announce as announce_payments  # noqa: E402

announce_payments()
