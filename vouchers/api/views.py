"""Vouchers over REST: thin views over vouchers.services (writes) and vouchers.selectors (reads)."""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, OpenApiTypes, extend_schema
from rest_framework import generics, permissions, status
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from common.api import Pagination, id_of
from marketplace.models import Organisation
from marketplace.permissions import IsNotRegulator
from vouchers import selectors, services
from vouchers.api import serializers as s
from vouchers.models import Programme

EXPORT = OpenApiParameter("export", str, enum=["csv"], required=False, description="the whole list as CSV")


def _fen(amount) -> int:
    return int(amount * 100)


def _programme(pk: int) -> Programme:
    p = selectors.programme_list().filter(pk=pk).first()
    if p is None:
        raise NotFound({"programme": ["No such programme."]})
    return p


def _csv(name: str, body: str) -> HttpResponse:
    response = HttpResponse(body, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}.csv"'
    return response


class ProgrammeListCreate(generics.ListAPIView):
    """Every programme with its rules and remaining budget. An authority creates one."""

    permission_classes = [permissions.IsAuthenticated, IsNotRegulator]
    serializer_class = s.ProgrammeSerializer
    pagination_class = Pagination

    def get_queryset(self):
        return selectors.programme_list().order_by("-id")

    @extend_schema(request=s.ProgrammeCreateSerializer, responses={201: s.ProgrammeSerializer})
    def post(self, request):
        services.require_authority(request.user)  # before the body: 403, not a 400 for what was sent
        data = s.ProgrammeCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = dict(data.validated_data)
        v["org_cap_per_year_fen"] = _fen(v.pop("org_cap_per_year"))
        cap = v.pop("contract_cap", None)
        if cap is not None:
            v["contract_cap_fen"] = _fen(cap)
        programme = services.programme_create(user=request.user, **v)
        return Response(s.ProgrammeSerializer(programme).data, status=status.HTTP_201_CREATED)


class ProgrammeDetail(generics.RetrieveAPIView):
    permission_classes = [permissions.IsAuthenticated]
    serializer_class = s.ProgrammeSerializer

    def get_queryset(self):
        return selectors.programme_list()


class ProgrammeFund(APIView):
    """The authority pays money into the programme budget (idempotent on the key)."""

    permission_classes = [permissions.IsAuthenticated, IsNotRegulator]

    @extend_schema(request=s.FundSerializer, responses={200: s.ProgrammeSerializer})
    def post(self, request, pk: int):
        programme = _programme(pk)  # programmes are public: a missing one is 404 for anyone
        services.require_authority(request.user)  # before the body: 403, not a 400 for what was sent
        data = s.FundSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.programme_fund(user=request.user, programme=programme, amount_fen=_fen(data.validated_data["amount"]),
                                idempotency_key=data.validated_data["idempotency_key"])
        return Response(s.ProgrammeSerializer(_programme(pk)).data)


class ProgrammeReport(APIView):
    """Utilisation for the authority and the regulator: grouped by buyer district, industry, supplier, chip
    class or domestic/imported, with the domestic share of subsidy paid."""

    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(parameters=[OpenApiParameter("by", str, enum=list(selectors.REPORT_GROUPS)), EXPORT], responses={200: OpenApiTypes.OBJECT})
    def get(self, request, pk: int):
        if not selectors.sees_all(request.user):
            raise PermissionDenied("Programme reports are for the authority, regulators and operators.")
        programme = _programme(pk)
        by = request.query_params.get("by", "district")
        if by not in selectors.REPORT_GROUPS:
            raise ValidationError({"by": [f"One of {', '.join(selectors.REPORT_GROUPS)}."]})
        report = selectors.utilisation_report(programme=programme, by=by)
        if request.query_params.get("export") == "csv":
            return _csv(f"{programme.code}-by-{by}", selectors.report_csv(report))
        return Response(report)


class ProfileDeclare(APIView):
    """An organisation admin declares its group, officers, beneficial owners and industry (checked for
    related parties before any subsidy)."""

    permission_classes = [permissions.IsAuthenticated, IsNotRegulator]

    @extend_schema(request=s.ProfileSerializer, responses={200: s.ProfileSerializer})
    def post(self, request):
        data = s.ProfileSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = dict(data.validated_data)
        org = Organisation.objects.filter(pk=v.pop("organisation")).first()  # nosemgrep: object-by-id-without-owner -- profile_declare checks the user administers it
        if org is None:
            raise NotFound({"organisation": ["No such organisation among those you administer."]})
        p = services.profile_declare(user=request.user, organisation=org, **v)
        return Response({"organisation": org.pk, "group_name": p.group_name, "officers": p.officers,
                         "beneficial_owners": p.beneficial_owners, "industry": p.industry})


