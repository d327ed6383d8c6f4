"""The regulator's endpoints: read everything (orders, events, trades, contracts, ledger, audit chain,
alerts, metrics), write only alert reviews. Lists page by keyset (cursor on id), so a page costs the same
at row one million as at row one; `?export=csv` streams the whole filtered list from a server-side cursor."""

from __future__ import annotations

from django.db.models import Prefetch
from django.utils import timezone
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, permissions, status
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from common.api import NewestFirst
from exchange.models import Contract, Order, OrderEvent, Trade
from ledger.models import JournalEntry, Posting
from marketplace.selectors import organisation_ids_for_user
from metering.models import ContractDelivery, UsageEvent
from oversight import audit, exports, metrics, services
from oversight.api import filters as f
from oversight.api import serializers as s
from oversight.models import Alert, AuditCheckpoint, AuditRecord, DeletionAttestation
from oversight.services import ATTESTING_ROLES


class IsOverseer(permissions.BasePermission):
    """Regulators (and platform operators) read; nobody writes through these views unless the view says so."""

    message = "Only regulators and platform operators may read oversight data."

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated and (user.is_regulator or user.is_operator)):
            return False
        return request.method in permissions.SAFE_METHODS or request.method in getattr(view, "overseer_writes", ())


class SeqCursor(NewestFirst):
    ordering = "-seq"


class ContractCursor(NewestFirst):
    ordering = "-contract_id"


EXPORT = OpenApiParameter("export", str, enum=["csv"], required=False, description="stream the whole filtered list as CSV")


class _OverseerList(generics.ListAPIView):
    permission_classes = [IsOverseer]
    pagination_class = NewestFirst
    filter_backends = [DjangoFilterBackend]
    csv_name = ""

    @extend_schema(parameters=[EXPORT])
    def get(self, request, *args, **kwargs):
        if self.csv_name and request.query_params.get("export") == "csv":
            return exports.csv_response(self.csv_name, self.filter_queryset(self.get_queryset()))
        return super().get(request, *args, **kwargs)


class TradeTape(_OverseerList):
    """The full trade tape, counterparties included, newest first."""

    serializer_class = s.TapeTradeSerializer
    filterset_class = f.TradeFilter
    csv_name = "trades"

    def get_queryset(self):
        return Trade.objects.select_related("instrument")


class OrderList(_OverseerList):
    serializer_class = s.OversightOrderSerializer
    filterset_class = f.OrderFilter
    csv_name = "orders"

    def get_queryset(self):
        return Order.objects.select_related("instrument")


class OrderEventList(_OverseerList):
    """The order audit trail: every accepted, amended, reduced, filled, cancelled, expired and rejected
    event, with who (`actor`) and when."""

    serializer_class = s.OrderEventSerializer
    filterset_class = f.OrderEventFilter
    csv_name = "order_events"

    def get_queryset(self):
        return OrderEvent.objects.select_related("order__instrument")


class ContractList(_OverseerList):
    serializer_class = s.ContractSerializer
    filterset_class = f.ContractFilter

    def get_queryset(self):
        return Contract.objects.select_related("instrument")


class JournalEntryList(_OverseerList):
    serializer_class = s.JournalEntrySerializer
    filterset_class = f.JournalEntryFilter

    def get_queryset(self):
        return JournalEntry.objects.prefetch_related(Prefetch("postings", queryset=Posting.objects.select_related("account").order_by("id")))


class UsageEventList(_OverseerList):
    """Every accepted metering record (usage event), newest first; `?export=csv` streams them."""

    serializer_class = s.UsageEventSerializer
    filterset_class = f.UsageEventFilter
    csv_name = "usage_events"
    queryset = UsageEvent.objects.all()


class DeliveryList(_OverseerList):
    """Each contract's delivery state as metering keeps it."""

    serializer_class = s.DeliverySerializer
    filterset_class = f.DeliveryFilter
    pagination_class = ContractCursor
    queryset = ContractDelivery.objects.select_related("contract")


class AuditRecordList(_OverseerList):
    serializer_class = s.AuditRecordSerializer
    pagination_class = SeqCursor
    filterset_fields = ["kind", "object_id"]
    queryset = AuditRecord.objects.all()


class AuditCheckpointList(_OverseerList):
    serializer_class = s.AuditCheckpointSerializer
    queryset = AuditCheckpoint.objects.all()


