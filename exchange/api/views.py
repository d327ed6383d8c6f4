from __future__ import annotations

import datetime as dt
import functools

import django_filters
import redis
from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, permissions, status
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.throttling import UserRateThrottle
from rest_framework.views import APIView

from common.api import NewestFirst, whole_number
from common.filters import UtcIsoDateTimeFilter
from common.money import format_cny
from exchange import risk, selectors, services, transport
from exchange.api import serializers as s
from exchange.models import Order, OrderStatus, Trade
from marketplace.models import Instrument
from marketplace.permissions import IsNotRegulator
from marketplace.selectors import NotAMember, acting_organisation, organisation_ids_for_user


class OrderRateThrottle(UserRateThrottle):
    """Per-account order-entry rate, shared by REST and websocket order entry, by every trader of the account
    and by every web process (through the cache: Redis when configured). The rate is the organisation's
    override (exchange.RiskLimit.order_rate, cached per process for a few seconds) or the default, settings
    REST_FRAMEWORK DEFAULT_THROTTLE_RATES["orders"]. A request whose organisation cannot be told (several,
    none named; it is refused after) counts against its user at the default rate.

    A fixed window counted with one INCR (DRF's sliding window reads and rewrites a pickled list of request
    times twice per request): at most `rate` orders per window, so a burst straddling two windows can
    reach twice the rate for an instant. 429 with Retry-After = the seconds left in the window."""

    scope = "orders"

    def get_rate(self) -> str | None:
        # Read at request time (DRF binds THROTTLE_RATES at import), so the setting can change at run time.
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def allow_request(self, request, view) -> bool:
        if not request.user or not request.user.is_authenticated:
            return True
        [wait] = self.allow_many(request.user, [request])
        self.wait_seconds = wait or 0.0
        return wait is None

    def allow_many(self, user, requests: list) -> list[float | None]:
        """Several orders at once (a websocket's pipelined frames; `requests` as allow_request reads them):
        per order None within the rate, else the seconds to wait. One INCRBY per account, counted in order."""
        return self.allow_each([(user, requests)])[0]

    def allow_each(self, items: list[tuple]) -> list[list[float | None]]:
        """allow_many for several users' orders at once ((user, requests) pairs: the placements a websocket
        process gathered from its sockets), all counted in one Redis round trip."""
        waits: list[list[float | None]] = [[None] * len(requests) for _, requests in items]
        groups: dict[str, tuple[tuple, list[tuple[int, int]]]] = {}
        for a, (user, requests) in enumerate(items):
            for i, request in enumerate(requests):
                window = self._window(user, _account_of(request))
                if window is not None:
                    groups.setdefault(window[0], (window, []))[1].append((a, i))
        totals = _count_many([(key, int(window[2]) + 1, len(indexes)) for key, (window, indexes) in groups.items()])
        for ((_, allowed, _, wait), indexes), total in zip(groups.values(), totals, strict=True):
            for n, (a, i) in enumerate(indexes, start=total - len(indexes) + 1):
                if n > allowed:
                    waits[a][i] = max(wait, 1)
        return waits

    def _window(self, user, organisation: int | None) -> tuple[str, int, float, float] | None:
        """(counter key, orders allowed, window seconds, seconds left in it) for an order, or None: no limit."""
        if organisation is not None:
            rate, who = risk.order_rate_for(organisation), f"org:{organisation}"
        else:
            rate, who = self.rate, str(user.pk)
        if rate is None:
            return None
        allowed, duration = self.parse_rate(rate)
        now = self.timer()
        window = int(now // duration)
        return f"throttle:{self.scope}:{who}:{window}", allowed, duration, (window + 1) * duration - now

    def gate(self, user, organisation: int) -> transport.Gate | None:
        """The limit as a gate on the order's push to the matcher (transport.send): counted and queued in one
        Redis round trip when the counter is on the transport's Redis. None: no limit."""
        window = self._window(user, organisation)
        if window is None:
            return None
        key, allowed, duration, self.wait_seconds = window
        ttl = int(duration) + 1
        backend = caches["default"]
        same_redis = isinstance(backend, RedisCache) and settings.CACHES["default"].get("LOCATION") == settings.REDIS_URL
        return transport.Gate(count=functools.partial(_count, key, ttl), allowed=allowed, ttl=ttl,
                              redis_key=backend.make_and_validate_key(key) if same_redis else None)

    def wait(self) -> float:
        return max(self.wait_seconds, 1)


def _account_of(request) -> int | None:
    """The organisation an order is placed for, from the per-process membership cache (no query as a rule)."""
    named = getattr(request, "organisation", None) if not hasattr(request, "data") else (
        request.data.get("organisation") if isinstance(request.data, dict) else None)
    try:
        return selectors.trading_organisation_get(request.user, named).pk
    except Exception:  # refused with its own message once the request is handled
        return None


# INCRBY, and EXPIRE when the count is new, in one round trip and atomically (two commands were two round
# trips for most orders: with a one-second window, an account's first order of the second is the usual case).
_COUNT_LUA = transport.COUNT_LUA + "return n\n"


def _count(key: str, ttl: int, n: int = 1) -> int:
    """Add `n` to a counter that expires after `ttl` seconds; returns the new count. On Redis one script
    (EVALSHA): INCRBY, and EXPIRE after the window's first."""
    backend = caches["default"]
    if isinstance(backend, RedisCache):
        raw = backend.make_and_validate_key(key)
        client, script = _count_script(backend, raw)
        return int(script(keys=[raw], args=[n, ttl], client=client))
    backend.add(key, 0, ttl)
    return backend.incr(key, n)


_count_scripts: dict = {}  # connection pool -> the counter script (its SHA known after the first EVALSHA)


def _count_script(backend: RedisCache, raw_key: str):
    """(This thread's write client of the cache, the counter script for its pool.) The script is made once per
    pool and always called with the caller's client. It is registered on a pooled client of its own, which
    holds no connection: a thread's client (common/cache.py keeps one per thread, holding a connection) would
    stay referenced, with its connection, after its thread ended."""
    client = backend._cache.get_client(raw_key, write=True)
    pool = client.connection_pool
    script = _count_scripts.get(pool)
    if script is None:
        script = _count_scripts.setdefault(pool, redis.Redis(connection_pool=pool).register_script(_COUNT_LUA))
    return client, script


def _count_many(counts: list[tuple[str, int, int]]) -> list[int]:
    """_count for several (key, ttl, n) at once: on Redis one pipeline of the script, one round trip."""
    if len(counts) <= 1:
        return [_count(*c) for c in counts]
    backend = caches["default"]
    if not isinstance(backend, RedisCache):
        return [_count(*c) for c in counts]
    raws = [backend.make_and_validate_key(key) for key, _, _ in counts]
    client, script = _count_script(backend, raws[0])
    pipe = client.pipeline(transaction=False)
    for raw, (_, ttl, n) in zip(raws, counts, strict=True):
        script(keys=[raw], args=[n, ttl], client=pipe)
    return [int(total) for total in pipe.execute()]


class OrderFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=OrderStatus.choices)
    since = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    updated_since = UtcIsoDateTimeFilter(field_name="updated_at", lookup_expr="gte", help_text="orders changed since (to catch up after a reconnect)")

    class Meta:
        model = Order
        fields = ["instrument", "status", "side", "client_order_id", "organisation", "since", "updated_since"]


