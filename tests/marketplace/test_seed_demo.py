import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command

from ledger.selectors import balances_get
from ledger.verify import ledger_verify
from marketplace.models import DataCentre, Instrument, Listing, Organisation, Product, User

pytestmark = pytest.mark.django_db


def counts():
    return {m.__name__: m.objects.count() for m in (User, Organisation, DataCentre, Product, Instrument, Listing)}


def test_seed_demo_builds_a_market_and_running_it_again_duplicates_nothing():
    call_command("seed_demo", stdout=open("/dev/null", "w"))
    first = counts()
    call_command("seed_demo", stdout=open("/dev/null", "w"))
    assert counts() == first

    suppliers = Organisation.objects.filter(kind="supplier")
    buyers = Organisation.objects.filter(kind="buyer")
    assert suppliers.count() >= 6 and buyers.count() >= 6
    assert all(b.is_sme for b in buyers)
    regions = set(DataCentre.objects.values_list("region", flat=True))
    assert {"qingpu", "lingang", "g60_songjiang", "jinshan"} <= regions
    assert len(regions & {"ningxia_zhongwei", "guizhou_guian", "gansu_qingyang", "inner_mongolia_hohhot", "chengdu_chongqing"}) >= 2
    assert DataCentre.objects.filter(devices__device_model__is_domestic=True).exists()
    assert DataCentre.objects.filter(devices__device_model__is_domestic=False).exists()
    # Instruments for the next 7 days for every product, and every product has capacity listed.
    for product in Product.objects.all():
        days = {i.delivery_start.date() for i in product.instruments.all()}
        assert len(days) >= 7, product.code
        assert product.listings.filter(is_active=True).exists(), product.code
    for name in [f"supplier{i}" for i in range(1, 7)] + [f"buyer{i}" for i in range(1, 7)] + ["authority", "regulator", "operator"]:
        assert authenticate(username=name, password="suanli-demo") is not None, name
    assert User.objects.get(username="regulator").platform_role == "regulator"
    assert User.objects.get(username="supplier3").memberships.get().organisation.kind == "supplier"
    # Buyers are funded once, through the ledger, and the ledger verifies.
    for buyer in buyers:
        assert balances_get(organisation=buyer)["available"] > 0
    assert ledger_verify().ok


def test_password_option_sets_every_demo_password():
    call_command("seed_demo", stdout=open("/dev/null", "w"))
    call_command("seed_demo", "--password", "another-pass-42", stdout=open("/dev/null", "w"))
    assert authenticate(username="buyer4", password="another-pass-42") is not None
    assert authenticate(username="operator", password="suanli-demo") is None
