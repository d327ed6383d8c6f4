"""Fault drill, replays: Stripe webhooks and metering usage batches delivered twice, in shuffled order, mixed
with forged deliveries (bad signature, wrong or missing token, another supplier's token) and stale ones
(a signature outside the tolerance, usage after the grace period) must leave exactly the state one clean,
in-order delivery leaves: balances, journal, top-ups and payouts, usage rows, contract states.

Each test builds its world once, then runs the clean delivery inside a savepoint, takes a snapshot and rolls
it back, and does the same for each chaotic order (seeded; DRILL_REPLAY_SEEDS, default 3, runs more). Row ids
made before the savepoint are the same in every run, so the snapshots compare as they are.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import time
from collections import Counter

import pytest
from django.db import transaction
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from ledger.models import Account, JournalEntry, Payout, Posting, ProviderEvent, TopUp
from ledger.payments import services as payments
from ledger.verify import ledger_verify
from tests.factories import OrganisationFactory
from tests.ledger.payments_helpers import event, fake_stripe, fund, paid_session, sign
from tests.vouchers import conftest as voucher_fixtures
from tests.vouchers.conftest import more_contract, programme, voucher_for

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]
deal, authority = voucher_fixtures.deal, voucher_fixtures.authority  # the vouchers (and metering) tests' fixtures
SEEDS = range(int(os.environ.get("DRILL_REPLAY_SEEDS", "3")))
WEBHOOK = "/api/v1/ledger/webhooks/stripe/"


class _Rollback(Exception):
    pass


def in_savepoint(run) -> object:
    """Run `run()` and return its snapshot, then undo everything it wrote."""
    out = None
    try:
        with transaction.atomic():
            out = run()
            raise _Rollback
    except _Rollback:
        pass
    return out


def journal_since(entry_id: int) -> tuple[Counter, dict[int, int]]:
    """Entries after `entry_id`: how many of each (kind, reference), and their net effect on each account.
    (Amounts of single entries may differ with the order of deliveries; what they add up to may not.)"""
    entries = Counter(JournalEntry.objects.filter(pk__gt=entry_id).values_list("kind", "reference"))
    net: dict[int, int] = {}
    for account_id, amount in Posting.objects.filter(entry_id__gt=entry_id).values_list("account_id", "amount_fen"):
        net[account_id] = net.get(account_id, 0) + amount
    return entries, {k: v for k, v in net.items() if v}


def _last_entry() -> int:
    return JournalEntry.objects.order_by("-pk").values_list("pk", flat=True).first() or 0


# --- Stripe webhooks -------------------------------------------------------------------------------------

def test_stripe_webhooks_twice_shuffled_forged_and_stale_end_as_one_clean_delivery():
    buyer, supplier = OrganisationFactory(kind="buyer"), OrganisationFactory(kind="supplier")
    with fake_stripe():
        top_ups = [payments.top_up_create(organisation=buyer, amount_fen=amount, idempotency_key=f"t{n}", provider="stripe")[0]
                   for n, amount in enumerate((20_000, 35_000, 10_000))]
        paid, paid_later, expired = top_ups
        fund(supplier, 50_000, provider="stripe")
        payout, _ = payments.payout_request(organisation=supplier, amount_fen=30_000, destination="acct_1Qsupplier",
                                            idempotency_key="p", provider="stripe")
        assert payout.status == "paid"

        def intent(top_up, pi: str) -> dict:
            return {"id": pi, "object": "payment_intent", "amount_received": top_up.amount_fen, "currency": "cny",
                    "metadata": {"top_up_id": str(top_up.pk), "organisation_id": str(buyer.pk)}}

        reversed_transfer = {"id": payout.provider_reference, "object": "transfer", "amount": 30_000, "currency": "cny",
                             "reversed": True, "amount_reversed": 30_000, "metadata": {"payout_id": str(payout.pk)}}
        # What Stripe says, in the order it happened: each event once.
        clean = [
            event("checkout.session.completed", paid_session(paid, intent="pi_paid"), "evt_paid"),
            event("payment_intent.succeeded", intent(paid, "pi_paid"), "evt_paid_intent"),
            event("checkout.session.completed", paid_session(paid_later, payment_status="unpaid", intent="pi_later"), "evt_later_open"),
            event("checkout.session.async_payment_succeeded", paid_session(paid_later, intent="pi_later"), "evt_later_paid"),
            event("checkout.session.expired", {**paid_session(expired, payment_status="unpaid", intent=""), "status": "expired"}, "evt_expired"),
            event("transfer.reversed", reversed_transfer, "evt_reversed"),
            event("customer.created", {"id": "cus_1", "object": "customer"}, "evt_other"),
        ]
        # What an attacker (or a broken proxy) sends: each would credit the expired top-up if it were believed.
        stolen = event("checkout.session.completed", paid_session(expired, intent="pi_stolen"), "evt_forged")
        now = int(time.time())
        tampered = clean[0].replace('"amount_total": 20000', '"amount_total": 2000000').replace("evt_paid", "evt_tampered")
        forged = [
            (stolen, sign(stolen, secret="whsec_someone_else")),  # signed with another secret
            (stolen, None),  # no signature at all
            (stolen, f"t={now},v1={'0' * 64}"),  # a made-up signature
            (tampered, sign(clean[0])),  # a genuine signature over a different body
            (stolen, sign(stolen, timestamp=now - 301)),  # stale: outside the 300 s tolerance
            (stolen, sign(stolen, timestamp=now + 3600)),  # from the future
            (clean[0], sign(clean[0], timestamp=now - 3600)),  # a genuine event replayed with its old signature
        ]
        assert {json.loads(p)["id"] for p, _ in forged} == {"evt_forged", "evt_tampered", "evt_paid"}

        def snapshot() -> dict:
            return {
                "balances": dict(Account.objects.filter(pk__in=accounts).values_list("pk", "balance_fen")),
                "top_ups": list(TopUp.objects.order_by("pk").values_list("pk", "status", "entry__idempotency_key", "payment_intent", "refunded_fen")),
                "payouts": list(Payout.objects.order_by("pk").values_list("pk", "status", "failure_reason")),
                "events": sorted(ProviderEvent.objects.values_list("event_id", "event_type")),
                "journal": journal_since(mark),
                "verified": ledger_verify().problems,
            }

        client = APIClient()  # one client: each new one scans the static files (whitenoise)

        def deliver(payload: str, signature: str | None) -> int:
            headers = {"HTTP_STRIPE_SIGNATURE": signature} if signature is not None else {}
            return client.post(WEBHOOK, data=payload, content_type="application/json", **headers).status_code

        def clean_run() -> dict:
            assert [deliver(p, sign(p)) for p in clean] == [200] * len(clean)
            return snapshot()

        def chaotic_run(seed: int) -> dict:
            rng = random.Random(seed)
            deliveries = [(p, "", False) for p in clean * 2] + [(p, s, True) for p, s in forged]
            rng.shuffle(deliveries)
            for payload, signature, is_forged in deliveries:
                status = deliver(payload, signature if is_forged else sign(payload))  # genuine ones signed when sent
                assert status == (400 if is_forged else 200), (seed, json.loads(payload)["id"], status)
            return snapshot()

        accounts = [a.pk for org in (buyer, supplier) for a in Account.objects.filter(organisation=org)]
        accounts += list(Account.objects.filter(organisation=None).values_list("pk", flat=True))
        mark = _last_entry()
        expected = in_savepoint(clean_run)
        # The clean delivery did what Stripe's story says: two top-ups credited once each, one failed, the
        # reversed payout back in the supplier's wallet; and the forged events were never stored.
        assert [t[1] for t in expected["top_ups"]] == ["succeeded", "succeeded", "failed"]
        assert expected["payouts"][0][1] == "failed" and len(expected["events"]) == len(clean)
        assert expected["verified"] == []
        for seed in SEEDS:
            assert in_savepoint(lambda seed=seed: chaotic_run(seed)) == expected, f"seed {seed}"


# --- Metering usage batches ------------------------------------------------------------------------------

def _token(user) -> str:
    return Token.objects.create(user=user).key


_client = APIClient()  # one client: each new one scans the static files (whitenoise)


def _post(token: str | None, events: list[dict]):
    client = _client
    client.credentials(**({"HTTP_AUTHORIZATION": f"Token {token}"} if token is not None else {}))
    return client.post("/api/v1/metering/events/", {"events": events}, format="json")


def test_usage_batches_twice_shuffled_forged_and_stale_end_as_one_clean_delivery(deal, authority, api):
    from exchange.models import Contract
    from metering import services as metering
    from metering.models import ContractDelivery, UsageEvent
    from tests.factories import member
    from vouchers import services as vouchers
    from vouchers.models import Redemption

    second = more_contract(deal, api, lots=10, tag="drill")
    contracts = [deal["contract"], second]
    # The buyer's voucher pays 20% of the first contract as it is delivered: its money moves with every release.
    voucher_for(authority, deal["buyer"], programme(authority, rate_bps=2000), amount_fen=100_000)
    assert vouchers.redemption_commit(contract_id=contracts[0].pk).committed_fen == 3000
    window = deal["window_start"]
    settle_at = window + dt.timedelta(days=1) + metering.grace_period() + dt.timedelta(minutes=1)

    def usage(c, n: int, *, minutes: int, devices: int = 1, hours: float = 0.5, **extra) -> dict:
        start = window + dt.timedelta(minutes=minutes)
        return {"event_id": f"drill-{c.pk}-{n}", "contract": c.pk, "data_centre": deal["dc"].pk, "device_model": deal["h100"].pk,
                "start": start.isoformat(), "end": (start + dt.timedelta(hours=hours)).isoformat(), "device_count": devices, **extra}

    # Four batches as the supplier's agent would send them, out of order within and across contracts; about
    # 6 of each contract's 10 units delivered, so no event is capped and each batch moves money.
    batches = [
        [usage(contracts[0], n, minutes=30 * n, devices=2, energy_kwh="0.700") for n in range(0, 4)] + [usage(contracts[1], 0, minutes=0, devices=3)],
        [usage(contracts[1], n, minutes=30 * n, devices=3) for n in range(1, 4)],
        [usage(contracts[0], n, minutes=30 * n, devices=2, utilisation_pct=88.5) for n in range(6, 4, -1)] + [usage(contracts[1], 4, minutes=120, devices=2)],
        [usage(contracts[0], 4, minutes=120, devices=2), usage(contracts[1], 5, minutes=150, devices=1, hours=1)],
    ]
    supplier_token = _token(deal["seller_user"])
    buyer_token = _token(deal["buyer_user"])
    viewer_token = _token(member(deal["supplier"], role="viewer", username="supplier-viewer"))
    rival = OrganisationFactory(name="Rival Compute Co., Ltd.", kind="supplier")
    rival_token = _token(member(rival, role="trader", username="rival-trader"))
    mark = _last_entry()
    orgs = [deal["buyer"].pk, deal["supplier"].pk]
    accounts = list(Account.objects.filter(organisation_id__in=orgs).values_list("pk", flat=True))
    accounts += list(Account.objects.filter(organisation=None).values_list("pk", flat=True))

    def snapshot() -> dict:
        return {
            "balances": dict(Account.objects.filter(pk__in=accounts).values_list("pk", "balance_fen")),
            "deliveries": list(ContractDelivery.objects.order_by("pk").values_list(
                "pk", "status", "delivered_micro", "events", "released_fen", "fee_fen", "refunded_fen", "delivery_ratio")),
            "contracts": list(Contract.objects.order_by("pk").values_list("pk", "status")),
            "usage": sorted(UsageEvent.objects.values_list(
                "supplier_id", "event_id", "contract_id", "units_micro", "credited_micro", "device_seconds", "energy_kwh",
                "energy_estimated", "utilisation_pct")),
            "redemptions": list(Redemption.objects.order_by("pk").values_list("pk", "status", "committed_fen", "paid_fen", "released_fen", "flags")),
            "reputation": list(type(deal["supplier"]).objects.filter(pk__in=orgs).order_by("pk").values_list("pk", "delivery_ratio")),
            "journal": journal_since(mark),
            "verified": ledger_verify().problems,
        }

    def accepted(response, n: int | None = None) -> None:
        assert response.status_code == 200, response.content[:300]
        body = response.json()
        assert body["rejected"] == 0, body
        if n is not None:
            assert body["accepted"] == n, body

    def clean_run() -> dict:
        for batch in batches:
            accepted(_post(supplier_token, batch), len(batch))
        assert metering.deliveries_settle_due(now=settle_at)["settled"] == 2
        return snapshot()

    def chaotic_run(seed: int) -> dict:
        rng = random.Random(seed)
        deliveries: list[tuple[str, list[dict]]] = [("twice", b) for b in batches * 2]
        # Forged: a made-up token, none at all, the supplier's viewer and the buyer (may not submit), a rival
        # supplier's token (the contract is not its sale). Believed, it would deliver most of the contract.
        stolen = [usage(contracts[0], 99, minutes=600, devices=10, hours=1)]
        deliveries += [(kind, stolen) for kind in ("bad-token", "no-token", "viewer", "buyer", "rival")]
        # Usage that cannot have happened yet (the window began 12 h ago; this ends 90 minutes from now).
        deliveries.append(("future", [usage(contracts[1], 98, minutes=12 * 60 + 30, devices=1, hours=1)]))
        rng.shuffle(deliveries)
        # A batch may also be split and reordered by a retrying agent: shuffle inside one copy of each.
        deliveries = [(kind, rng.sample(b, len(b)) if kind == "twice" and rng.random() < 0.5 else b) for kind, b in deliveries]
        for kind, batch in deliveries:
            if kind == "twice":
                r = _post(supplier_token, batch)
                assert r.status_code == 200 and r.json()["rejected"] == 0, r.json()
            elif kind == "bad-token":
                assert _post("0" * 40, batch).status_code in (401, 403)
            elif kind == "no-token":
                assert _post(None, batch).status_code in (401, 403)
            elif kind in ("viewer", "buyer"):  # a supplier's viewer, a buyer organisation: may not submit
                assert _post(viewer_token if kind == "viewer" else buyer_token, batch).status_code == 403
            elif kind == "rival":  # a contract that is not your sale is unknown to you
                r = _post(rival_token, batch)
                assert r.status_code == 200 and [x["reason"] for x in r.json()["results"]] == ["unknown_contract"]
            elif kind == "future":
                r = _post(supplier_token, batch)
                assert r.status_code == 200 and [x["reason"] for x in r.json()["results"]] == ["in_future"]
        assert metering.deliveries_settle_due(now=settle_at)["settled"] == 2
        # Stale: everything again after settlement and past the grace period (an agent rerun days later),
        # plus usage never sent before: stored events are duplicates, new ones are late; nothing moves.
        ids = {deal["supplier"].pk}
        for batch in rng.sample(batches, len(batches)):
            out = metering.usage_batch_ingest(supplier_ids=ids, events=batch, now=settle_at + dt.timedelta(days=2))
            assert (out.accepted, out.duplicates) == (0, len(batch))
        late = metering.usage_batch_ingest(supplier_ids=ids, events=stolen, now=settle_at + dt.timedelta(days=2))
        assert [x["reason"] for x in late.results] == ["late"]
        assert metering.deliveries_settle_due(now=settle_at + dt.timedelta(days=2)) == {"settled": 0, "suppliers": 0}
        return snapshot()

    expected = in_savepoint(clean_run)
    assert [d[1] for d in expected["deliveries"]] == ["settled", "settled"]
    assert len(expected["usage"]) == sum(len(b) for b in batches)
    assert expected["redemptions"][0][1] == "settled" and expected["redemptions"][0][3] > 0  # the voucher paid its share
    assert expected["verified"] == []
    for seed in SEEDS:
        assert in_savepoint(lambda seed=seed: chaotic_run(seed)) == expected, f"seed {seed}"
