"""WSGI entry point for REST under a process-per-request server (gunicorn) when scaling out."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

from common.collector import tune_for_serving  # noqa: E402
from ledger.payments.base import announce as announce_payments  # noqa: E402

announce_payments()
tune_for_serving()  # last: what start-up built is frozen out of the collector's scans (common/collector.py)
