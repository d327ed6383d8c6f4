"""API keys over REST: created with the secret shown once, stored hashed, revocable; scopes limit what a key
may do (read / trade / withdraw) and never add to what its user may do."""

import datetime as dt
import hashlib

import pytest
from django.test import override_settings
from django.utils import timezone

from apikeys.models import ApiKey
from apikeys.services import api_key_create
from exchange.models import Order
from ledger.models import Payout
from ledger.selectors import balances_get
from tests.exchange.conftest import market_setup  # noqa: F401  (fixture)
from tests.factories import UserFactory
from tests.ledger.payments_helpers import cast, fund, ledger_snapshot

pytestmark = pytest.mark.django_db
KEYS = "/api/v1/api-keys/"
ORDERS = "/api/v1/orders/"
PAYOUTS = "/api/v1/ledger/payouts/"


def key_for(user, *scopes, **fields) -> str:
    return api_key_create(user=user, name="bot", scopes=list(scopes), **fields)[1]


def as_key(api, key: str, scheme: str = "Api-Key"):
    api.credentials(HTTP_AUTHORIZATION=f"{scheme} {key}")
    return api


def order_body(market, cid="k1"):
    return {"instrument": market["instrument"].pk, "side": "buy", "price": "15.00", "quantity": 1, "client_order_id": cid}


# --- create, list, revoke --------------------------------------------------------------------------------

def test_a_key_is_shown_once_in_the_creation_answer_and_only_its_hash_is_stored(api):
    user = UserFactory()
    api.force_authenticate(user)
    created = api.post(KEYS, {"name": "trading bot", "scopes": ["trade"]})
    assert created.status_code == 201, created.json()
    body = created.json()
    key = body["key"]
    assert key.startswith(body["prefix"]) and body["prefix"].startswith("sl_") and len(key) > 50
    assert (body["name"], body["scopes"], body["active"], body["revoked_at"]) == ("trading bot", ["read", "trade"], True, None)
    assert created["Cache-Control"] == "no-store"

    row = ApiKey.objects.get()
    secret = key.split("_", 2)[2]
    assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert not any(secret in str(value) for value in ApiKey.objects.values().get().values())

    listed = api.get(KEYS).json()["results"]
    assert [k["id"] for k in listed] == [body["id"]] and "key" not in listed[0]
    assert "key" not in api.get(f"{KEYS}{body['id']}/").json()


def test_bad_input_is_refused_with_field_messages_and_nothing_is_created(api):
    api.force_authenticate(UserFactory())
    past = (timezone.now() - dt.timedelta(minutes=1)).isoformat()
    for body, field in (({"scopes": ["read"]}, "name"), ({"name": "x", "scopes": ["admin"]}, "scopes"),
                        ({"name": "x", "expires_at": past}, "expires_at"), ({"name": "x", "owner": 3}, "owner")):
        response = api.post(KEYS, body)
        assert response.status_code == 400 and field in response.json(), (body, response.json())
    assert not ApiKey.objects.exists()


def test_revoke_by_delete_or_post_and_nobody_sees_or_revokes_anothers_key(api):
    owner, other = UserFactory(), UserFactory()
    first, second = (api_key_create(user=owner, name=n, scopes=["read"])[0] for n in ("a", "b"))
    api.force_authenticate(other)
    assert api.get(KEYS).json()["results"] == []
    assert api.delete(f"{KEYS}{first.pk}/").status_code == 404
    assert api.post(f"{KEYS}{second.pk}/revoke/").status_code == 404
    assert ApiKey.objects.filter(revoked_at__isnull=False).count() == 0

    api.force_authenticate(owner)
    assert api.delete(f"{KEYS}{first.pk}/").status_code == 204
    revoked = api.post(f"{KEYS}{second.pk}/revoke/")
    assert revoked.status_code == 200 and revoked.json()["active"] is False and revoked.json()["revoked_at"]
    stamp = ApiKey.objects.get(pk=second.pk).revoked_at
    assert api.post(f"{KEYS}{second.pk}/revoke/").status_code == 200
    assert ApiKey.objects.get(pk=second.pk).revoked_at == stamp  # revoking again changes nothing
    assert ApiKey.objects.filter(revoked_at__isnull=True).count() == 0


def test_a_key_cannot_create_or_revoke_keys(api):
    user = UserFactory()
    key = key_for(user, "trade", "withdraw")
    row = ApiKey.objects.get()
    as_key(api, key)
    assert api.get(KEYS).status_code == 200
    assert api.post(KEYS, {"name": "child", "scopes": ["withdraw"]}).status_code == 403
    assert api.delete(f"{KEYS}{row.pk}/").status_code == 403
    assert ApiKey.objects.count() == 1 and ApiKey.objects.get().revoked_at is None


