"""The websocket routes x the seven roles, against tests/security/policy.py WEBSOCKETS: the market stream is
public (a snapshot for anyone); /ws/user/ welcomes every signed-in role, by token or by session, and closes
with 4401 for anyone else. (Origin and deactivated users: tests/security's other socket tests.)"""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from django.test import Client
from rest_framework.authtoken.models import Token

from config.routing import public_websocket_urlpatterns, websocket_urlpatterns
from marketplace import services as catalogue
from marketplace.models import Instrument, MemberRole, PlatformRole
from tests.exchange.live.helpers import TIMEOUT, open_socket, release_worker_connections
from tests.factories import OrganisationFactory, ProductFactory, UserFactory, member
from tests.security import policy

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _worker_connections():
    yield
    release_worker_connections()


def identities() -> dict:
    buyer, supplier = OrganisationFactory(kind="buyer"), OrganisationFactory(kind="supplier")
    return {
        "anonymous": None,
        "buyer_trader": member(buyer, role=MemberRole.TRADER),
        "buyer_viewer": member(buyer, role=MemberRole.VIEWER),
        "supplier": member(supplier, role=MemberRole.ADMIN),
        "authority": UserFactory(platform_role=PlatformRole.AUTHORITY),
        "regulator": UserFactory(platform_role=PlatformRole.REGULATOR),
        "operator": UserFactory(platform_role=PlatformRole.OPERATOR),
    }


def test_every_websocket_route_is_in_the_policy_table():
    routes = {"/" + str(p.pattern).replace("<int:", "<") for p in [*public_websocket_urlpatterns, *websocket_urlpatterns]}
    assert routes == set(policy.WEBSOCKETS)


def _session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


def test_websocket_role_matrix():
    ProductFactory(code="AI-TRAIN")
    catalogue.instruments_roll()
    instrument = Instrument.objects.filter(status="open").first()
    users = identities()
    tokens = {role: Token.objects.create(user=user).key for role, user in users.items() if user is not None}
    cookies = {role: _session_cookie(user) for role, user in users.items() if user is not None}
    problems = []

    async def user_stream(role, how):
        kwargs = {"token": tokens[role]} if how == "token" and role in tokens else {}
        headers = [(b"cookie", cookies[role])] if how == "session" and role in cookies else []
        comm, connected, _ = await open_socket("/ws/user/", headers=headers, **kwargs)
        try:
            first = await comm.receive_output(TIMEOUT)
        finally:
            await comm.disconnect()
        if first.get("type") == "websocket.close":
            return "deny" if first.get("code") == 4401 else f"closed {first.get('code')}"
        welcome = json.loads(first.get("text") or "{}")
        return "ok" if connected and welcome.get("type") == "welcome" and welcome.get("user") == users[role].pk else f"unexpected {first}"

    async def market_stream(role):
        headers = [(b"cookie", cookies[role])] if role in cookies else []
        comm, connected, _ = await open_socket(f"/ws/market/{instrument.pk}/", headers=headers, token=tokens.get(role))
        try:
            first = await comm.receive_json_from(TIMEOUT)
        finally:
            await comm.disconnect()
        return "ok" if connected and first.get("type") == "snapshot" and first.get("instrument") == instrument.pk else f"unexpected {first}"

    async def body():
        for role in policy.ROLES:
            want = policy.WEBSOCKETS["/ws/market/<instrument_id>/"][1][role]
            got = await market_stream(role)
            if got != want:
                problems.append(f"/ws/market/ as {role}: {got}, policy says {want}")
            want = policy.WEBSOCKETS["/ws/user/"][1][role]
            for how in ("token", "session"):
                got = await user_stream(role, how)
                if got != want:
                    problems.append(f"/ws/user/ as {role} by {how}: {got}, policy says {want}")

    async_to_sync(body)()
    assert problems == [], "\n".join(problems)
