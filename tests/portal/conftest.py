import pytest

from tests.portal.world import world_build


@pytest.fixture
def world(db):
    return world_build()


@pytest.fixture
def traded(world, api):
    """The supplier sells 3 lots at 15.00 and the buyer lifts them: one trade, one contract."""
    for user, side, extra in ((world["seller_user"], "sell", {"listing": world["listing"].pk}), (world["buyer_user"], "buy", {})):
        api.force_authenticate(user)
        r = api.post("/api/v1/orders/", {"instrument": world["instrument"].pk, "side": side, "price": "15.00", "quantity": 3,
                                         "client_order_id": f"t-{side}", **extra}, format="json")
        assert r.status_code in (200, 201), r.json()
    api.force_authenticate(None)
    return world
