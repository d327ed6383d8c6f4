"""The portal's API keys page: a new key is shown on the creation answer only; revoking ends it."""

import pytest
from django.test import Client
from rest_framework.test import APIClient

from apikeys.models import ApiKey
from apikeys.services import api_key_create
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
PAGE = "/api-keys/"


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_create_shows_the_key_once_and_it_works_until_revoked():
    user = UserFactory()
    client = signed_in(user)
    assert client.get(PAGE).status_code == 200
    created = client.post(PAGE, {"action": "create", "name": "my bot", "scopes": ["trade"], "expires_days": "30"})
    assert created.status_code == 200 and created["Cache-Control"] == "no-store"
    key = created.context["created_key"]
    assert key in created.content.decode()
    row = ApiKey.objects.get()
    assert (row.user, row.name, row.scopes) == (user, "my bot", ["read", "trade"]) and row.expires_at is not None

    again = client.get(PAGE).content.decode()
    assert key not in again and f"sl_{row.prefix}_" in again  # listed by prefix, never the secret

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    assert api.get("/api/v1/api-keys/").status_code == 200
    assert client.post(PAGE, {"action": "revoke", "key": row.pk}).status_code == 302
    assert api.get("/api/v1/api-keys/").status_code == 401


def test_bad_input_and_anothers_key_change_nothing():
    owner = UserFactory()
    other_key, _ = api_key_create(user=UserFactory(), name="theirs", scopes=[])
    client = signed_in(owner)
    for body in ({"name": ""}, {"name": "x", "expires_days": "-3"}, {"name": "x", "scopes": ["root"]}):
        response = client.post(PAGE, {"action": "create", **body})
        assert response.status_code == 400 and not response.context["created_key"], body
    assert client.post(PAGE, {"action": "revoke", "key": other_key.pk}).status_code == 404
    assert ApiKey.objects.count() == 1 and ApiKey.objects.get().revoked_at is None
    assert Client().get(PAGE).status_code == 302  # signed out: to the sign-in page
