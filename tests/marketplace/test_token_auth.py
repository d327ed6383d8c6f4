"""Account tokens (`Authorization: Token <key>`): marketplace.authentication reads token and user with one
constant statement (raw SQL); the answers are DRF's. The trader's organisations are read the same way."""

import datetime as dt
from decimal import Decimal

import pytest
from rest_framework import exceptions
from rest_framework.authtoken.models import Token

from exchange.selectors import _trading_organisations
from marketplace.models import MemberRole, Organisation, PlatformRole
from tests.factories import OrganisationFactory, UserFactory, member

pytestmark = pytest.mark.django_db


def _as(api, user):
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")


def test_a_token_acts_as_its_user_with_that_users_rights(api):
    _as(api, UserFactory(username="reg", platform_role=PlatformRole.REGULATOR))
    assert api.get("/api/v1/oversight/trades/").status_code == 200
    _as(api, UserFactory(username="plain"))
    assert api.get("/api/v1/oversight/trades/").status_code == 403


def test_an_unknown_token_is_refused(api):
    api.credentials(HTTP_AUTHORIZATION="Token 0123456789abcdef0123456789abcdef01234567")
    response = api.get("/api/v1/organisations/")
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid token."


def test_a_deactivated_users_token_is_refused_at_once(api):
    user = UserFactory(username="leaver")
    _as(api, user)
    assert api.get("/api/v1/organisations/").status_code == 200
    user.is_active = False
    user.save(update_fields=["is_active"])
    response = api.get("/api/v1/organisations/")
    assert response.status_code == 401
    assert response.json()["detail"] == "User inactive or deleted."


def test_raw_rows_become_the_same_instances_as_the_orm_reads():
    """Dates, decimals, booleans and aware datetimes converted as the ORM does (SQLite stores them as text)."""
    org = OrganisationFactory(name="Moyuan AI", founded_on=dt.date(2019, 5, 4), delivery_ratio=Decimal("0.9375"), is_research_institution=True)
    (raw,) = _trading_organisations(member(org, role=MemberRole.TRADER, username="my-trader"))
    orm = Organisation.objects.get(pk=org.pk)
    for field in Organisation._meta.concrete_fields:
        assert getattr(raw, field.attname) == getattr(orm, field.attname), field.name
        assert type(getattr(raw, field.attname)) is type(getattr(orm, field.attname)), field.name
    assert raw.founded_on == dt.date(2019, 5, 4) and raw.delivery_ratio == Decimal("0.9375") and raw.is_research_institution is True
    assert raw.created_at.tzinfo is not None and not raw._state.adding


def test_a_known_token_is_read_from_the_cache_after_its_first_use(django_assert_num_queries):
    from marketplace.authentication import TokenAuthentication

    user = UserFactory(username="quant")
    key = Token.objects.create(user=user).key
    auth = TokenAuthentication()
    with django_assert_num_queries(1):
        assert auth.authenticate_credentials(key)[0].pk == user.pk
    with django_assert_num_queries(0):
        cached, token = auth.authenticate_credentials(key)
    assert (cached.pk, cached.username, token.key) == (user.pk, "quant", key)


def test_without_the_cache_every_request_reads_the_token(settings, django_assert_num_queries):
    from marketplace.authentication import TokenAuthentication

    settings.AUTH_TOKEN_CACHE_SECONDS = 0
    key = Token.objects.create(user=UserFactory(username="uncached")).key
    for _ in range(2):
        with django_assert_num_queries(1):
            TokenAuthentication().authenticate_credentials(key)


def test_a_deleted_token_is_refused_at_once_though_it_was_cached(api):
    token = Token.objects.create(user=UserFactory(username="rotated"))
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert api.get("/api/v1/organisations/").status_code == 200
    token.delete()
    response = api.get("/api/v1/organisations/")
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid token."


def test_a_cached_user_sees_changes_saved_to_it(api):
    user = UserFactory(username="promoted", platform_role=PlatformRole.REGULATOR)
    _as(api, user)
    assert api.get("/api/v1/oversight/trades/").status_code == 200
    user.platform_role = ""
    user.save()
    assert api.get("/api/v1/oversight/trades/").status_code == 403


def test_signing_in_keeps_the_cached_token(django_assert_num_queries):
    """A sign-in saves only last_login: the token's cached answer stays (no token read on each login), and
    the next API request still needs no query."""
    from django.contrib.auth.models import update_last_login

    from marketplace.authentication import TokenAuthentication

    user = UserFactory(username="morning")
    key = Token.objects.create(user=user).key
    TokenAuthentication().authenticate_credentials(key)
    with django_assert_num_queries(1):  # the UPDATE of last_login, nothing else
        update_last_login(None, user)
    with django_assert_num_queries(0):
        TokenAuthentication().authenticate_credentials(key)


def test_a_token_deleted_in_a_transaction_is_forgotten_again_when_it_commits(django_capture_on_commit_callbacks):
    """Between a deletion and its commit another request still reads the token's row and may cache it again:
    the forget is repeated on commit, so the token is refused once the deletion is visible."""
    import time

    from django.core.cache import cache

    from marketplace.authentication import TokenAuthentication, _cache_key

    user = UserFactory(username="revoked-in-a-transaction")
    token = Token.objects.create(user=user)
    key = token.key
    with django_capture_on_commit_callbacks(execute=True):
        token.delete()
        cache.set(_cache_key(key), (time.time() + 60, user), 60)  # a concurrent request read the old row
    with pytest.raises(exceptions.AuthenticationFailed):
        TokenAuthentication().authenticate_credentials(key)
