"""Demo metering step: simulated usage for started contracts, idempotent."""

import pytest

from common.demo import SeedContext
from metering.demo import meter_started_contracts
from metering.models import ContractDelivery, UsageEvent

pytestmark = pytest.mark.django_db


def test_demo_step_meters_started_contracts_once(deal):
    ctx = SeedContext(password=None)
    meter_started_contracts(ctx)
    # The window started 12 hours ago: 12 hourly readings of one H100 busy 0.95 x 10 / 24 / 0.989 h = 1440 s (rounded down).
    assert UsageEvent.objects.filter(contract=deal["contract"]).count() == 12
    d = ContractDelivery.objects.get(pk=deal["contract"].pk)
    assert (d.status, d.delivered_micro) == ("delivering", 12 * (1440 * 98900 // 360))
    assert "12 usage events" in ctx.notes[0]
    again = SeedContext(password=None)
    meter_started_contracts(again)
    assert again.created == 0
    assert ContractDelivery.objects.get(pk=deal["contract"].pk).delivered_micro == 12 * (1440 * 98900 // 360)
