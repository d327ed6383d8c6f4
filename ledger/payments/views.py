"""Payment API: thin views over `ledger.payments.services`.

Who may do what: buyers' admins and traders create top-ups; suppliers' admins request and cancel payouts;
any member reads its organisations' rows; operators confirm, reject, refund, pay and fail; regulators read
everything and write nothing (403). A row the user may not see is 404, never 403.
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.response import Response

from ledger.payments import selectors, services
from ledger.payments import serializers as s
from ledger.payments.webhooks import WebhookRejected, stripe_event_receive
from marketplace.models import MemberRole, Organisation, User
from marketplace.selectors import NotAMember, acting_organisation

IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key", str, location=OpenApiParameter.HEADER, required=True,
    description="Any unique string (1 to 200 characters). A retry with the same key and body returns the same object; "
                "the same key with a different body is refused with 409.",
)


def _idempotency_key(request) -> str:
    key = (request.headers.get("Idempotency-Key") or "").strip()
    if not key or len(key) > 200:
        raise ValidationError({"idempotency_key": [
            "Send an Idempotency-Key header of 1 to 200 characters, so that a retried request is applied once."
        ]})
    return key


def _refuse_regulators(user: User) -> None:
    if user.is_regulator:
        raise PermissionDenied("Regulators read; they do not move money.")


def _acting_for_write(user: User, organisation_id: int | None, roles: tuple[str, ...], what: str) -> Organisation:
    """The organisation the user writes for, in one of `roles`. A member in another role gets 403; an
    organisation the user does not belong to stays 404."""
    try:
        return acting_organisation(user, organisation_id, roles)
    except NotAMember as exc:
        memberships = user.memberships.all()
        if organisation_id is not None:
            memberships = memberships.filter(organisation_id=organisation_id)
        if exc.status_code == 404 and memberships.exists():
            raise PermissionDenied(f"Your role does not allow you to {what}.") from exc
        raise


class _PaymentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    permission_classes = [permissions.IsAuthenticated]
    filterset_fields = ["organisation", "status", "provider"]
    ordering_fields = ["id", "created_at", "amount_fen"]

    def _as_operator(self):
        obj = self.get_object()  # 404 first: what you cannot see does not exist
        if not self.request.user.is_operator:
            raise PermissionDenied("Only a platform operator may do this.")
        return obj

    def _input(self, serializer_class) -> dict:
        serializer = serializer_class(data=self.request.data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data


class TopUpViewSet(_PaymentViewSet):
    """Money into an organisation's wallet: Stripe Checkout, or a bank transfer an operator confirms."""

    serializer_class = s.TopUpSerializer

    def get_queryset(self):
        return selectors.top_up_list_for_user(self.request.user)

    @extend_schema(request=s.TopUpCreateSerializer, responses={201: s.TopUpSerializer, 200: s.TopUpSerializer}, parameters=[IDEMPOTENCY_KEY])
    def create(self, request):
        _refuse_regulators(request.user)
        key = _idempotency_key(request)
        data = self._input(s.TopUpCreateSerializer)
        org = _acting_for_write(request.user, data.get("organisation"), (MemberRole.ADMIN, MemberRole.TRADER), "top up this wallet")
        if not org.is_buyer:
            raise PermissionDenied("Only buyers top up a wallet.")
        top_up, created = services.top_up_create(
            organisation=org, amount_fen=data["amount"], idempotency_key=key, provider=data.get("provider"),
            bank_reference=data.get("bank_reference", ""), requested_by=request.user,
        )
        return Response(s.TopUpSerializer(top_up).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(request=s.EmptySerializer, responses=s.TopUpSerializer)
    @action(detail=True, methods=["post"])
    def confirm(self, request, pk=None):
        """Operator: the bank transfer arrived; credit the wallet (once)."""
        top_up = self._as_operator()
        self._input(s.EmptySerializer)
        return Response(s.TopUpSerializer(services.top_up_confirm(top_up=top_up, operator=request.user)).data)

    @extend_schema(request=s.EmptySerializer, responses=s.TopUpSerializer)
    @action(detail=True, methods=["post"])
    def reject(self, request, pk=None):
        """Operator: no such bank transfer arrived; the top-up fails."""
        top_up = self._as_operator()
        self._input(s.EmptySerializer)
        return Response(s.TopUpSerializer(services.top_up_reject(top_up=top_up, operator=request.user)).data)

    @extend_schema(request=s.RefundSerializer, responses=s.TopUpSerializer, parameters=[IDEMPOTENCY_KEY])
    @action(detail=True, methods=["post"])
    def refund(self, request, pk=None):
        """Operator: pay back part or all of a succeeded top-up, from the buyer's available balance."""
        top_up = self._as_operator()
        key = _idempotency_key(request)
        data = self._input(s.RefundSerializer)
        top_up = services.top_up_refund(top_up=top_up, idempotency_key=key, amount_fen=data.get("amount"), refunded_by=request.user)
        return Response(s.TopUpSerializer(top_up).data)


class PayoutViewSet(_PaymentViewSet):
    """Money out of a supplier's wallet: a Stripe Connect transfer at once, or a bank transfer an operator
    marks paid."""

    serializer_class = s.PayoutSerializer

    def get_queryset(self):
        return selectors.payout_list_for_user(self.request.user)

    @extend_schema(request=s.PayoutCreateSerializer, responses={201: s.PayoutSerializer, 200: s.PayoutSerializer}, parameters=[IDEMPOTENCY_KEY])
    def create(self, request):
        _refuse_regulators(request.user)
        key = _idempotency_key(request)
        data = self._input(s.PayoutCreateSerializer)
        org = _acting_for_write(request.user, data.get("organisation"), (MemberRole.ADMIN,), "request payouts")
        if not org.is_supplier:
            raise PermissionDenied("Only suppliers request payouts.")
        payout, created = services.payout_request(
            organisation=org, amount_fen=data["amount"], destination=data["destination"], idempotency_key=key,
            provider=data.get("provider"), requested_by=request.user,
        )
        return Response(s.PayoutSerializer(payout).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(request=s.PayoutPaySerializer, responses=s.PayoutSerializer)
    @action(detail=True, methods=["post"])
    def pay(self, request, pk=None):
        """Operator: the bank transfer went out; the held funds leave the wallet."""
        payout = self._as_operator()
        data = self._input(s.PayoutPaySerializer)
        return Response(s.PayoutSerializer(services.payout_mark_paid(payout=payout, provider_reference=data.get("reference", ""))).data)

    @extend_schema(request=s.PayoutFailSerializer, responses=s.PayoutSerializer)
    @action(detail=True, methods=["post"])
    def fail(self, request, pk=None):
        """Operator: the bank transfer failed; the held funds return to the wallet."""
        payout = self._as_operator()
        data = self._input(s.PayoutFailSerializer)
        return Response(s.PayoutSerializer(services.payout_mark_failed(payout=payout, reason=data.get("reason", ""))).data)

    @extend_schema(request=s.EmptySerializer, responses=s.PayoutSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Supplier admin: withdraw a payout not yet paid; the held funds return to the wallet."""
        payout = self.get_object()
        _refuse_regulators(request.user)
        if not request.user.memberships.filter(organisation_id=payout.organisation_id, role=MemberRole.ADMIN).exists():
            raise PermissionDenied("Only an admin of the organisation may cancel its payouts.")
        self._input(s.EmptySerializer)
        return Response(s.PayoutSerializer(services.payout_cancel(payout=payout)).data)


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    """Stripe calls this; it is authenticated by the Stripe-Signature header alone."""
    try:
        event, new = stripe_event_receive(payload=request.body, signature=request.headers.get("Stripe-Signature"))
    except WebhookRejected as exc:
        return JsonResponse({"detail": str(exc)}, status=400)
    return JsonResponse({"received": True, "event": event.event_id, "duplicate": not new})