class AuditVerify(APIView):
    """Recompute the chain and check every signed checkpoint; `sources=1` (default) also compares each
    record with its source row as it is now. Names the first broken record."""

    permission_classes = [IsOverseer]

    @extend_schema(parameters=[OpenApiParameter("sources", bool, required=False)], responses={200: dict})
    def get(self, request):
        check_sources = request.query_params.get("sources", "1").lower() not in ("0", "false", "no")
        result = audit.audit_verify(check_sources=check_sources)
        return Response({**result.as_dict(), "key_id": audit.key_id()})


class AlertList(_OverseerList):
    serializer_class = s.AlertSerializer
    filterset_class = f.AlertFilter

    def get_queryset(self):
        return Alert.objects.prefetch_related("reviews")


class AlertDetail(generics.RetrieveAPIView):
    permission_classes = [IsOverseer]
    serializer_class = s.AlertSerializer
    queryset = Alert.objects.prefetch_related("reviews")


class AlertReviewView(APIView):
    """A regulator moves an alert: open -> under_review -> closed (closing needs a note)."""

    permission_classes = [IsOverseer]
    overseer_writes = ("POST",)

    @extend_schema(request=s.AlertReviewInSerializer, responses={201: s.AlertSerializer})
    def post(self, request, pk: int):
        if not request.user.is_regulator:  # operators read alerts; reviewing them is the regulator's (before the body)
            return Response({"detail": "Only regulators review alerts."}, status=status.HTTP_403_FORBIDDEN)
        data = s.AlertReviewInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        review = services.alert_review(alert_id=pk, actor=request.user, to_status=data.validated_data["status"], note=data.validated_data["note"])
        alert = Alert.objects.prefetch_related("reviews").get(pk=review.alert_id)  # nosemgrep: object-by-id-without-owner -- overseers only (IsOverseer)
        return Response(s.AlertSerializer(alert).data, status=status.HTTP_201_CREATED)


class MetricsView(APIView):
    """Policy metrics against the city's targets, at platform, region or supplier level; `export=csv`."""

    permission_classes = [IsOverseer]

    @extend_schema(parameters=[OpenApiParameter("level", str, enum=list(metrics.LEVELS), required=False),
                               OpenApiParameter("since", str, required=False), OpenApiParameter("until", str, required=False), EXPORT],
                   responses={200: dict})
    def get(self, request):
        level = request.query_params.get("level", "platform")
        since, until = metrics.period(request.query_params.get("since"), request.query_params.get("until"))
        report = metrics.policy_metrics(level=level, since=since, until=until)
        if request.query_params.get("export") == "csv":
            return exports.metrics_csv(report)
        return Response(report)


def _is_overseer(user) -> bool:
    return user.is_authenticated and (user.is_regulator or user.is_operator)


class AttestationListCreate(generics.ListAPIView):
    """Data-deletion attestations: regulators see all, suppliers their own; a supplier's admin or trader
    POSTs one for an ended contract it sold."""

    serializer_class = s.AttestationSerializer
    permission_classes = [permissions.IsAuthenticated]
    filterset_fields = ["supplier", "contract", "method"]

    def get_queryset(self):
        qs = DeletionAttestation.objects.all().order_by("-id")
        if _is_overseer(self.request.user):
            return qs
        return qs.filter(supplier_id__in=organisation_ids_for_user(self.request.user))

    @extend_schema(request=s.AttestationInSerializer, responses={201: s.AttestationSerializer})
    def post(self, request):
        if request.user.is_regulator:
            return Response({"detail": "Regulators have read-only access."}, status=status.HTTP_403_FORBIDDEN)
        data = s.AttestationInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        attestation = services.attestation_create(actor=request.user, contract_id=data.validated_data["contract"],
                                                  method=data.validated_data["method"], note=data.validated_data["note"])
        return Response(s.AttestationSerializer(attestation).data, status=status.HTTP_201_CREATED)


class OutstandingAttestations(generics.ListAPIView):
    """Ended contracts whose supplier has not yet attested the buyer's data deleted or returned."""

    serializer_class = s.OutstandingAttestationSerializer
    permission_classes = [permissions.IsAuthenticated]
    filterset_fields = ["seller", "buyer", "instrument"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation: no request user
            return Contract.objects.none()
        qs = Contract.objects.filter(instrument__delivery_end__lte=timezone.now(), deletion_attestation__isnull=True).select_related("instrument").order_by("id")
        if _is_overseer(self.request.user):
            return qs
        orgs = organisation_ids_for_user(self.request.user, ATTESTING_ROLES)
        if not orgs:
            raise NotFound()
        return qs.filter(seller_id__in=orgs)
