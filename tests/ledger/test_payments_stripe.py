"""Stripe with the real `stripe` library against a local Stripe-shaped HTTP server: what we send, what we
store, and that a refused call leaves nothing half-written."""

import pytest

from ledger.models import HoldStatus, PayoutStatus, TopUp, TopUpStatus
from ledger.payments import services
from ledger.payments.base import PaymentError, ProviderError
from ledger.selectors import balances_get
from tests.ledger.payments_helpers import cast, clearing_balance, fake_stripe, fund, ledger_snapshot

pytestmark = pytest.mark.django_db
TOP_UPS = "/api/v1/ledger/top-ups/"
PAYOUTS = "/api/v1/ledger/payouts/"


@pytest.fixture
def stripe_api():
    with fake_stripe() as fake:
        yield fake


@pytest.fixture
def people():
    return cast()


def _credited_top_up(people, amount_fen: int = 50_000) -> TopUp:
    top_up, _ = services.top_up_create(organisation=people.buyer, amount_fen=amount_fen, idempotency_key="tu-1", provider="stripe")
    return services.top_up_credit(top_up=top_up, payment_intent="pi_test_9")


def test_top_up_creates_a_checkout_session_and_credits_nothing_yet(api, people, stripe_api):
    # given a buyer's trader
    api.force_authenticate(people.buyer_trader)
    # when they top up 1,234.56 CNY
    response = api.post(TOP_UPS, {"amount": "1234.56"}, HTTP_IDEMPOTENCY_KEY="k-1")
    # then Stripe got one Checkout Session for 123456 fen in CNY, tagged with the top-up and organisation
    assert response.status_code == 201, response.json()
    body = response.json()
    (sent,) = stripe_api.posts("/v1/checkout/sessions")
    assert sent.form["mode"] == "payment"
    assert sent.form["line_items[0][price_data][unit_amount]"] == "123456"
    assert sent.form["line_items[0][price_data][currency]"] == "cny"
    assert sent.form["line_items[0][quantity]"] == "1"
    assert sent.form["metadata[top_up_id]"] == str(body["id"])
    assert sent.form["metadata[organisation_id]"] == str(people.buyer.pk)
    assert sent.form["payment_intent_data[metadata][top_up_id]"] == str(body["id"])
    assert sent.form["client_reference_id"] == f"topup-{body['id']}"
    assert sent.form["success_url"].startswith("http://127.0.0.1:8000/")
    assert sent.headers["idempotency-key"].startswith(f"suanli-topup-{body['id']}-")
    assert sent.headers["authorization"] == "Bearer sk_test_suanli"
    # and the top-up is pending with the session's id and url; the wallet is untouched
    assert body["provider"] == "stripe" and body["status"] == "pending"
    assert body["amount"] == "1234.56" and body["amount_fen"] == 123456
    assert body["provider_reference"] == "cs_test_1"
    assert body["checkout_url"] == "https://checkout.stripe.com/c/pay/cs_test_1"
    assert balances_get(organisation=people.buyer)["available"] == 0


def test_a_replayed_top_up_returns_the_same_session_without_calling_stripe_again(api, people, stripe_api):
    api.force_authenticate(people.buyer_admin)
    first = api.post(TOP_UPS, {"amount": "100"}, HTTP_IDEMPOTENCY_KEY="same")
    again = api.post(TOP_UPS, {"amount": "100"}, HTTP_IDEMPOTENCY_KEY="same")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert len(stripe_api.posts("/v1/checkout/sessions")) == 1
    assert TopUp.objects.count() == 1


def test_a_checkout_whose_start_timed_out_is_resumed_with_the_same_stripe_key(people, stripe_api):
    # given Stripe answered 500 to the first attempt (we cannot know whether it created the session)
    stripe_api.fail("/v1/checkout/sessions", 500, {"type": "api_error", "message": "boom"})
    with pytest.raises(ProviderError) as exc:
        services.top_up_create(organisation=people.buyer, amount_fen=10_000, idempotency_key="t", provider="stripe")
    assert exc.value.status_code == 502 and not exc.value.outcome_known
    top_up = TopUp.objects.get()
    assert (top_up.status, top_up.provider_reference) == (TopUpStatus.PENDING, "")
    # when the client retries with the same key once Stripe is back
    del stripe_api.routes[("POST", "/v1/checkout/sessions")]
    from tests.ledger.payments_helpers import _default_routes

    _default_routes(stripe_api)
    again, created = services.top_up_create(organisation=people.buyer, amount_fen=10_000, idempotency_key="t", provider="stripe")
    # then the same top-up gets its session, asked for under the same Stripe idempotency key
    assert not created and again.pk == top_up.pk and again.provider_reference.startswith("cs_test_")
    first, second = stripe_api.posts("/v1/checkout/sessions")
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]


