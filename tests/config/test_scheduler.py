import pytest

from config.scheduler import run_due
from marketplace.models import Instrument
from tests.factories import ProductFactory


@pytest.mark.django_db
def test_embedded_scheduler_runs_the_periodic_jobs_when_due():
    ProductFactory(code="AI-TRAIN", list_ahead_days=2)
    next_run: dict[str, float] = {}
    assert run_due(next_run, now=1000.0) == ["marketplace.tasks.instruments_roll"]
    assert Instrument.objects.filter(status="open").count() == 2
    assert run_due(next_run, now=1001.0) == []  # not due again for 60 s
    assert run_due(next_run, now=1061.0) == ["marketplace.tasks.instruments_roll"]
