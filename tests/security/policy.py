"""Who may do what, route by route: the written policy that tests/security/test_authz_matrix.py holds the
project to. Every URL of config.urls (but the Django admin) has a row; a new URL fails the test until it is
classified here. `python -m tests.security.policy` prints the table for docs/security.md.

Outcomes (the response to an empty body, sent by each role with the ids of its own organisation's objects):
  ok     2xx or 3xx, or 400 from validating the empty body, or 409 for the object's state (the request got
         past every role check that does not need the body; checks that need it, such as "admin of the
         organisation named", come after)
  deny   401 or 403            login  a redirect to sign-in (portal pages)
  404    hidden: the object is not among those the role may see
A method a row does not list is not offered: 405, or the view's refusal (401/403, sign-in) where that check
comes first. Members (buyer trader, buyer viewer, supplier) also get every detail route with the id of a
foreign organisation's object: that answers exactly as an id that does not exist, and 404 wherever their
own object is served (never 403, never a success); lists never contain a foreign organisation's rows.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("anonymous", "buyer_trader", "buyer_viewer", "supplier", "authority", "regulator", "operator")
LABELS = {"anonymous": "anonymous", "buyer_trader": "buyer trader", "buyer_viewer": "buyer viewer", "supplier": "supplier admin",
          "authority": "voucher authority", "regulator": "regulator", "operator": "operator"}
MEMBERS = ("buyer_trader", "buyer_viewer", "supplier")
BUYER = ("buyer_trader", "buyer_viewer")
SIGNED_IN = ROLES[1:]
WRITERS = tuple(r for r in SIGNED_IN if r != "regulator")  # regulators read everything and write nothing
OVERSEERS = ("regulator", "operator")
PLATFORM = ("authority", "regulator", "operator")
ALL = ROLES

OK, DENY, LOGIN, HIDDEN = "ok", "deny", "login", "404"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def who(*allowed: str, otherwise: str = DENY, **special: str) -> dict[str, str]:
    """Each role's outcome: `allowed` ok, `special` as given, the rest `otherwise`."""
    return {r: special.get(r, OK if r in allowed else otherwise) for r in ROLES}


def page(*allowed: str, **special: str) -> dict[str, str]:
    """A portal page behind sign-in: anonymous is sent to sign in, other roles refused with 403."""
    return who(*allowed, **{"anonymous": LOGIN, **special})


@dataclass(frozen=True)
class Row:
    methods: dict[str, dict[str, str]]
    kind: str | None = None  # what the route's id names (tests/security/world.py objects)
    public: bool = False  # the object is public (catalogue, instruments, programmes): no foreign check on reads
    lists: str | None = None  # the rows a GET lists: never a foreign organisation's
    sees: tuple[str, ...] = ()  # roles that must find their own organisation's row in that list
    query: str | None = None  # a query parameter naming the organisation: organisation=<the home buyer>
    note: str = ""


def row(note: str = "", *, kind=None, public=False, lists=None, sees=(), query=None, **methods) -> Row:
    return Row(methods=methods, kind=kind, public=public, lists=lists, sees=tuple(sees), query=query, note=note)


