import os
import threading

import pytest
from django.conf import settings as django_settings
from rest_framework.test import APIClient

# Fast password hashing (config/settings.py): here, since pytest-django loaded the settings before this file,
# and in the environment, for the servers, matchers and workers that tests start.
os.environ["SUANLI_TEST_FAST_PASSWORDS"] = "1"
django_settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher", "django.contrib.auth.hashers.PBKDF2PasswordHasher"]


def pytest_collection_modifyitems(config, items):
    """Tests marked `postgres` or `redis` need that service: skipped, with the reason, when it is not
    configured. CI's second pass sets DATABASE_URL and REDIS_URL, so there they all run."""
    from django.conf import settings

    missing = {
        "postgres": "postgresql" not in settings.DATABASES["default"]["ENGINE"],
        "redis": not settings.REDIS_URL,
    }
    for item in items:
        for name, absent in missing.items():
            if absent and item.get_closest_marker(name):
                item.add_marker(pytest.mark.skip(reason=f"needs {name}: CI runs it with DATABASE_URL and REDIS_URL set"))


@pytest.fixture(autouse=True, scope="session")
def _consumers_worker_threads_give_their_connections_back():
    """channels' test communicator swaps `channels.db.close_old_connections` for a no-op while a test talks to
    a consumer (so that a TestCase's transaction on the main thread survives). A consumer's database call
    that runs on a worker thread (thread_sensitive=False: the market socket's snapshot read on PostgreSQL)
    then kept its pooled connection for good: the pool lost one per call (8 after two test files), and the
    test database could not be dropped at the end ("being accessed by other users"). Worker threads close
    theirs, as in production; the main thread's connection is left alone, as channels wants."""
    from channels.testing import application
    from django.db import close_old_connections

    def close_on_worker_threads() -> None:
        if threading.current_thread() is not threading.main_thread():
            close_old_connections()

    original = application.no_op
    application.no_op = close_on_worker_threads
    yield
    application.no_op = original


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture(autouse=True)
def inline_matcher(settings):
    """API tests run the matcher in the calling thread, so each request sees its own fills at once.
    Transport tests switch to the thread or Redis matcher themselves."""
    from exchange import admission, publish, selectors, transport

    selectors.caches_clear()  # ids are reused from test to test
    publish._units.clear()
    admission._DEVICE_RATES.clear()
    settings.MATCHER_TRANSPORT = "inline"
    transport._client = None
    transport.InlineClient.reset()
    yield
    transport._client = None
    transport.InlineClient.reset()


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """Each test gets its own channel layer. channels_redis keeps its receive state on the layer (a lock bound to
    the event loop of the first receiver, and a count of receivers): a consumer still receiving when a test's
    event loop ended (a socket the server closed and the test did not disconnect) left that state bound to a
    dead loop, and a later test's receive failed with "bound to a different event loop" (CI, Redis pass)."""
    yield
    from channels.layers import channel_layers

    channel_layers.backends.clear()
