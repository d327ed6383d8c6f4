import pytest
from rest_framework.test import APIClient


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture(autouse=True)
def inline_matcher(settings):
    """API tests run the matcher in the calling thread, so each request sees its own fills at once.
    Transport tests switch to the thread or Redis matcher themselves."""
    from exchange import transport

    settings.MATCHER_TRANSPORT = "inline"
    transport._client = None
    transport.InlineClient.reset()
    yield
    transport._client = None
    transport.InlineClient.reset()