POLICY: dict[str, Row] = {
    # --- Public pages, sign-in, documentation --------------------------------------------------------------
    "/": row("home page", GET=who(*ALL)),
    "/products/": row("catalogue page", GET=who(*ALL)),
    "/inventory/": row("compute list page", GET=who(*ALL)),
    "/instruments/<pk>/": row("instrument page (ticket shown to traders)", kind="instrument", public=True, GET=who(*ALL)),
    "/accounts/login/": row("sign-in (Django's LoginView: PUT is a POST; a signed-in user is sent on for any method)",
                            GET=who(*ALL), POST=who(*ALL), PUT=who(*ALL), PATCH=who(*SIGNED_IN, anonymous="405"),
                            DELETE=who(*SIGNED_IN, anonymous="405")),
    "/accounts/logout/": row("sign-out", POST=who(*ALL)),
    "/i18n/setlang/": row("language cookie (Django's set_language: any method redirects; only POST sets it)",
                          **{m: who(*ALL) for m in METHODS}),
    "/healthz": row("liveness: answers any method, writes nothing", **{m: who(*ALL) for m in METHODS}),
    "/api/schema/": row("OpenAPI schema", GET=who(*ALL)),
    "/api/docs/": row("Swagger UI", GET=who(*ALL)),
    "/api/redoc/": row("ReDoc", GET=who(*ALL)),
    "/api/v1/": row("API root", GET=who(*ALL)),
    "/api/v1/auth/token/": row("token for a username and password", POST=who(*ALL)),
    "/api/v1/ledger/webhooks/stripe/": row("Stripe's: authenticated by its signature only (400 without)", POST=who(*ALL)),
    # --- Catalogue -------------------------------------------------------------------------------------------
    "/api/v1/organisations/": row("anyone signed in registers one and becomes its admin", GET=who(*SIGNED_IN), POST=who(*WRITERS)),
    "/api/v1/organisations/<pk>/": row("own organisation: its admins and operators edit", kind="organisation", public=True,
                                       GET=who(*SIGNED_IN), PUT=who("supplier", "operator"), PATCH=who("supplier", "operator")),
    "/api/v1/data-centres/": row("owner named in the body", GET=who(*ALL), POST=who(*WRITERS)),
    "/api/v1/data-centres/<pk>/": row("the owner's admins and operators edit", kind="data_centre", public=True,
                                      GET=who(*ALL), PUT=who("supplier", "operator"), PATCH=who("supplier", "operator")),
    "/api/v1/device-models/": row("operators edit the catalogue", GET=who(*ALL), POST=who("operator")),
    "/api/v1/device-models/<pk>/": row("", kind="device_model", public=True, GET=who(*ALL), PUT=who("operator"), PATCH=who("operator")),
    "/api/v1/products/": row("", GET=who(*ALL), POST=who("operator")),
    "/api/v1/products/<pk>/": row("", kind="product", public=True, GET=who(*ALL), PUT=who("operator"), PATCH=who("operator")),
    "/api/v1/instruments/": row("", GET=who(*ALL)),
    "/api/v1/instruments/<pk>/": row("", kind="instrument", public=True, GET=who(*ALL)),
    "/api/v1/instruments/<pk>/halt/": row("operators halt and resume", kind="instrument", public=True, POST=who("operator")),
    "/api/v1/instruments/<pk>/resume/": row("", kind="instrument", public=True, POST=who("operator")),
    "/api/v1/instruments/<pk>/book/": row("market data", kind="instrument", public=True, GET=who(*ALL)),
    "/api/v1/instruments/<pk>/ticker/": row("", kind="instrument", public=True, GET=who(*ALL)),
    "/api/v1/instruments/<pk>/candles/": row("", kind="instrument", public=True, GET=who(*ALL)),
    "/api/v1/inventory/": row("the public compute list", GET=who(*ALL)),
    "/api/v1/trades/": row("the public tape, no counterparties", GET=who(*ALL)),
    "/api/v1/listings/": row("a supplier's commercial data", GET=who(*SIGNED_IN), POST=who(*WRITERS), lists="listing", sees=["supplier"]),
    "/api/v1/listings/<pk>/": row("DELETE withdraws", kind="listing",
                                  GET=who("supplier", *OVERSEERS, otherwise=HIDDEN, anonymous=DENY),
                                  DELETE=who("supplier", "operator", otherwise=HIDDEN, anonymous=DENY, regulator=DENY)),
    # --- Orders ----------------------------------------------------------------------------------------------
    "/api/v1/orders/": row("POST: the organisation and role are checked after validation", GET=who(*SIGNED_IN), POST=who(*WRITERS),
                           lists="order", sees=BUYER),
    "/api/v1/orders/cancel-all/": row("an organisation's traders and admins (404: no organisation of yours)",
                                      POST=who("buyer_trader", "supplier", authority=HIDDEN, operator=HIDDEN)),
    "/api/v1/orders/<pk>/": row("PATCH amends, DELETE cancels: the organisation's traders and admins", kind="order",
                                GET=who(*BUYER, *OVERSEERS, otherwise=HIDDEN, anonymous=DENY),
                                PATCH=who("buyer_trader", otherwise=HIDDEN, anonymous=DENY, buyer_viewer=DENY, regulator=DENY, operator=DENY),
                                DELETE=who("buyer_trader", otherwise=HIDDEN, anonymous=DENY, buyer_viewer=DENY, regulator=DENY, operator=DENY)),
    "/api/v1/orders/by-client-id/<client_order_id>/": row("client ids are per organisation: members only", kind="client_order_id",
                                                          GET=who(*BUYER, otherwise=HIDDEN, anonymous=DENY),
                                                          PATCH=who("buyer_trader", otherwise=HIDDEN, anonymous=DENY, buyer_viewer=DENY, regulator=DENY),
                                                          DELETE=who("buyer_trader", otherwise=HIDDEN, anonymous=DENY, buyer_viewer=DENY, regulator=DENY)),
    "/api/v1/fills/": row("", GET=who(*SIGNED_IN), lists="fill", sees=BUYER),
    # --- Ledger and payments ---------------------------------------------------------------------------------
    "/api/v1/ledger/accounts/": row("", GET=who(*SIGNED_IN), lists="account", sees=MEMBERS),
    "/api/v1/ledger/balances/": row("", query="organisation", GET=who(*BUYER, *OVERSEERS, otherwise=HIDDEN, anonymous=DENY)),
    "/api/v1/ledger/statement/": row("", query="organisation", GET=who(*BUYER, *OVERSEERS, otherwise=HIDDEN, anonymous=DENY),
                                     lists="posting", sees=BUYER),
    "/api/v1/ledger/top-ups/": row("a buyer's admins and traders top up", GET=who(*SIGNED_IN), POST=who(*WRITERS), lists="top_up", sees=BUYER),
    "/api/v1/ledger/top-ups/<pk>/": row("", kind="top_up", GET=who(*BUYER, *OVERSEERS, otherwise=HIDDEN, anonymous=DENY)),
    **{f"/api/v1/ledger/top-ups/<pk>/{action}/": row("operators", kind="top_up",
                                                     POST=who("operator", otherwise=HIDDEN, anonymous=DENY, buyer_trader=DENY, buyer_viewer=DENY, regulator=DENY))
       for action in ("confirm", "reject", "refund")},
    "/api/v1/ledger/payouts/": row("a supplier's admins request", GET=who(*SIGNED_IN), POST=who(*WRITERS), lists="payout", sees=["supplier"]),
    "/api/v1/ledger/payouts/<pk>/": row("", kind="payout", GET=who("supplier", *OVERSEERS, otherwise=HIDDEN, anonymous=DENY)),
    "/api/v1/ledger/payouts/<pk>/cancel/": row("the organisation's admins", kind="payout",
                                               POST=who("supplier", otherwise=HIDDEN, anonymous=DENY, regulator=DENY, operator=DENY)),
    **{f"/api/v1/ledger/payouts/<pk>/{action}/": row("operators", kind="payout",
                                                     POST=who("operator", otherwise=HIDDEN, anonymous=DENY, supplier=DENY, regulator=DENY))
       for action in ("pay", "fail")},
    # --- Metering --------------------------------------------------------------------------------------------
    "/api/v1/metering/events/": row("a supplier's traders and admins", POST=who("supplier")),
    "/api/v1/metering/contracts/": row("", GET=who(*SIGNED_IN), lists="contract", sees=MEMBERS),
    "/api/v1/metering/contracts/<pk>/": row("both parties", kind="contract",
                                            GET=who(*MEMBERS, *OVERSEERS, otherwise=HIDDEN, anonymous=DENY)),
    "/api/v1/metering/contracts/<pk>/dispute/": row("the buyer's traders and admins", kind="contract",
                                                    POST=who("buyer_trader", otherwise=HIDDEN, anonymous=DENY, regulator=DENY)),
    "/api/v1/metering/disputes/": row("", GET=who(*SIGNED_IN), lists="dispute", sees=MEMBERS),
    "/api/v1/metering/disputes/<pk>/resolve/": row("operators", kind="dispute",
                                                   POST=who("operator", otherwise=DENY, authority=HIDDEN)),
    "/api/v1/metering/metrics/": row("own contracts (all, for overseers)", GET=who(*SIGNED_IN)),
    # --- Oversight -------------------------------------------------------------------------------------------
    **{f"/api/v1/oversight/{path}": row("regulators and operators", GET=who(*OVERSEERS))
       for path in ("trades/", "orders/", "order-events/", "contracts/", "ledger/entries/", "metering/usage-events/",
                    "metering/deliveries/", "audit/records/", "audit/checkpoints/", "audit/verify/", "alerts/", "metrics/")},
    "/api/v1/oversight/alerts/<pk>/": row("", kind="alert", GET=who(*OVERSEERS)),
    "/api/v1/oversight/alerts/<pk>/review/": row("regulators", kind="alert", POST=who("regulator")),
    "/api/v1/oversight/attestations/": row("POST: a supplier's admins and traders, for a contract it sold", GET=who(*SIGNED_IN), POST=who(*WRITERS)),
    "/api/v1/oversight/attestations/outstanding/": row("members who may attest (admins, traders) and overseers; 404 for the rest",
                                                       GET=who("buyer_trader", "supplier", *OVERSEERS, buyer_viewer=HIDDEN, authority=HIDDEN)),
    # --- Vouchers --------------------------------------------------------------------------------------------
    "/api/v1/vouchers/programmes/": row("the authority creates", GET=who(*SIGNED_IN), POST=who("authority")),
    "/api/v1/vouchers/programmes/<pk>/": row("", kind="programme", public=True, GET=who(*SIGNED_IN)),
    "/api/v1/vouchers/programmes/<pk>/fund/": row("the authority", kind="programme", public=True, POST=who("authority")),
    "/api/v1/vouchers/programmes/<pk>/report/": row("", kind="programme", public=True, GET=who(*PLATFORM)),
    "/api/v1/vouchers/profile/": row("an organisation's admins (named in the body)", POST=who(*WRITERS)),
    "/api/v1/vouchers/applications/": row("POST: an organisation's admins (named in the body)", GET=who(*SIGNED_IN), POST=who(*WRITERS),
                                          lists="application", sees=BUYER),
    "/api/v1/vouchers/applications/<pk>/": row("", kind="application", GET=who(*BUYER, *PLATFORM, otherwise=HIDDEN, anonymous=DENY)),
    "/api/v1/vouchers/applications/<pk>/approve/": row("the authority", kind="pending_application", POST=who("authority")),
    "/api/v1/vouchers/applications/<pk>/reject/": row("the authority", kind="pending_application", POST=who("authority")),
    "/api/v1/vouchers/vouchers/": row("", GET=who(*SIGNED_IN), lists="voucher", sees=BUYER),
    "/api/v1/vouchers/vouchers/<pk>/": row("", kind="voucher", GET=who(*BUYER, *PLATFORM, otherwise=HIDDEN, anonymous=DENY)),
    "/api/v1/vouchers/redemptions/": row("", GET=who(*SIGNED_IN), lists="redemption", sees=BUYER),
    "/api/v1/vouchers/redemptions/<pk>/evidence/": row("", kind="redemption",
                                                       GET=who(*BUYER, *PLATFORM, otherwise=HIDDEN, anonymous=DENY)),
    # --- Scheduling ------------------------------------------------------------------------------------------
    "/api/v1/demands/": row("POST: an organisation's traders and admins", GET=who(*SIGNED_IN), POST=who(*WRITERS), lists="demand", sees=BUYER),
    "/api/v1/demands/<pk>/": row("", kind="demand", GET=who(*BUYER, *OVERSEERS, otherwise=HIDDEN, anonymous=DENY)),
    **{f"/api/v1/demands/<pk>/{action}/": row("the organisation's traders and admins", kind="demand",
                                              POST=who("buyer_trader", otherwise=HIDDEN, anonymous=DENY, buyer_viewer=DENY, regulator=DENY, operator=DENY))
       for action in ("plan", "execute")},
    # --- API keys --------------------------------------------------------------------------------------------
    "/api/v1/api-keys/": row("a user's own keys", GET=who(*SIGNED_IN), POST=who(*SIGNED_IN), lists="api_key", sees=SIGNED_IN),
    "/api/v1/api-keys/<pk>/": row("", kind="api_key", GET=who(*SIGNED_IN), DELETE=who(*SIGNED_IN)),
    "/api/v1/api-keys/<pk>/revoke/": row("", kind="api_key", POST=who(*SIGNED_IN)),
    # --- Risk controls -----------------------------------------------------------------------------------------
    "/api/v1/risk/kill-switches/": row("operators set; regulators read", GET=who(*OVERSEERS), POST=who("operator")),
    "/api/v1/risk/kill-switches/<pk>/": row("(the world has no kill switch: an id that does not exist)", kind="missing",
                                            GET=who(otherwise=DENY, regulator=HIDDEN, operator=HIDDEN), DELETE=who(operator=HIDDEN)),
    "/api/v1/risk/limits/": row("", GET=who(*OVERSEERS)),
    "/api/v1/risk/matchers/": row("each matcher shard's load", GET=who(*OVERSEERS)),
    "/api/v1/risk/limits/<organisation>/": row("an organisation's limits", kind="organisation", GET=who(*OVERSEERS),
                                               PUT=who("operator"), PATCH=who("operator"), DELETE=who("operator")),
    # --- Portal pages ----------------------------------------------------------------------------------------
    "/api-keys/": row("the user's own API keys", GET=page(*SIGNED_IN), POST=page(*SIGNED_IN)),
    "/demands/": row("members and overseers; POST: the organisation's traders and admins", GET=page(*MEMBERS, *OVERSEERS),
                     POST=page("buyer_trader", "supplier")),
    "/demands/<pk>/": row("", kind="demand", GET=page(*BUYER, *OVERSEERS, supplier=HIDDEN)),
    **{f"/demands/<pk>/{action}/": row("the organisation's traders and admins", kind="demand",
                                       POST=page("buyer_trader", supplier=HIDDEN))
       for action in ("plan", "execute")},
    "/organisation/": row("switch the acting organisation (own only)", POST=page(*SIGNED_IN)),
    "/orders/": row("the acting organisation's orders", GET=page(*MEMBERS)),
    "/wallet/": row("POST moves money: traders and admins", GET=page(*MEMBERS), POST=page("buyer_trader", "supplier")),
    "/wallet/statement.csv": row("", GET=page(*MEMBERS)),
    "/supplier/": row("supplier organisations", GET=page("supplier")),
    "/supplier/metering/": row("a supplier's traders and admins upload usage", POST=page("supplier")),
    "/vouchers/": row("voucher desk", GET=page(*MEMBERS), POST=page(*MEMBERS)),
    "/vouchers/review/": row("the authority decides; overseers read", GET=page(*PLATFORM), POST=page("authority")),
    "/regulator/": row("", GET=page(*OVERSEERS)),
    "/regulator/metrics/": row("", GET=page(*OVERSEERS)),
    "/regulator/audit/": row("POST re-checks the chain", GET=page(*OVERSEERS), POST=page(*OVERSEERS)),
    "/regulator/alerts/<pk>/review/": row("regulators", kind="alert", POST=page("regulator")),
}