def _refresh(order: Order) -> Order:
    """The order as stored now (after the matcher's batch, when it answered)."""
    return selectors.order_with_fills().get(pk=order.pk)


class OrderListCreate(generics.ListAPIView):
    """Your organisations' orders; POST places one (idempotent on client_order_id)."""

    pagination_class = NewestFirst
    serializer_class = s.OrderSerializer
    permission_classes = [permissions.IsAuthenticated, IsNotRegulator]
    filterset_class = OrderFilter
    ordering_fields = ["id", "created_at"]

    def get_throttles(self):
        # POST counts against the order rate in post(): with the push to the matcher, or when refused before it.
        return [] if self.request.method == "POST" else super().get_throttles()

    def get_queryset(self):
        return selectors.order_list_for_user(self.request.user).order_by("-id")

    @extend_schema(
        request=s.OrderInSerializer,
        responses={201: s.OrderSerializer, 200: s.OrderSerializer, 202: s.OrderPendingSerializer},
        description="Answers with the order after matching (201, or 200 for a retry with the same client_order_id), "
        "or 202 when the matcher did not answer in time: the order is queued; ask for it by client_order_id.",
    )
    def post(self, request):
        throttle = OrderRateThrottle()
        try:
            v = s.order_in_validated(request.data)
            organisation = selectors.trading_organisation_get(request.user, v.pop("organisation", None))
            command = services.order_command(user=request.user, organisation=organisation, request=services.OrderRequest(**v))
        except Exception:
            # Refused before the matcher: it counts against the rate all the same, and past it the answer is 429.
            if not throttle.allow_request(request, self):
                self.throttled(request, throttle.wait())
            raise
        try:
            placed = services.order_submit(command, gate=throttle.gate(request.user, organisation.pk))
        except transport.RateExceeded:
            self.throttled(request, throttle.wait())
        if placed.state is None:
            return Response(
                {"client_order_id": v["client_order_id"], "instrument": v["instrument"].pk, "status": "pending", "confirmed": False,
                 "detail": "Queued: the matcher has not answered yet. GET /api/v1/orders/by-client-id/{client_order_id}/ shortly."},
                status=status.HTTP_202_ACCEPTED,
            )
        return Response(s.order_payload(placed.state, v["instrument"]), status=status.HTTP_201_CREATED if placed.created else status.HTTP_200_OK)


