"""The Celery app. Embedded default: tasks run eagerly in-process; with REDIS_URL they go to the broker.

Production runs `celery -A config worker` and `celery -A config beat`; the beat schedule is built from
settings.PERIODIC_TASKS so the embedded scheduler and beat run the same jobs.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("suanli")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_finalize.connect
def _install_beat_schedule(sender: Celery, **_: object) -> None:
    from django.conf import settings

    sender.conf.beat_schedule = {
        name: {"task": name, "schedule": float(seconds)} for name, seconds in settings.PERIODIC_TASKS.items()
    }