# Member pages whose HTML must never name a foreign organisation.
PRIVATE_PAGES = ("/orders/", "/wallet/", "/wallet/statement.csv", "/supplier/", "/vouchers/")

# Websockets: may each role open the stream?
WEBSOCKETS = {
    "/ws/market/<instrument_id>/": ("public market data", who(*ALL)),
    "/ws/user/": ("the user's organisations' order events and order entry (closed with 4401 without a user)", who(*SIGNED_IN)),
}

_SHORT = {OK: "✓", DENY: "–", LOGIN: "sign-in", HIDDEN: "404", "405": "405"}


def markdown() -> str:
    """The table for docs/security.md: one row per route, per role the methods it may use (others refused)."""
    head = "| Route | Methods | " + " | ".join(LABELS[r] for r in ROLES) + " |"
    lines = [head, "|" + "---|" * (len(ROLES) + 2)]
    for route, r in sorted(POLICY.items()):
        offered = [m for m in METHODS if m in r.methods]
        cells = []
        for role in ROLES:
            alike = {r.methods[m][role] for m in offered}
            if len(alike) == 1 and OK not in alike:
                cells.append(_SHORT[alike.pop()])
                continue
            parts = []
            for m in offered:
                o = r.methods[m][role]
                parts.append(m if o == OK else f"{m} {_SHORT[o]}" if o in (HIDDEN, LOGIN, "405") else "")
            cells.append(" ".join(p for p in parts if p) or "–")
        lines.append(f"| `{route}` | {' '.join(offered)} | " + " | ".join(cells) + " |")
    for route, (_note, outcomes) in WEBSOCKETS.items():
        lines.append(f"| `{route}` (websocket) | connect | " + " | ".join("✓" if outcomes[r] == OK else "–" for r in ROLES) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