# --- authentication ----------------------------------------------------------------------------------------

def test_only_a_live_key_of_an_active_user_authenticates(api):
    user = UserFactory()
    good = key_for(user)
    assert as_key(api, good).get(KEYS).status_code == 200
    assert as_key(api, good, "Bearer").get(KEYS).status_code == 200
    prefix, secret = good.split("_", 2)[1:]
    tampered = f"sl_{prefix}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
    expired = key_for(user, expires_at=timezone.now() + dt.timedelta(seconds=30))
    ApiKey.objects.filter(expires_at__isnull=False).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    for bad in (tampered, "sl_000000000000_" + "x" * 43, "sl_garbage", expired):
        response = as_key(api, bad).get(KEYS)
        assert response.status_code == 401, bad
        assert response["WWW-Authenticate"] in ("Token", "Api-Key")
    user.is_active = False
    user.save()
    assert as_key(api, good).get(KEYS).status_code == 401
    user.is_active = True
    user.save()
    revoked = ApiKey.objects.filter(expires_at__isnull=True).get()
    revoked.revoked_at = timezone.now()
    revoked.save()
    assert as_key(api, good).get(KEYS).status_code == 401


@override_settings(API_KEY_LAST_USED_SECONDS=60)
def test_last_used_is_written_at_most_once_a_minute(api):
    key = key_for(UserFactory())
    assert ApiKey.objects.get().last_used_at is None
    as_key(api, key).get(KEYS)
    first = ApiKey.objects.get().last_used_at
    assert first is not None
    as_key(api, key).get(KEYS)
    assert ApiKey.objects.get().last_used_at == first
    ApiKey.objects.update(last_used_at=first - dt.timedelta(seconds=61))
    as_key(api, key).get(KEYS)
    assert ApiKey.objects.get().last_used_at > first


# --- scopes ------------------------------------------------------------------------------------------------

def test_a_read_key_reads_but_places_no_order(api, market_setup):  # noqa: F811
    key = key_for(market_setup["buyer_user"], "read")
    as_key(api, key)
    assert api.get(ORDERS).status_code == 200
    refused = api.post(ORDERS, order_body(market_setup))
    assert refused.status_code == 403 and "trade" in refused.json()["detail"]
    assert not Order.objects.exists()


def test_a_trading_key_places_and_cancels_orders(api, market_setup):  # noqa: F811
    as_key(api, key_for(market_setup["buyer_user"], "trade"))
    placed = api.post(ORDERS, order_body(market_setup))
    assert placed.status_code == 201, placed.json()
    assert api.delete(f"{ORDERS}{placed.json()['id']}/").status_code in (200, 202)
    assert Order.objects.get().status == "cancelled"


def test_a_trading_key_cannot_withdraw_and_a_withdraw_key_can():
    from rest_framework.test import APIClient

    people = cast()
    fund(people.supplier, 50_000)
    before = ledger_snapshot()
    trading = as_key(APIClient(), key_for(people.supplier_admin, "trade"))
    refused = trading.post(PAYOUTS, {"amount": "100", "destination": "bank"}, HTTP_IDEMPOTENCY_KEY="p1")
    assert refused.status_code == 403 and "withdraw" in refused.json()["detail"]
    assert not Payout.objects.exists() and ledger_snapshot() == before

    withdrawing = as_key(APIClient(), key_for(people.supplier_admin, "withdraw"))
    assert withdrawing.get(PAYOUTS).status_code == 200
    created = withdrawing.post(PAYOUTS, {"amount": "100", "destination": "bank"}, HTTP_IDEMPOTENCY_KEY="p1")
    assert created.status_code == 201, created.json()
    assert balances_get(organisation=people.supplier)["held"] == 10_000


def test_a_key_never_has_more_rights_than_its_user():
    """A trader may not request payouts (admins do): a withdraw key of a trader is refused like the trader."""
    from rest_framework.test import APIClient

    people = cast()
    fund(people.supplier, 50_000)
    key = as_key(APIClient(), key_for(people.supplier_trader, "trade", "withdraw"))
    response = key.post(PAYOUTS, {"amount": "100", "destination": "bank"}, HTTP_IDEMPOTENCY_KEY="p2")
    assert response.status_code == 403 and "role" in response.json()["detail"]
    assert not Payout.objects.exists()


def test_the_account_token_keeps_the_users_full_rights():
    """/api/v1/auth/token/ is the interactive credential: no scopes, the user's roles decide."""
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    people = cast()
    fund(people.supplier, 50_000)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=people.supplier_admin).key}")
    assert client.post(PAYOUTS, {"amount": "1", "destination": "bank"}, HTTP_IDEMPOTENCY_KEY="p3").status_code == 201
    assert client.post(KEYS, {"name": "made with the token", "scopes": ["read"]}).status_code == 201