def test_a_refused_checkout_fails_the_top_up_and_tells_the_client(api, people, stripe_api):
    # given Stripe refuses the amount
    stripe_api.fail("/v1/checkout/sessions", 400, {"type": "invalid_request_error", "param": "line_items[0][price_data][unit_amount]",
                                                    "message": "The Checkout Session's total amount must be at least ¥4.00."})
    api.force_authenticate(people.buyer_admin)
    before = ledger_snapshot()
    # when the buyer tops up 1 CNY
    response = api.post(TOP_UPS, {"amount": "1.00"}, HTTP_IDEMPOTENCY_KEY="small")
    # then a clear 400 names Stripe's reason and the failed top-up; nothing was posted
    assert response.status_code == 400
    body = response.json()
    assert "at least ¥4.00" in body["amount"][0], body
    top_up = TopUp.objects.get()
    assert body["top_up"] == top_up.pk and top_up.status == TopUpStatus.FAILED
    assert ledger_snapshot() == before
    # and a replay of the same key returns the failed top-up rather than charging again
    again = api.post(TOP_UPS, {"amount": "1.00"}, HTTP_IDEMPOTENCY_KEY="small")
    assert again.status_code == 200 and again.json()["status"] == "failed"
    assert len(stripe_api.posts("/v1/checkout/sessions")) == 1


def test_stripe_unreachable_is_a_502_and_nothing_is_credited(api, people):
    # given STRIPE_API_BASE points at a port where nothing listens
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with fake_stripe(STRIPE_API_BASE=f"http://127.0.0.1:{port}"):
        api.force_authenticate(people.buyer_admin)
        response = api.post(TOP_UPS, {"amount": "10"}, HTTP_IDEMPOTENCY_KEY="down")
    assert response.status_code == 502
    assert "retry with the same Idempotency-Key" in response.json()["provider"][0]
    assert TopUp.objects.get().status == TopUpStatus.PENDING
    assert balances_get(organisation=people.buyer)["available"] == 0


def test_stripe_payout_is_a_connect_transfer_and_captures_the_hold(api, people, stripe_api):
    # given a supplier with 800.00 CNY available
    fund(people.supplier, 80_000)
    api.force_authenticate(people.supplier_admin)
    # when its admin asks for 300.00 CNY to its connected account
    response = api.post(PAYOUTS, {"amount": "300.00", "destination": "acct_1Supplier"}, HTTP_IDEMPOTENCY_KEY="po-1")
    # then Stripe got a transfer of 30000 fen in CNY to that account, with our idempotency key
    assert response.status_code == 201, response.json()
    body = response.json()
    (sent,) = stripe_api.posts("/v1/transfers")
    assert (sent.form["amount"], sent.form["currency"], sent.form["destination"]) == ("30000", "cny", "acct_1Supplier")
    assert sent.form["metadata[payout_id]"] == str(body["id"])
    assert sent.headers["idempotency-key"].startswith(f"suanli-payout-{body['id']}-")
    # and the payout is paid: the money left the wallet for Stripe's clearing account
    assert (body["status"], body["provider"], body["provider_reference"]) == ("paid", "stripe", "tr_test_1")
    assert balances_get(organisation=people.supplier) == {"available": 50_000, "held": 0, "escrow": 0, "receivable": 0}
    assert clearing_balance("stripe") == 30_000
    # and a replay sends nothing more
    again = api.post(PAYOUTS, {"amount": "300.00", "destination": "acct_1Supplier"}, HTTP_IDEMPOTENCY_KEY="po-1")
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    assert len(stripe_api.posts("/v1/transfers")) == 1
    assert balances_get(organisation=people.supplier)["available"] == 50_000


