"""In-process periodic jobs for the embedded default (production uses `celery beat`).

One daemon thread runs each task in settings.PERIODIC_TASKS at its interval. Tasks are idempotent, so a
late or repeated run is harmless; a failing run is logged and retried at the next interval.
"""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import close_old_connections
from django.utils.module_loading import import_string

log = logging.getLogger(__name__)
_started = threading.Event()


def start_embedded_scheduler() -> bool:
    """Start the scheduler thread once per process; returns whether this call started it."""
    if not settings.EMBEDDED_SCHEDULER or _started.is_set():
        return False
    _started.set()
    thread = threading.Thread(target=_loop, name="suanli-scheduler", daemon=True)
    thread.start()
    return True


def run_due(next_run: dict[str, float], now: float) -> list[str]:
    """Run every task whose time has come (tasks are named by their dotted path); returns their names."""
    ran = []
    for name, interval in settings.PERIODIC_TASKS.items():
        if now >= next_run.get(name, 0.0):
            next_run[name] = now + interval
            try:
                import_string(name).apply(throw=True)
                ran.append(name)
            except Exception:  # a failing job must not stop the others
                log.exception("periodic task %s failed", name)
    return ran


def _loop() -> None:
    next_run: dict[str, float] = {}
    while True:
        # Like a request: drop a connection that broke or aged out, before and after the jobs.
        close_old_connections()
        try:
            run_due(next_run, time.monotonic())
        finally:
            close_old_connections()
        time.sleep(1.0)
