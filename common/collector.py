"""Python's cyclic garbage collector, set for serving requests.

Every Django/DRF request leaves ~100 objects in reference cycles (the view and its Request hold each other
through `parser_context`, the lazy `request.user` closes over the request, the messages storage holds the
request that holds it), which only the cyclic collector frees. Under load, a threaded worker's in-flight
requests were alive at each young collection, so their objects were promoted and died in the oldest
generation: a worker then spent 85-185 ms in one full collection about once a second, with everything
loaded since start-up walked again each time, and REST order entry's p99 was that pause; uvicorn paused
50-60 ms a dozen times a minute under websocket load (bench/RESULTS.md, eighteenth session). Both servers
(config.wsgi, config.asgi) make two settings once their code is loaded:

- `gc.freeze()`: what start-up built (modules, settings, URL patterns, the app) moves to a permanent
  generation that collections skip; under `gunicorn --preload` the workers inherit it frozen, and its pages
  stay shared between them;
- a young generation of 10,000 allocations instead of 700: a young collection then comes after many
  requests have finished, so their cycles are freed young, and far fewer live objects are promoted.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000


def tune_for_serving() -> None:
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
