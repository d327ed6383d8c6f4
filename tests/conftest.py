import os

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
