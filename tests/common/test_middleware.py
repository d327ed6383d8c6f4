"""common.middleware.LazyMessageMiddleware: messages work as with Django's middleware; a request that never
uses them does not make the storage."""

import pytest
from django.utils.functional import empty

from common import middleware

pytestmark = pytest.mark.urls("tests.common.message_urls")


@pytest.fixture
def storages_made(monkeypatch):
    made = []
    real = middleware.default_storage

    def counting(request):
        made.append(request.path)
        return real(request)

    monkeypatch.setattr(middleware, "default_storage", counting)
    return made


def test_a_message_added_before_a_redirect_is_shown_once_after_it(client, storages_made):
    response = client.get("/add/")
    assert response.status_code == 302 and "messages" in response.cookies
    assert client.get("/show/").content == b"Saved."
    assert client.get("/show/").content == b""  # shown once
    assert storages_made == ["/add/", "/show/", "/show/"]


def test_a_request_that_uses_no_messages_makes_no_storage_and_sets_no_cookie(client, storages_made):
    response = client.get("/plain/")
    assert response.status_code == 200 and "messages" not in response.cookies
    assert storages_made == []
    assert response.wsgi_request._messages._wrapped is empty  # with Django's middleware: a FallbackStorage
