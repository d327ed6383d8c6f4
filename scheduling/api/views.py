from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import generics, permissions, status
from rest_framework.response import Response
from rest_framework.views import APIView

from common.errors import ServiceError
from exchange.selectors import trading_organisation_get
from marketplace.permissions import IsNotRegulator
from marketplace.selectors import NotAMember
from scheduling import selectors, services
from scheduling.api import serializers as s


def _trader_check(request, demand) -> None:
    """Members may read their organisation's demands; only its admins and traders may plan or execute."""
    try:
        trading_organisation_get(request.user, demand.organisation_id)
    except NotAMember as exc:
        raise ServiceError("Only the organisation's admins and traders may plan or execute its demands.", field="organisation", status_code=403) from exc


def _demand(request, pk: int):
    """One of your organisations' demands; anyone else's is 404."""
    return get_object_or_404(selectors.demand_list_for_user(request.user).prefetch_related("children__instrument"), pk=pk)


class DemandListCreate(generics.ListAPIView):
    """Your organisations' demands. POST states a demand and answers with its plan (a quote: nothing is held
    or bought); idempotent on client_demand_id (a retry answers 200 with the stored demand)."""

    serializer_class = s.DemandListSerializer
    permission_classes = [permissions.IsAuthenticated, IsNotRegulator]

    def get_queryset(self):
        return selectors.demand_list_for_user(self.request.user)

    @extend_schema(request=s.DemandInSerializer, responses={201: s.DemandSerializer, 200: s.DemandSerializer})
    def post(self, request):
        data = s.DemandInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        organisation = trading_organisation_get(request.user, fields.pop("organisation", None))
        demand, created = services.demand_create(user=request.user, organisation=organisation, fields=fields)
        return Response(s.DemandSerializer(_demand(request, demand.pk)).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class DemandDetail(APIView):
    """A demand's status: the plan (allocations by instrument and window, totals, the best single-instrument
    alternative, or the binding constraint), the execution report (book changes since the plan, fills) and
    the child orders."""

    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(responses=s.DemandSerializer)
    def get(self, request, pk: int):
        demand = services.demand_status_refresh(demand=_demand(request, pk))
        return Response(s.DemandSerializer(_demand(request, demand.pk)).data)


class DemandPlan(APIView):
    """Re-plan on the books as they are now (before execution)."""

    permission_classes = [permissions.IsAuthenticated, IsNotRegulator]

    @extend_schema(request=None, responses=s.DemandSerializer)
    def post(self, request, pk: int):
        demand = _demand(request, pk)
        _trader_check(request, demand)
        services.demand_replan(demand=demand)
        return Response(s.DemandSerializer(_demand(request, pk)).data)


class DemandExecute(APIView):
    """Buy the plan: IOC child orders at the planned limits; the residual re-planned or left as the demand
    says. Retrying is safe."""

    permission_classes = [permissions.IsAuthenticated, IsNotRegulator]

    @extend_schema(request=None, responses=s.DemandSerializer)
    def post(self, request, pk: int):
        demand = _demand(request, pk)
        _trader_check(request, demand)
        services.demand_execute(user=request.user, demand=demand)
        return Response(s.DemandSerializer(_demand(request, pk)).data)
