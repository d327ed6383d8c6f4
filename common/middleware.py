"""Middleware of our own."""

from __future__ import annotations

from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.messages.storage import default_storage
from django.utils.functional import SimpleLazyObject, empty


class LazyMessageMiddleware(MessageMiddleware):
    """Django's MessageMiddleware with the message storage made when first used. Django makes it for every
    request (a cookie storage and a session storage behind the fallback); an API request never adds or reads
    a message, and making them was ~2.6% of a REST order's web CPU (bench/RESULTS.md, nineteenth session).
    A request that uses messages (the portal's views and templates) gets the same storage and the same
    response handling as with Django's."""

    def process_request(self, request) -> None:
        request._messages = SimpleLazyObject(lambda: default_storage(request))

    def process_response(self, request, response):
        messages = getattr(request, "_messages", None)
        if isinstance(messages, SimpleLazyObject) and messages._wrapped is empty:
            return response  # never used: nothing to store
        return super().process_response(request, response)