class OrderDetail(APIView):
    """One of your orders: GET it, PATCH price/quantity (amend), DELETE it (cancel)."""

    permission_classes = [permissions.IsAuthenticated, IsNotRegulator]

    def _order(self, request, pk=None, client_order_id=None) -> Order:
        qs = selectors.order_list_for_user(request.user)
        if client_order_id is not None:
            orgs = organisation_ids_for_user(request.user)
            qs = qs.filter(client_order_id=client_order_id, organisation_id__in=orgs)
            return get_object_or_404(qs.order_by("-id")[:1])
        return get_object_or_404(qs, pk=pk)

    @extend_schema(responses=s.OrderSerializer)
    def get(self, request, pk=None, client_order_id=None):
        return Response(s.OrderSerializer(self._order(request, pk, client_order_id)).data)

    @extend_schema(request=s.OrderAmendSerializer, responses=s.OrderSerializer)
    def patch(self, request, pk=None, client_order_id=None):
        order = self._order(request, pk, client_order_id)
        data = s.OrderAmendSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        order, price, open_qty = services.order_amend_prepare(user=request.user, order=order, **data.validated_data)
        replies = transport.send([{"op": "amend", "order": order.pk, "instrument": order.instrument_id, "price": price, "quantity": open_qty, "actor": request.user.pk}])
        if replies and replies[0].get("rejected"):
            raise services.amend_refused(replies[0])
        if replies is None:
            return Response({"detail": "The matcher did not answer in time; the amend may still apply. Check the order."}, status=status.HTTP_504_GATEWAY_TIMEOUT)
        return Response(s.OrderSerializer(_refresh(order)).data)

    @extend_schema(responses={200: s.OrderSerializer, 202: s.OrderSerializer})  # the cancelled order (not 204); 202: matcher late
    def delete(self, request, pk=None, client_order_id=None):
        order = services.order_cancel_request(user=request.user, order=self._order(request, pk, client_order_id))
        replies = transport.send([{"op": "cancel", "order": order.pk, "instrument": order.instrument_id, "actor": request.user.pk}])
        code = status.HTTP_200_OK if replies is not None else status.HTTP_202_ACCEPTED
        return Response(s.OrderSerializer(_refresh(order)).data, status=code)


class CancelAll(APIView):
    permission_classes = [permissions.IsAuthenticated, IsNotRegulator]

    @extend_schema(request=s.CancelAllSerializer, responses={200: dict})
    def post(self, request):
        data = s.CancelAllSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        wanted = data.validated_data.get("organisation")
        try:
            organisation = acting_organisation(request.user, wanted, services.TRADING_ROLES)
        except NotAMember as exc:  # a member in another role (a viewer) is refused; other organisations stay 404
            memberships = request.user.memberships.all() if wanted is None else request.user.memberships.filter(organisation_id=wanted)
            if exc.status_code == 404 and memberships.exists():
                raise PermissionDenied("Only an organisation's traders and admins cancel its orders.") from exc
            raise
        instrument = data.validated_data.get("instrument")
        # Record the cancels durably first, then ask the matcher.
        open_orders = list(services.orders_open_for(organisation=organisation, instrument=instrument))
        for order in open_orders:
            services.order_cancel_request(user=request.user, order=order)
        commands = [{"op": "cancel", "order": o.pk, "instrument": o.instrument_id, "actor": request.user.pk} for o in open_orders]
        replies = transport.send(commands) if commands else []
        return Response({"requested": len(open_orders), "confirmed": replies is not None})


