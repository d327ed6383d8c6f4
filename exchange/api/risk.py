"""Operators' risk controls: kill switches and per-account limits (/api/v1/risk/...). Regulators read."""

from __future__ import annotations

import re

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import permissions, serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from common.api import StrictFieldsMixin
from common.money import cny_to_fen, fen_to_cny
from exchange import risk
from exchange.models import KillScope, KillSwitch, RiskLimit
from marketplace.models import Instrument, Organisation

RATE = re.compile(r"^[1-9][0-9]{0,6}/(s|sec|m|min|h|hour|d|day)$")


class IsOperatorOrRegulatorReading(permissions.BasePermission):
    message = "Only platform operators may change risk controls (regulators may read them)."

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        return user.is_operator or (request.method in permissions.SAFE_METHODS and user.is_regulator)


# --- Kill switches ---------------------------------------------------------------------------------------


class KillSwitchSerializer(serializers.ModelSerializer):
    active = serializers.BooleanField(read_only=True)

    class Meta:
        model = KillSwitch
        fields = ["id", "scope", "organisation", "instrument", "reason", "active", "pulled_by", "pulled_at",
                  "released_by", "released_at", "release_reason", "idempotency_key"]
        read_only_fields = fields


class KillSwitchInSerializer(StrictFieldsMixin, serializers.Serializer):
    scope = serializers.ChoiceField(choices=KillScope.choices)
    organisation = serializers.PrimaryKeyRelatedField(queryset=Organisation.objects.all(), required=False, allow_null=True,
                                                      help_text="scope account: the account (organisation) to stop")
    instrument = serializers.PrimaryKeyRelatedField(queryset=Instrument.objects.all(), required=False, allow_null=True,
                                                    help_text="scope instrument: the instrument to stop")
    reason = serializers.CharField(max_length=200, help_text="Why: kept with the switch and in the audit log")
    idempotency_key = serializers.CharField(
        max_length=100, required=False, allow_blank=False,
        help_text="Yours, per pull: a retry with it answers with the switch it pulled (200), even once released")

    def validate(self, attrs):
        scope = attrs["scope"]
        errors = {}
        for name, needed in (("organisation", scope == KillScope.ACCOUNT), ("instrument", scope == KillScope.INSTRUMENT)):
            if needed and attrs.get(name) is None:
                errors[name] = [f"Required for scope {scope}."]
            elif not needed and attrs.get(name) is not None:
                errors[name] = [f"Not allowed for scope {scope}."]
        if errors:
            raise ValidationError(errors)
        return attrs


class KillSwitchReleaseSerializer(StrictFieldsMixin, serializers.Serializer):
    reason = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")


def _switch_payload(switch: KillSwitch, sync: risk.SyncResult) -> dict:
    return {**KillSwitchSerializer(switch).data, "matchers_confirmed": sync.confirmed, "orders_cancelled": sync.cancelled}


_SWITCH_OUT = inline_serializer("KillSwitchChange", {
    **{name: serializers.CharField() for name in KillSwitchSerializer.Meta.fields},
    "matchers_confirmed": serializers.BooleanField(help_text="every matcher shard applied it (else each will within a second)"),
    "orders_cancelled": serializers.IntegerField(help_text="resting orders the matchers cancelled in answer"),
})