def test_a_refused_stripe_transfer_releases_the_hold(api, people, stripe_api):
    fund(people.supplier, 80_000)
    stripe_api.fail("/v1/transfers", 400, {"type": "invalid_request_error", "param": "destination", "message": "No such destination: acct_x"})
    api.force_authenticate(people.supplier_admin)
    response = api.post(PAYOUTS, {"amount": "300.00", "destination": "acct_x"}, HTTP_IDEMPOTENCY_KEY="po-1")
    assert response.status_code == 400
    assert "No such destination" in response.json()["provider"][0]
    payout = people.supplier.payouts.get()
    assert payout.status == PayoutStatus.FAILED and "No such destination" in payout.failure_reason
    assert payout.hold.status == HoldStatus.CLOSED and payout.hold.released_fen == 30_000
    assert balances_get(organisation=people.supplier) == {"available": 80_000, "held": 0, "escrow": 0, "receivable": 0}
    assert clearing_balance("stripe") == 0


def test_a_stripe_payout_with_an_unknown_outcome_keeps_the_hold_until_retried(people, stripe_api):
    fund(people.supplier, 80_000)
    stripe_api.fail("/v1/transfers", 503, {"type": "api_error", "message": "unavailable"})
    with pytest.raises(ProviderError):
        services.payout_request(organisation=people.supplier, amount_fen=30_000, destination="acct_1", idempotency_key="p", provider="stripe")
    assert people.supplier.payouts.get().status == PayoutStatus.REQUESTED
    assert balances_get(organisation=people.supplier)["held"] == 30_000
    stripe_api.routes.clear()
    from tests.ledger.payments_helpers import _default_routes

    _default_routes(stripe_api)
    payout, created = services.payout_request(organisation=people.supplier, amount_fen=30_000, destination="acct_1", idempotency_key="p", provider="stripe")
    assert not created and payout.status == PayoutStatus.PAID
    assert balances_get(organisation=people.supplier) == {"available": 50_000, "held": 0, "escrow": 0, "receivable": 0}
    first, second = stripe_api.posts("/v1/transfers")
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]


def test_stripe_payout_needs_a_connected_account_and_enough_funds(api, people, stripe_api):
    fund(people.supplier, 10_000)
    api.force_authenticate(people.supplier_admin)
    before = ledger_snapshot()
    bad_destination = api.post(PAYOUTS, {"amount": "50", "destination": "6222 0000 1111"}, HTTP_IDEMPOTENCY_KEY="a")
    overdraft = api.post(PAYOUTS, {"amount": "100.01", "destination": "acct_1"}, HTTP_IDEMPOTENCY_KEY="b")
    assert bad_destination.status_code == 400 and "acct_" in bad_destination.json()["destination"][0]
    assert overdraft.status_code == 400 and "Insufficient funds" in overdraft.json()["amount"][0]
    assert ledger_snapshot() == before and not people.supplier.payouts.exists()
    assert stripe_api.posts("/v1/transfers") == []


def test_partial_then_full_refund_through_stripe(api, people, stripe_api):
    # given a credited 500.00 CNY Stripe top-up
    top_up = _credited_top_up(people)
    api.force_authenticate(people.operator)
    # when an operator refunds 120.00 CNY, then the rest
    partial = api.post(f"{TOP_UPS}{top_up.pk}/refund/", {"amount": "120.00"}, HTTP_IDEMPOTENCY_KEY="r-1")
    assert partial.status_code == 200, partial.json()
    assert (partial.json()["refunded_fen"], partial.json()["status"]) == (12_000, "succeeded")
    rest = api.post(f"{TOP_UPS}{top_up.pk}/refund/", {}, HTTP_IDEMPOTENCY_KEY="r-2")
    # then Stripe got refunds of 12000 and 38000 fen on the payment intent, each with its own key
    first, second = stripe_api.posts("/v1/refunds")
    assert (first.form["payment_intent"], first.form["amount"]) == ("pi_test_9", "12000")
    assert second.form["amount"] == "38000"
    assert first.headers["idempotency-key"] != second.headers["idempotency-key"]
    assert rest.json()["status"] == "refunded" and rest.json()["refunded_fen"] == 50_000
    # and the wallet is back to zero, as is Stripe's clearing account
    assert balances_get(organisation=people.buyer) == {"available": 0, "held": 0, "escrow": 0, "receivable": 0}
    assert clearing_balance("stripe") == 0
    # and replaying a refund does nothing more
    again = api.post(f"{TOP_UPS}{top_up.pk}/refund/", {"amount": "120.00"}, HTTP_IDEMPOTENCY_KEY="r-1")
    assert again.status_code == 200 and len(stripe_api.posts("/v1/refunds")) == 2
    assert balances_get(organisation=people.buyer)["available"] == 0


