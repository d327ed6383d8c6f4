from __future__ import annotations

import orjson
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, permissions, status
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from exchange.models import Contract
from marketplace.models import MemberRole, Organisation, OrganisationKind
from marketplace.permissions import IsNotRegulator
from marketplace.selectors import organisation_ids_for_user
from metering import selectors, services
from metering.api import serializers as s
from metering.models import DeliveryStatus

SUBMIT_ROLES = (MemberRole.ADMIN, MemberRole.TRADER)


class UsageEventsIngest(APIView):
    """A supplier's batch of usage events. The body is parsed once (orjson) and validated in bulk: a
    serializer per event costs more than the whole database insert for 10,000 of them."""

    permission_classes = [permissions.IsAuthenticated, IsNotRegulator]

    @extend_schema(
        request=s.UsageBatchInSerializer,
        responses={200: s.UsageBatchResultSerializer},
        description="Up to 10,000 events, as {\"events\": [...]} or the list itself. Each event is answered "
        "accepted (with its rated standard units), duplicate (its event_id was accepted before: dropped, never "
        "counted twice) or rejected with a reason code: invalid (see errors), unknown_contract, contract_settled, "
        "outside_window, late, in_future, wrong_data_centre, device_model_not_eligible, too_many_devices, "
        "over_quantity. One bad event never rejects the others.",
    )
    def post(self, request):
        supplier_ids = set(Organisation.objects.filter(pk__in=organisation_ids_for_user(request.user, SUBMIT_ROLES),
                                                       kind__in=(OrganisationKind.SUPPLIER, OrganisationKind.BOTH)).values_list("pk", flat=True))
        if not supplier_ids:
            return Response({"non_field_errors": ["Only a supplier's trader or admin submits usage."]}, status=status.HTTP_403_FORBIDDEN)
        try:
            body = orjson.loads(request._request.body)
        except orjson.JSONDecodeError:
            raise ValidationError({"non_field_errors": ["The body is not valid JSON."]}) from None
        if isinstance(body, dict):
            unknown = sorted(set(body) - {"events"})
            if unknown:
                raise ValidationError({name: ["Unknown field."] for name in unknown})
            body = body.get("events")
        if not isinstance(body, list) or not body:
            raise ValidationError({"events": [f"A list of 1 to {services.MAX_BATCH} events."]})
        if len(body) > services.MAX_BATCH:
            raise ValidationError({"events": [f"At most {services.MAX_BATCH} events per batch; this one has {len(body)}."]})
        outcome = services.usage_batch_ingest(supplier_ids=supplier_ids, events=body)
        payload = {
            "accepted": outcome.accepted, "duplicates": outcome.duplicates, "rejected": outcome.rejected,
            "results": outcome.results, "contracts": {str(k): v for k, v in outcome.contracts.items()},
        }
        return HttpResponse(orjson.dumps(payload), content_type="application/json")


class ContractList(generics.ListAPIView):
    """Your organisations' contracts (as buyer or seller) with their delivery state."""

    serializer_class = s.ContractDeliverySerializer
    permission_classes = [permissions.IsAuthenticated]
    ordering_fields = ["id"]

    @extend_schema(parameters=[
        OpenApiParameter("delivery_status", str, enum=list(DeliveryStatus.values)),
        OpenApiParameter("role", str, enum=["buyer", "seller"], description="only contracts where you are this side"),
    ])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        qs = selectors.contract_list_for_user(self.request.user).order_by("-id")
        wanted = self.request.query_params.get("delivery_status")
        if wanted:
            if wanted not in DeliveryStatus.values:
                raise ValidationError({"delivery_status": [f"One of {', '.join(DeliveryStatus.values)}."]})
            qs = qs.filter(delivery__isnull=True) if wanted == DeliveryStatus.OPEN else qs
            if wanted != DeliveryStatus.OPEN:
                qs = qs.filter(delivery__status=wanted)
        role = self.request.query_params.get("role")
        if role:
            if role not in ("buyer", "seller"):
                raise ValidationError({"role": ["buyer or seller."]})
            orgs = organisation_ids_for_user(self.request.user)
            qs = qs.filter(**{f"{role}_id__in": orgs})
        return qs


class ContractDetail(generics.RetrieveAPIView):
    """One contract's delivery, its disputes and its ledger history (both parties see the same)."""

    serializer_class = s.ContractDeliveryDetailSerializer
    permission_classes = [permissions.IsAuthenticated]

    def get_queryset(self):
        return selectors.contract_list_for_user(self.request.user).prefetch_related("disputes__opened_by", "disputes__resolved_by")


class ContractDispute(APIView):
    """The buyer disputes the contract's metering (before its grace period ends); escrow stops moving."""

    permission_classes = [permissions.IsAuthenticated, IsNotRegulator]

    @extend_schema(request=s.DisputeOpenSerializer, responses={201: s.DisputeSerializer})
    def post(self, request, pk: int):
        # Before the body: a contract that is not among the user's purchases is 404 whatever was sent.
        get_object_or_404(Contract.objects.filter(buyer_id__in=organisation_ids_for_user(request.user, SUBMIT_ROLES)), pk=pk)
        data = s.DisputeOpenSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        dispute = services.dispute_open(contract_id=pk, user=request.user, reason=data.validated_data["reason"])
        return Response(s.DisputeSerializer(dispute).data, status=status.HTTP_201_CREATED)


class DisputeList(generics.ListAPIView):
    """Disputes on your organisations' contracts (all, for operators and regulators)."""

    serializer_class = s.DisputeSerializer
    permission_classes = [permissions.IsAuthenticated]

    def get_queryset(self):
        return selectors.dispute_list_for_user(self.request.user).order_by("-id")


class DisputeResolve(APIView):
    """An operator resolves a dispute by setting the contract's delivered units; one adjustment entry moves
    the money."""

    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(request=s.DisputeResolveSerializer, responses={200: s.DisputeSerializer})
    def post(self, request, pk: int):
        get_object_or_404(selectors.dispute_list_for_user(request.user), pk=pk)
        if not request.user.is_operator:  # before the body: a refusal, not a 400 for what was sent
            raise PermissionDenied("Only an operator resolves disputes.")
        data = s.DisputeResolveSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        dispute = services.dispute_resolve(dispute_id=pk, user=request.user, **data.validated_data)
        return Response(s.DisputeSerializer(dispute).data)


class Metrics(APIView):
    """Delivered PFLOPS-hours, utilisation, energy and carbon per unit, and latency class per contract,
    data centre, supplier or product: the regulator's efficiency indicators."""

    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(
        parameters=[
            OpenApiParameter("group_by", str, enum=list(selectors.METRIC_GROUPS), default="data_centre"),
            OpenApiParameter("from", str, description="usage starting at or after (ISO 8601)"),
            OpenApiParameter("to", str, description="usage starting before (ISO 8601)"),
        ],
        responses={200: s.MetricsSerializer},
    )
    def get(self, request):
        group_by = request.query_params.get("group_by", "data_centre")
        if group_by not in selectors.METRIC_GROUPS:
            raise ValidationError({"group_by": [f"One of {', '.join(selectors.METRIC_GROUPS)}."]})
        bounds = {}
        for name in ("from", "to"):
            raw = request.query_params.get(name)
            if raw:
                value = parse_datetime(raw)
                if value is None or value.tzinfo is None:
                    raise ValidationError({name: ["An ISO 8601 time with a time zone."]})
                bounds[name] = value
        rows = selectors.metrics_report(user=request.user, group_by=group_by, start=bounds.get("from"), end=bounds.get("to"))
        return Response(s.MetricsSerializer({"group_by": group_by, "groups": rows}).data)