class KillSwitchListCreate(APIView):
    """Kill switches. POST pulls one: within a second every matcher refuses new orders and amends in its scope
    (cancels still work) and cancels what rests there. Pulling one already active answers 200 with it."""

    permission_classes = [IsOperatorOrRegulatorReading]

    @extend_schema(parameters=[OpenApiParameter("status", str, enum=["active", "released", "all"], description="default active")],
                   responses=KillSwitchSerializer(many=True))
    def get(self, request):
        wanted = request.query_params.get("status", "active")
        if wanted not in ("active", "released", "all"):
            raise ValidationError({"status": ["One of active, released, all."]})
        qs = KillSwitch.objects.order_by("-id")
        if wanted != "all":
            qs = qs.filter(released_at__isnull=wanted == "active")
        return Response(KillSwitchSerializer(qs[:500], many=True).data)

    @extend_schema(request=KillSwitchInSerializer, responses={201: _SWITCH_OUT, 200: _SWITCH_OUT})
    def post(self, request):
        data = KillSwitchInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        switch, created, sync = risk.kill_switch_pull(user=request.user, scope=v["scope"], reason=v["reason"],
                                                      organisation=v.get("organisation"), instrument=v.get("instrument"),
                                                      idempotency_key=v.get("idempotency_key"))
        return Response(_switch_payload(switch, sync), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class KillSwitchDetail(APIView):
    """One switch; DELETE releases it (trading may resume; cancelled orders are not restored)."""

    permission_classes = [IsOperatorOrRegulatorReading]

    @extend_schema(responses=KillSwitchSerializer)
    def get(self, request, pk):
        return Response(KillSwitchSerializer(get_object_or_404(KillSwitch, pk=pk)).data)

    @extend_schema(request=KillSwitchReleaseSerializer, responses=_SWITCH_OUT)
    def delete(self, request, pk):
        switch = get_object_or_404(KillSwitch, pk=pk)
        data = KillSwitchReleaseSerializer(data=request.data or {})
        data.is_valid(raise_exception=True)
        switch, sync = risk.kill_switch_release(user=request.user, switch=switch, reason=data.validated_data["reason"])
        return Response(_switch_payload(switch, sync))


# --- Limits -------------------------------------------------------------------------------------------------


class CnyLimitField(serializers.DecimalField):
    def __init__(self, **kwargs):
        super().__init__(max_digits=16, decimal_places=2, min_value=0, required=False, allow_null=True, **kwargs)


class RiskLimitInSerializer(StrictFieldsMixin, serializers.Serializer):
    """Overrides; null (or "" for the rate) returns a limit to the venue default."""

    max_open_orders = serializers.IntegerField(min_value=1, required=False, allow_null=True, help_text="resting orders at once")
    max_open_notional = CnyLimitField(help_text="CNY: price x open quantity summed over resting orders, both sides")
    max_order_notional = CnyLimitField(help_text="CNY: one order's price x quantity (fat-finger limit)")
    order_rate = serializers.CharField(max_length=20, required=False, allow_blank=True, help_text='orders per period: "50/s", "600/min"')
    note = serializers.CharField(max_length=200, required=False, allow_blank=True)

    def validate_order_rate(self, value: str) -> str:
        if value and not RATE.match(value):
            raise ValidationError('A count and a period, e.g. "50/s", "600/min", "10000/hour".')
        return value


_LIMITS_OUT = inline_serializer("RiskLimits", {
    "organisation": serializers.IntegerField(),
    "overrides": serializers.DictField(help_text="the organisation's own values (null: venue default)"),
    "effective": serializers.DictField(help_text="what the matcher enforces"),
    "note": serializers.CharField(),
    "updated_at": serializers.DateTimeField(allow_null=True),
})


def _cny(fen: int | None) -> str | None:
    return None if fen is None else str(fen_to_cny(fen))


def _limits_payload(organisation_id: int, row: RiskLimit | None) -> dict:
    eff = risk.limits_of(row, risk.default_limits())

    def shown(limits) -> dict:
        return {"max_open_orders": limits.max_open_orders, "max_open_notional": _cny(limits.max_open_notional_fen),
                "max_order_notional": _cny(limits.max_order_notional_fen), "order_rate": limits.order_rate or None}

    return {
        "organisation": organisation_id,
        "overrides": shown(risk.Limits(row.max_open_orders, row.max_open_notional_fen, row.max_order_notional_fen, row.order_rate))
        if row else shown(risk.Limits(None, None, None, None)),
        "effective": shown(eff),
        "note": row.note if row else "",
        "updated_at": row.updated_at if row else None,
    }


class RiskLimitList(APIView):
    """Every organisation with its own limits, and the venue defaults."""

    permission_classes = [IsOperatorOrRegulatorReading]

    @extend_schema(operation_id="v1_risk_limits_list", responses={200: inline_serializer("RiskLimitList", {"defaults": serializers.DictField(), "organisations": serializers.ListField(child=serializers.DictField())})})
    def get(self, request):
        defaults = _limits_payload(0, None)["effective"]
        rows = RiskLimit.objects.order_by("organisation_id")
        return Response({"defaults": defaults, "organisations": [_limits_payload(r.organisation_id, r) for r in rows]})


class RiskLimitDetail(APIView):
    """One organisation's limits. PATCH/PUT sets overrides (null: back to the default), DELETE drops them all.
    Matchers apply changes at once (and reload them every second)."""

    permission_classes = [IsOperatorOrRegulatorReading]

    @extend_schema(responses=_LIMITS_OUT)
    def get(self, request, organisation):
        org = get_object_or_404(Organisation, pk=organisation)
        return Response(_limits_payload(org.pk, RiskLimit.objects.filter(organisation=org).first()))

    @extend_schema(request=RiskLimitInSerializer, responses=_LIMITS_OUT)
    def patch(self, request, organisation):
        return self._set(request, organisation, partial=True)

    @extend_schema(request=RiskLimitInSerializer, responses=_LIMITS_OUT)
    def put(self, request, organisation):
        return self._set(request, organisation, partial=False)

    def _set(self, request, organisation, *, partial: bool):
        org = get_object_or_404(Organisation, pk=organisation)
        data = RiskLimitInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        names = {"max_open_orders": "max_open_orders", "max_open_notional": "max_open_notional_fen",
                 "max_order_notional": "max_order_notional_fen", "order_rate": "order_rate", "note": "note"}
        values = {}
        for name, field in names.items():
            if name not in v and partial:
                continue
            value = v.get(name)
            if field.endswith("_fen") and value is not None:
                value = cny_to_fen(value)
            if value is None and field in ("order_rate", "note"):
                value = ""
            values[field] = value
        row, _ = risk.risk_limit_set(user=request.user, organisation=org, **values)
        return Response(_limits_payload(org.pk, row))

    @extend_schema(request=None, responses=_LIMITS_OUT)
    def delete(self, request, organisation):
        org = get_object_or_404(Organisation, pk=organisation)
        risk.risk_limit_clear(user=request.user, organisation=org)
        return Response(_limits_payload(org.pk, None))


# --- Matchers ----------------------------------------------------------------------------------------------


_MATCHER_OUT = inline_serializer("MatcherLoad", {
    "shard": serializers.IntegerField(),
    "serving": serializers.BooleanField(help_text="the shard wrote its figures within the last 3 seconds (it does once a second)"),
    "started": serializers.DateTimeField(allow_null=True),
    "updated": serializers.DateTimeField(allow_null=True),
    "batches": serializers.IntegerField(help_text="batches served since it started"),
    "commands": serializers.IntegerField(help_text="commands (orders, cancels, amends) in them"),
    "busy_seconds": serializers.FloatField(help_text="time spent on them: read twice, the change over the time between is the share busy"),
}, many=True)


class MatcherLoadList(APIView):
    """Each matcher shard: is it serving, and how busy is it (README, "Scaling out")."""

    permission_classes = [IsOperatorOrRegulatorReading]

    @extend_schema(responses=_MATCHER_OUT)
    def get(self, request):
        from exchange.transport import matcher_load

        return Response(matcher_load())
