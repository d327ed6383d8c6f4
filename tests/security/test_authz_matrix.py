"""The authorisation matrix: every route of config.urls x GET/POST/PUT/PATCH/DELETE x seven roles, held to
the written policy in tests/security/policy.py (rendered in docs/security.md). Members also try a foreign
organisation's ids (answered as ids that do not exist) and read lists for foreign rows (never there).

The world is built once per module (tests/security/conftest.py); each call runs in a savepoint undone after it."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.test import override_settings

from tests.security import policy
from tests.security.harness import METHODS, Caller, concrete, outcome, reset_matcher, rolled_back, routes
from tests.security.world import FOREIGN_NAMES, world_build

pytestmark = pytest.mark.django_db



@pytest.fixture(scope="module")
def authz_world(django_db_setup, django_db_blocker):
    """The world of tests/security/world.py, built once for the module inside a transaction rolled back at
    the end; each test runs in its own savepoint (pytest-django's `db`) and every call in another."""
    # Sessions in signed cookies: thousands of calls, each reading its session, cost less than from the database.
    with django_db_blocker.unblock(), override_settings(MATCHER_TRANSPORT="inline", SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies"), rolled_back():
        reset_matcher()
        world = world_build()
        world["caller"] = Caller(world["users"])
        yield world
    reset_matcher()


PUBLIC_KINDS = {"instrument": "instrument", "product": "product", "device_model": "device_model", "programme": "programme"}
MISSING = 999_999_999
REFUSED = {"405", policy.DENY, policy.LOGIN}  # a method a route does not offer


def object_for(world, kind: str, role: str, side: str = "home"):
    if kind == "missing":
        return MISSING
    if kind in PUBLIC_KINDS:
        return world["public"][kind]
    s = world[side]
    if kind == "organisation":
        return s.supplier if role == "supplier" else s.buyer
    value = s.objects[kind]
    return value.get(role, next(iter(value.values()))) if isinstance(value, dict) else value


def ident(value):
    return getattr(value, "pk", value)


def url_for(world, key: str, row: policy.Row, role: str, side: str = "home") -> str:
    url = concrete(key, ident(object_for(world, row.kind, role, side))) if row.kind else key
    if row.query:
        org = world[side].buyer if side == "home" or role != "supplier" else world[side].supplier
        url += f"?{row.query}={org.pk}"
    return url


def listed_ids(response) -> set[int]:
    body = response.json()
    items = body["results"] if isinstance(body, dict) else body
    return {item["id"] for item in items}


def own_rows(world, kind, role, side="home") -> set:
    rows = world[side].rows.get(kind, set())
    return rows.get(role, set()) if isinstance(rows, dict) else rows


def test_every_route_is_in_the_policy_table():
    missing = sorted(set(routes()) - set(policy.POLICY))
    assert missing == [], f"classify these routes in tests/security/policy.py: {missing}"


@pytest.mark.parametrize("role", policy.ROLES)
@pytest.mark.parametrize("key", routes())  # rows for routes config.urls does not have (yet, or any more) are not run
def test_route(authz_world, key, role):
    """The policy's outcome for each method, with the role's own organisation's ids; for members, a foreign
    organisation's id answers as a missing one (404 where their own is served); lists hold no foreign rows."""
    assert key in policy.POLICY, f"{key} is not in tests/security/policy.py: classify it"
    world, row = authz_world, policy.POLICY[key]
    call = world["caller"].call
    problems = []
    for method in METHODS:
        url = url_for(world, key, row, role)
        response = call(role, method, url)
        got = outcome(response)
        want = row.methods.get(method, {}).get(role)
        if (got != want) if want else (got not in REFUSED):
            detail = f" ({response.exc!r})" if hasattr(response, "exc") else ""
            problems.append(f"{method} {url}: {got}, policy says {want or 'not offered (405 or refused)'}{detail}")
            continue
        if method == "GET" and want == policy.OK and role in policy.MEMBERS:
            if row.lists:
                ids = listed_ids(response)
                leaked = ids & own_rows(world, row.lists, role, "foreign")
                if leaked:
                    problems.append(f"GET {url} lists foreign {row.lists} rows {sorted(leaked)}")
                if role in row.sees and not ids & own_rows(world, row.lists, role):
                    problems.append(f"GET {url} does not list the role's own {row.lists} rows")
            if key in policy.PRIVATE_PAGES:
                text = b"".join(response.streaming_content) if response.streaming else response.content
                for name in FOREIGN_NAMES:
                    if name.encode() in text:
                        problems.append(f"GET {url} names {name}")
        if role in policy.MEMBERS and (row.kind or row.query) and want and not (row.public and method == "GET"):
            foreign = outcome(call(role, method, url_for(world, key, row, role, "foreign")))
            if row.kind and row.kind not in PUBLIC_KINDS:
                missing = outcome(call(role, method, concrete(key, "no-such-id" if row.kind == "client_order_id" else MISSING)))
            else:
                missing = foreign
            if want in (policy.OK, policy.HIDDEN) and not row.public:
                expected = {policy.HIDDEN}
            elif row.public:
                expected = {policy.DENY, policy.HIDDEN, "405"} if want == policy.OK else {want}
            else:
                expected = {policy.HIDDEN, want}
            if foreign not in expected or (foreign != missing and not row.public):
                problems.append(f"{method} {url} with a foreign id: {foreign} (a missing id: {missing}), policy wants {sorted(expected)}")
    assert problems == [], "\n".join(problems)


def test_docs_carry_the_policy_table():
    text = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    assert policy.markdown() in text, "docs/security.md is stale: paste `python -m tests.security.policy` into its Authorisation policy section"
