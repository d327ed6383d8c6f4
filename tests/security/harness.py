"""Walking config.urls and calling each route as each role (the matrix's machinery; the rules are in policy.py)."""

from __future__ import annotations

import contextlib
import copy
import re

from django.db import transaction
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
PARAM = re.compile(r"\(\?P<(\w+)>[^)]*\)|<(?:\w+:)?(\w+)>")


def walk(patterns, prefix=""):
    """(route, name) of every URL pattern under `patterns`, nested includes flattened."""
    for p in patterns:
        if isinstance(p, URLResolver):
            yield from walk(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            yield prefix + str(p.pattern), p.name


def route_key(route: str) -> str:
    """`api/v1/ledger/^top-ups/(?P<pk>[^/.]+)/$` -> `/api/v1/ledger/top-ups/<pk>/`."""
    route = route.replace("^", "").replace("$", "")
    return "/" + PARAM.sub(lambda m: f"<{m.group(1) or m.group(2)}>", route)


def routes() -> list[str]:
    """Every URL of the project but the Django admin and DRF's `.<format>` twins (the same views)."""
    return sorted({route_key(r) for r, _ in walk(get_resolver().url_patterns)
                   if not r.startswith("admin/") and "<format>" not in route_key(r)})


def concrete(key: str, value) -> str:
    return re.sub(r"<\w+>", str(value), key)


def outcome(response) -> str:
    """The policy's words for a response: ok (2xx, 3xx, 400 from validating the empty body or 409 for the
    object's state), login (a
    redirect to sign-in), deny (401/403), 404, 405; anything else is its status code."""
    code = response.status_code
    if code in (301, 302, 303) and response.get("Location", "").startswith("/accounts/login/"):
        return "login"
    if code < 400 or code in (400, 409):  # 409: refused for the object's state, after every role check
        return "ok"
    if code in (401, 403):
        return "deny"
    if code in (404, 405):
        return str(code)
    return str(code)


@contextlib.contextmanager
def rolled_back():
    """A savepoint undone afterwards. Marked as a test case's block (as django.test.TestCase marks its own) so
    the durable services inside may open their transactions."""
    atomic = transaction.atomic()
    atomic._from_testcase = True
    with atomic:
        yield
        transaction.set_rollback(True)


def reset_matcher() -> None:
    """The inline matcher keeps books in memory: after a rolled-back write, rebuild them from the database."""
    from exchange import admission, publish, selectors, transport

    selectors.caches_clear()
    publish._units.clear()
    admission._DEVICE_RATES.clear()
    transport._client = None
    transport.InlineClient.reset()


class Caller:
    """One client per role, signed in by session (as the portal is) and read by the API through it too."""

    def __init__(self, users: dict) -> None:
        self.clients, self.cookies = {}, {}
        for role, user in users.items():
            client = APIClient()
            if user is not None:
                client.force_login(user)
            self.clients[role] = client
            self.cookies[role] = copy.deepcopy(client.cookies)

    def call(self, role: str, method: str, url: str):
        """The response, with every write undone (sign-out and the language cookie too)."""
        client = self.clients[role]
        client.cookies = copy.deepcopy(self.cookies[role])
        api = url.startswith("/api/")
        with rolled_back():
            try:
                if method == "GET":
                    response = client.get(url)
                elif api:
                    response = getattr(client, method.lower())(url, {}, format="json")
                else:
                    response = getattr(client, method.lower())(url)
            except Exception as exc:  # the test client re-raises a view's exception: a 500 for a user
                response = _Failed(exc)
        if method != "GET" and response.status_code < 400:
            reset_matcher()  # a write went through (and was undone): the matcher's books may have moved
        return response


class _Failed:
    def __init__(self, exc: Exception) -> None:
        self.status_code, self.exc = 500, exc

    def get(self, name, default=""):
        return default
