"""Test helpers for payments: a local HTTP server that answers like Stripe, Stripe-style webhook signing, and
organisations with users in each role.

The real `stripe` library talks to the server over HTTP (STRIPE_API_BASE points at it), so the tests see the
exact requests the library sends: path, form fields, headers. No internet is needed.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

from django.test import override_settings

from ledger import services
from ledger.models import AccountKind, Hold, JournalEntry, Posting, ProviderEvent
from marketplace.models import MemberRole, Organisation, User
from tests.factories import OrganisationFactory, UserFactory, member

WEBHOOK_SECRET = "whsec_test_suanli"


@dataclass
class StripeRequest:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str]


Responder = Callable[[StripeRequest], tuple[int, dict]]


@dataclass
class FakeStripe:
    """Records every request; answers each (method, path) from `routes`, replaying the first answer for a
    repeated Idempotency-Key as Stripe does."""

    url: str = ""
    requests: list[StripeRequest] = field(default_factory=list)
    routes: dict[tuple[str, str], Responder] = field(default_factory=dict)
    answered: dict[str, tuple[int, dict]] = field(default_factory=dict)

    def posts(self, path: str) -> list[StripeRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path == path]

    def fail(self, path: str, status: int, error: dict) -> None:
        self.routes[("POST", path)] = lambda request: (status, {"error": error})

    def handle(self, request: StripeRequest) -> tuple[int, dict]:
        self.requests.append(request)
        key = request.headers.get("idempotency-key")
        if key and key in self.answered:
            return self.answered[key]
        responder = self.routes.get((request.method, request.path))
        answer = responder(request) if responder else (404, {"error": {"type": "invalid_request_error", "message": f"No route {request.path}"}})
        if key and answer[0] < 500:
            self.answered[key] = answer
        return answer


def _default_routes(fake: FakeStripe) -> None:
    counter = itertools.count(1)

    def metadata(form: dict[str, str], prefix: str = "metadata") -> dict[str, str]:
        return {k[len(prefix) + 1:-1]: v for k, v in form.items() if k.startswith(prefix + "[")}

    def session(request: StripeRequest) -> tuple[int, dict]:
        n = next(counter)
        return 200, {
            "id": f"cs_test_{n}", "object": "checkout.session", "url": f"https://checkout.stripe.com/c/pay/cs_test_{n}",
            "mode": "payment", "status": "open", "payment_status": "unpaid", "payment_intent": None,
            "amount_total": int(request.form["line_items[0][price_data][unit_amount]"]),
            "currency": request.form["line_items[0][price_data][currency]"],
            "client_reference_id": request.form.get("client_reference_id"), "metadata": metadata(request.form),
        }

    def transfer(request: StripeRequest) -> tuple[int, dict]:
        return 200, {"id": f"tr_test_{next(counter)}", "object": "transfer", "amount": int(request.form["amount"]),
                     "currency": request.form["currency"], "destination": request.form["destination"],
                     "reversed": False, "amount_reversed": 0, "metadata": metadata(request.form)}

    def refund(request: StripeRequest) -> tuple[int, dict]:
        return 200, {"id": f"re_test_{next(counter)}", "object": "refund", "amount": int(request.form["amount"]),
                     "payment_intent": request.form["payment_intent"], "status": "succeeded", "metadata": metadata(request.form)}

    fake.routes.update({("POST", "/v1/checkout/sessions"): session, ("POST", "/v1/transfers"): transfer, ("POST", "/v1/refunds"): refund})


@contextmanager
def fake_stripe(**settings) -> Iterator[FakeStripe]:
    """A Stripe-shaped HTTP server on 127.0.0.1 (ephemeral port) with Stripe configured to use it."""
    fake = FakeStripe()
    _default_routes(fake)

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            path, _, query = self.path.partition("?")
            request = StripeRequest(self.command, path, {k.lower(): v for k, v in self.headers.items()},
                                    dict(parse_qsl(body or query, keep_blank_values=True)))
            status, payload = fake.handle(request)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Request-Id", f"req_{len(fake.requests)}")
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    values = {"STRIPE_SECRET_KEY": "sk_test_suanli", "STRIPE_API_BASE": fake.url, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
              "STRIPE_MAX_NETWORK_RETRIES": 0, **settings}
    try:
        with override_settings(**values):
            yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- Webhooks --------------------------------------------------------------------------------------------

def sign(payload: str, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """The Stripe-Signature header exactly as Stripe computes it: v1 = HMAC-SHA256(secret, f"{t}.{payload}")."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


_event_ids = itertools.count(1)


def event(event_type: str, obj: dict, event_id: str | None = None) -> str:
    return json.dumps({
        "id": event_id or f"evt_test_{next(_event_ids)}", "object": "event", "type": event_type, "api_version": "2025-01-01",
        "created": int(time.time()), "livemode": False, "data": {"object": obj},
    })


def paid_session(top_up, *, payment_status: str = "paid", amount: int | None = None, currency: str = "cny", intent: str = "pi_test_1") -> dict:
    return {
        "id": top_up.provider_reference, "object": "checkout.session", "mode": "payment", "status": "complete",
        "payment_status": payment_status, "amount_total": top_up.amount_fen if amount is None else amount, "currency": currency,
        "payment_intent": intent, "client_reference_id": f"topup-{top_up.pk}",
        "metadata": {"top_up_id": str(top_up.pk), "organisation_id": str(top_up.organisation_id)},
    }


def post_webhook(api, payload: str, signature: str | None):
    headers = {"HTTP_STRIPE_SIGNATURE": signature} if signature is not None else {}
    return api.post("/api/v1/ledger/webhooks/stripe/", data=payload, content_type="application/json", **headers)


# --- People and money ------------------------------------------------------------------------------------

@dataclass
class Cast:
    buyer: Organisation
    supplier: Organisation
    buyer_admin: User
    buyer_trader: User
    buyer_viewer: User
    supplier_admin: User
    supplier_trader: User
    outsider: User
    operator: User
    regulator: User


def cast() -> Cast:
    buyer = OrganisationFactory(kind="buyer")
    supplier = OrganisationFactory(kind="supplier")
    other = OrganisationFactory(kind="both")
    return Cast(
        buyer=buyer, supplier=supplier,
        buyer_admin=member(buyer, MemberRole.ADMIN), buyer_trader=member(buyer, MemberRole.TRADER),
        buyer_viewer=member(buyer, MemberRole.VIEWER), supplier_admin=member(supplier, MemberRole.ADMIN),
        supplier_trader=member(supplier, MemberRole.TRADER), outsider=member(other, MemberRole.ADMIN),
        operator=UserFactory(platform_role="operator"), regulator=UserFactory(platform_role="regulator"),
    )


def fund(org: Organisation, amount_fen: int, provider: str = "offline") -> None:
    """Give an organisation available funds as if a top-up had been credited."""
    clearing = services.platform_account(kind=AccountKind.PROVIDER_CLEARING, name=provider)
    services.transfer(source=clearing, destination=services.account_for(organisation=org, kind=AccountKind.AVAILABLE),
                      amount_fen=amount_fen, idempotency_key=f"test-fund:{org.pk}:{JournalEntry.objects.count()}", kind="top_up")


def clearing_balance(provider: str) -> int:
    return services.platform_account(kind=AccountKind.PROVIDER_CLEARING, name=provider).balance_fen


def ledger_snapshot() -> tuple[int, int, int, int]:
    """What a refused call must leave unchanged."""
    return JournalEntry.objects.count(), Posting.objects.count(), Hold.objects.count(), ProviderEvent.objects.count()