def test_refund_of_spent_money_is_refused_before_stripe_is_asked(api, people, stripe_api):
    top_up = _credited_top_up(people)
    from ledger import services as ledger

    ledger.hold_place(organisation=people.buyer, amount_fen=45_000, reference="order:1")  # spent on an order
    api.force_authenticate(people.operator)
    before = ledger_snapshot()
    response = api.post(f"{TOP_UPS}{top_up.pk}/refund/", {"amount": "100.00"}, HTTP_IDEMPOTENCY_KEY="r")
    assert response.status_code == 400 and "Insufficient funds" in response.json()["amount"][0]
    assert ledger_snapshot() == before and stripe_api.posts("/v1/refunds") == []
    top_up.refresh_from_db()
    assert top_up.refunded_fen == 0
    assert balances_get(organisation=people.buyer) == {"available": 5_000, "held": 45_000, "escrow": 0, "receivable": 0}


def test_a_refused_refund_gives_the_money_back_to_the_wallet(people, stripe_api):
    top_up = _credited_top_up(people)
    stripe_api.fail("/v1/refunds", 400, {"type": "invalid_request_error", "message": "Charge already refunded"})
    with pytest.raises(ProviderError):
        services.top_up_refund(top_up=top_up, idempotency_key="r", amount_fen=10_000)
    top_up.refresh_from_db()
    assert (top_up.refunded_fen, top_up.status) == (0, TopUpStatus.SUCCEEDED)
    assert balances_get(organisation=people.buyer) == {"available": 50_000, "held": 0, "escrow": 0, "receivable": 0}
    # the same key stays refused; a new key is a new refund
    with pytest.raises(PaymentError) as exc:
        services.top_up_refund(top_up=top_up, idempotency_key="r", amount_fen=10_000)
    assert exc.value.status_code == 409


def test_refund_more_than_was_topped_up_is_refused(api, people, stripe_api):
    top_up = _credited_top_up(people)
    fund(people.buyer, 100_000)
    api.force_authenticate(people.operator)
    response = api.post(f"{TOP_UPS}{top_up.pk}/refund/", {"amount": "500.01"}, HTTP_IDEMPOTENCY_KEY="r")
    assert response.status_code == 400 and "At most 500.00 CNY" in response.json()["amount"][0]
    assert stripe_api.posts("/v1/refunds") == []


def test_a_bank_reference_is_refused_when_the_top_up_goes_to_stripe(api, people, stripe_api):
    api.force_authenticate(people.buyer_admin)
    response = api.post(TOP_UPS, {"amount": "10", "bank_reference": "ICBC 1"}, HTTP_IDEMPOTENCY_KEY="k")
    assert response.status_code == 400 and "bank_reference" in response.json()
    assert not TopUp.objects.exists() and stripe_api.requests == []


def test_a_top_up_without_a_known_payment_intent_is_not_refunded(api, people, stripe_api):
    top_up, _ = services.top_up_create(organisation=people.buyer, amount_fen=5_000, idempotency_key="k", provider="stripe")
    top_up = services.top_up_credit(top_up=top_up)  # credited, but no payment intent recorded
    api.force_authenticate(people.operator)
    before = ledger_snapshot()
    response = api.post(f"{TOP_UPS}{top_up.pk}/refund/", {}, HTTP_IDEMPOTENCY_KEY="r")
    assert response.status_code == 400 and "payment intent" in response.json()["provider"][0]
    assert ledger_snapshot() == before and stripe_api.posts("/v1/refunds") == []
    assert balances_get(organisation=people.buyer)["available"] == 5_000
