import pytest
from django.conf import settings

from config.scheduler import run_due
from marketplace.models import Instrument
from tests.factories import ProductFactory


@pytest.mark.django_db
def test_embedded_scheduler_runs_the_periodic_jobs_when_due():
    ProductFactory(code="AI-TRAIN", list_ahead_days=2)
    next_run: dict[str, float] = {}
    # Every periodic job runs at first (apps add their own to settings.PERIODIC_TASKS), then each at its interval.
    assert run_due(next_run, now=1000.0) == list(settings.PERIODIC_TASKS)
    assert Instrument.objects.filter(status="open").count() == 2
    assert run_due(next_run, now=1001.0) == []  # not due again for 60 s
    assert run_due(next_run, now=1061.0) == [name for name, every in settings.PERIODIC_TASKS.items() if every <= 61]
    assert "marketplace.tasks.instruments_roll" in settings.PERIODIC_TASKS
