"""ASGI entry point: HTTP through Django, websockets through Channels (routes from each app's routing)."""

import os
import sys
import warnings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# whitenoise hands Django a synchronous file iterator; under ASGI Django reads it in a thread, which is
# correct but warns on every static file.
warnings.filterwarnings("ignore", message="StreamingHttpResponse must consume synchronous iterators")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from common.collector import tune_for_serving  # noqa: E402
from config.routing import websocket_app  # noqa: E402
from config.scheduler import start_embedded_scheduler  # noqa: E402
from config.startup import describe_backends  # noqa: E402
from ledger.payments.base import announce as announce_payments  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # A foreign or missing Origin is refused on every route (exchange.ws_auth).
        # The public market stream skips the session middleware; /ws/user/ gets session, token and API-key auth.
        "websocket": websocket_app(),
    }
)

print(describe_backends(), file=sys.stderr, flush=True)
announce_payments()
start_embedded_scheduler()
if settings.MATCHER_TRANSPORT == "thread":
    # The embedded matcher starts with the server, so it recovers pending work before the first request.
    from exchange import transport  # noqa: E402

    transport.client()
tune_for_serving()  # last: what start-up built is frozen out of the collector's scans (common/collector.py)