class FillList(generics.ListAPIView):
    """Your organisations' fills, newest first."""

    pagination_class = NewestFirst
    serializer_class = s.MyFillSerializer
    permission_classes = [permissions.IsAuthenticated]
    filterset_fields = ["instrument"]

    def get_queryset(self):
        return selectors.fill_list_for_user(self.request.user).order_by("-id")

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "organisations": organisation_ids_for_user(self.request.user)}


class TradeList(generics.ListAPIView):
    """The public tape (no counterparties)."""

    pagination_class = NewestFirst
    serializer_class = s.PublicTradeSerializer
    permission_classes = [permissions.AllowAny]
    filterset_fields = ["instrument"]

    def get_queryset(self):
        return Trade.objects.select_related("instrument").order_by("-id")


def _instrument(pk) -> Instrument:
    return get_object_or_404(Instrument.objects.select_related("product"), pk=pk)


def _prices(instrument: Instrument, levels):
    return [[str(instrument.fen_per_lot_to_price(p)), q] for p, q in levels]


class BookView(APIView):
    permission_classes = [permissions.AllowAny]

    @extend_schema(parameters=[OpenApiParameter("depth", int, required=False)], responses={200: dict})
    def get(self, request, pk):
        instrument = _instrument(pk)
        depth = whole_number(request.query_params.get("depth", "20"), 1, 500)
        if depth is None:
            raise ValidationError({"depth": ["A whole number from 1 to 500."]})
        book = selectors.book_depth_get(instrument=instrument, depth=depth)
        return Response({
            "instrument": instrument.pk, "seq": book["seq"], "checksum": book["checksum"],
            "bids": _prices(instrument, book["bids"]), "asks": _prices(instrument, book["asks"]),
            "bids_fen_per_lot": book["bids"], "asks_fen_per_lot": book["asks"],
        })


class TickerView(APIView):
    permission_classes = [permissions.AllowAny]

    @extend_schema(responses={200: dict})
    def get(self, request, pk):
        instrument = _instrument(pk)
        t = selectors.ticker_get(instrument=instrument, now=timezone.now())
        price = instrument.fen_per_lot_to_price
        return Response({
            "instrument": instrument.pk, "code": instrument.code, "status": instrument.status,
            **{k: (str(price(t[k])) if t[k] is not None else None) for k in ("last", "best_bid", "best_ask", "open_24h", "high_24h", "low_24h")},
            "volume_24h": t["volume_24h"], "value_24h": format_cny(t["value_24h_fen"]),
            "trades_24h": t["trades_24h"],
        })


class CandlesView(APIView):
    permission_classes = [permissions.AllowAny]

    @extend_schema(parameters=[OpenApiParameter("interval", str, enum=list(selectors.INTERVALS)), OpenApiParameter("since", str), OpenApiParameter("until", str)], responses={200: dict})
    def get(self, request, pk):
        instrument = _instrument(pk)
        interval = request.query_params.get("interval", "1h")
        if interval not in selectors.INTERVALS:
            raise ValidationError({"interval": [f"One of {', '.join(selectors.INTERVALS)}."]})
        until = _when(request, "until", timezone.now())
        since = _when(request, "since", until - dt.timedelta(seconds=selectors.INTERVALS[interval] * 200))
        price = instrument.fen_per_lot_to_price
        candles = selectors.candles_get(instrument=instrument, interval=interval, since=since, until=until)
        return Response({
            "instrument": instrument.pk, "interval": interval,
            "candles": [{**c, "start": dt.datetime.fromtimestamp(c["start"], dt.UTC).isoformat(), **{k: str(price(c[k])) for k in ("open", "high", "low", "close")}} for c in candles],
        })


def _when(request, name: str, default: dt.datetime) -> dt.datetime:
    raw = request.query_params.get(name)
    if not raw:
        return default
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise ValidationError({name: ["An ISO 8601 date-time."]}) from None
    return value if value.tzinfo else timezone.make_aware(value)