class ApplicationListCreate(generics.ListAPIView):
    """Your organisations' applications (the authority and regulators see all). An admin applies."""

    permission_classes = [permissions.IsAuthenticated, IsNotRegulator]
    serializer_class = s.ApplicationSerializer
    pagination_class = Pagination

    def get_queryset(self):
        qs = selectors.application_list_for_user(self.request.user)
        wanted = self.request.query_params.get("status")
        return qs.filter(status=wanted) if wanted else qs

    @extend_schema(request=s.ApplicationInSerializer, responses={201: s.ApplicationSerializer, 200: s.ApplicationSerializer})
    def post(self, request):
        data = s.ApplicationInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        org = Organisation.objects.filter(pk=v["organisation"]).first()  # nosemgrep: object-by-id-without-owner -- application_submit checks the user administers it
        if org is None:
            raise NotFound({"organisation": ["No such organisation among those you administer."]})
        app, created = services.application_submit(
            user=request.user, programme=_programme(v["programme"]), organisation=org, credit_code=v["credit_code"],
            declared_size_class=v["declared_size_class"], requested_fen=_fen(v["requested_amount"]), industry=v["industry"],
            idempotency_key=v["idempotency_key"],
        )
        return Response(s.ApplicationSerializer(app).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class ApplicationDetail(generics.RetrieveAPIView):
    permission_classes = [permissions.IsAuthenticated]
    serializer_class = s.ApplicationSerializer

    def get_queryset(self):
        return selectors.application_list_for_user(self.request.user)


class ApplicationApprove(APIView):
    permission_classes = [permissions.IsAuthenticated, IsNotRegulator]

    @extend_schema(request=s.ApproveSerializer, responses={201: s.VoucherSerializer})
    def post(self, request, pk: int):
        services.require_authority(request.user)  # before the body: 403, not a 400 for what was sent
        data = s.ApproveSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        amount = data.validated_data.get("amount")
        voucher = services.application_approve(user=request.user, application_id=pk, amount_fen=None if amount is None else _fen(amount))
        voucher = selectors.voucher_list_for_user(request.user).get(pk=voucher.pk)
        return Response(s.VoucherSerializer(voucher).data, status=status.HTTP_201_CREATED)


class ApplicationReject(APIView):
    permission_classes = [permissions.IsAuthenticated, IsNotRegulator]

    @extend_schema(request=s.RejectSerializer, responses={200: s.ApplicationSerializer})
    def post(self, request, pk: int):
        services.require_authority(request.user)  # before the body: 403, not a 400 for what was sent
        data = s.RejectSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        app = services.application_reject(user=request.user, application_id=pk, reason=data.validated_data["reason"])
        return Response(s.ApplicationSerializer(app).data)


class VoucherList(generics.ListAPIView):
    """Your organisations' vouchers with balance and commitments (the authority and regulators see all)."""

    permission_classes = [permissions.IsAuthenticated]
    serializer_class = s.VoucherSerializer
    pagination_class = Pagination

    def get_queryset(self):
        return selectors.voucher_list_for_user(self.request.user)


class VoucherDetail(APIView):
    """A voucher's balance, commitments, payments and history of redemptions."""

    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request, pk: int):
        voucher = selectors.voucher_list_for_user(request.user).filter(pk=pk).first()
        if voucher is None:
            raise NotFound({"voucher": ["No such voucher."]})
        redemptions = selectors.redemption_list_for_user(request.user).filter(voucher=voucher)
        return Response({
            **s.VoucherSerializer(voucher).data, **selectors.voucher_summary(voucher),
            "redemptions": s.RedemptionSerializer(redemptions, many=True).data,
        })


class RedemptionList(generics.ListAPIView):
    """Redemptions (committed, settled, and blocked with their reason); `?export=csv` for all of them."""

    permission_classes = [permissions.IsAuthenticated]
    serializer_class = s.RedemptionSerializer
    pagination_class = Pagination

    def get_queryset(self):
        qs = selectors.redemption_list_for_user(self.request.user)
        for name in ("status", "voucher"):
            value = self.request.query_params.get(name)
            if value:
                if name == "voucher" and id_of(value) is None:
                    raise ValidationError({"voucher": ["An id."]})
                qs = qs.filter(**{name: value})
        return qs

    @extend_schema(parameters=[OpenApiParameter("status", str), OpenApiParameter("voucher", int), EXPORT])
    def get(self, request, *args, **kwargs):
        if request.query_params.get("export") == "csv":
            return _csv("redemptions", selectors.redemptions_csv(self.get_queryset()))
        return super().get(request, *args, **kwargs)


class RedemptionEvidence(APIView):
    """The evidence pack of one redemption: trade, contract, metered delivery and ledger entries."""

    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request, pk: int):
        r = selectors.redemption_list_for_user(request.user).select_related("contract__trade", "contract__buyer", "contract__listing__data_centre").filter(pk=pk).first()
        if r is None:
            raise NotFound({"redemption": ["No such redemption."]})
        return Response(selectors.evidence_pack(r))
