from __future__ import annotations

import django_filters
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from common.api import id_of
from common.filters import UtcIsoDateTimeFilter
from marketplace import selectors, services
from marketplace.api import serializers as s
from marketplace.models import DataCentre, DeviceModel, Instrument, Organisation, Product
from marketplace.permissions import (
    DataCentreOwnerOrReadOnly,
    IsNotRegulator,
    IsOperatorOrReadOnly,
    ListingOwnerOrReadOnly,
    OrganisationAdminOrReadOnly,
)

_AUTHENTICATED_WRITER = [permissions.IsAuthenticatedOrReadOnly, IsNotRegulator]


class OrganisationViewSet(mixins.CreateModelMixin, mixins.UpdateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Organisations on the exchange. Anyone signed in may register one and becomes its admin."""

    queryset = Organisation.objects.all()
    serializer_class = s.OrganisationSerializer
    permission_classes = [permissions.IsAuthenticated, IsNotRegulator, OrganisationAdminOrReadOnly]
    filterset_fields = ["kind", "size_class"]
    ordering_fields = ["name", "founded_on", "created_at"]

    def perform_create(self, serializer):
        serializer.instance = services.organisation_create(user=self.request.user, **serializer.validated_data)

    def perform_update(self, serializer):
        serializer.instance = services.organisation_update(organisation=serializer.instance, **serializer.validated_data)


class DataCentreFilter(django_filters.FilterSet):
    max_pue = django_filters.NumberFilter(field_name="pue", lookup_expr="lte")
    min_renewable_share = django_filters.NumberFilter(field_name="renewable_share", lookup_expr="gte")
    min_security_level = django_filters.NumberFilter(field_name="security_level", lookup_expr="gte")

    class Meta:
        model = DataCentre
        fields = ["owner", "region", "is_active"]


class DataCentreViewSet(viewsets.ModelViewSet):
    """The public inventory of data centres; suppliers edit only their own."""

    serializer_class = s.DataCentreSerializer
    permission_classes = [*_AUTHENTICATED_WRITER, DataCentreOwnerOrReadOnly]
    filterset_class = DataCentreFilter
    ordering_fields = ["name", "pue", "renewable_share", "carbon_intensity", "security_level"]
    http_method_names = ["get", "post", "put", "patch", "head", "options"]

    def get_queryset(self):
        return selectors.data_centre_list()

    def _save(self, serializer, instance=None):
        data = dict(serializer.validated_data)
        latencies = data.pop("latencies", None)
        device_lines = data.pop("devices", None)
        devices = None
        if device_lines is not None:
            devices = [services.DeviceLine(device_model=line["device_model"], count=line["count"]) for line in device_lines]
        serializer.instance = services.data_centre_save(data_centre=instance, fields=data, latencies=latencies, devices=devices)

    def perform_create(self, serializer):
        self._save(serializer)

    def perform_update(self, serializer):
        self._save(serializer, serializer.instance)


class DeviceModelViewSet(viewsets.ModelViewSet):
    queryset = DeviceModel.objects.all()
    serializer_class = s.DeviceModelSerializer
    permission_classes = [IsOperatorOrReadOnly]
    filterset_fields = ["vendor", "chip_class", "is_domestic"]
    ordering_fields = ["vendor", "name", "fp16_tflops", "fp32_tflops", "fp64_tflops"]
    http_method_names = ["get", "post", "put", "patch", "head", "options"]


class ProductViewSet(viewsets.ModelViewSet):
    """Tiered products: a unit of measure plus grade requirements, with trading rules and fees."""

    queryset = Product.objects.all()
    serializer_class = s.ProductSerializer
    permission_classes = [IsOperatorOrReadOnly]
    filterset_fields = ["unit", "chip_class", "domestic_only", "window", "is_active", "min_security_level"]
    ordering_fields = ["code", "reference_price", "max_latency_ms", "min_renewable_share"]
    http_method_names = ["get", "post", "put", "patch", "head", "options"]


class InstrumentFilter(django_filters.FilterSet):
    product_code = django_filters.CharFilter(field_name="product__code")
    delivery_after = UtcIsoDateTimeFilter(field_name="delivery_start", lookup_expr="gte")
    delivery_before = UtcIsoDateTimeFilter(field_name="delivery_start", lookup_expr="lt")
    status = django_filters.MultipleChoiceFilter(choices=Instrument._meta.get_field("status").choices)

    class Meta:
        model = Instrument
        fields = ["product", "product_code", "status", "delivery_after", "delivery_before"]


class InstrumentViewSet(viewsets.ReadOnlyModelViewSet):
    """Product x delivery window, listed ahead on a schedule. Operators halt and resume trading."""

    queryset = Instrument.objects.select_related("product")
    serializer_class = s.InstrumentSerializer
    permission_classes = [IsOperatorOrReadOnly]
    filterset_class = InstrumentFilter
    ordering_fields = ["delivery_start", "gate_closure", "code"]

    @extend_schema(request=None, responses=s.InstrumentSerializer)
    @action(detail=True, methods=["post"])
    def halt(self, request, pk=None):
        return Response(self.get_serializer(services.instrument_set_trading(instrument=self.get_object(), action="halt")).data)

    @extend_schema(request=None, responses=s.InstrumentSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        return Response(self.get_serializer(services.instrument_set_trading(instrument=self.get_object(), action="resume")).data)


class ListingViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """A supplier's capacity offered to a product. Visible to its own organisation, operators and regulators.
    A listing is withdrawn (DELETE), never edited: orders may rest against it."""

    serializer_class = s.ListingSerializer
    permission_classes = [permissions.IsAuthenticated, IsNotRegulator, ListingOwnerOrReadOnly]
    filterset_fields = ["supplier", "data_centre", "product", "device_model", "is_active"]
    ordering_fields = ["available_from", "created_at", "device_count"]
    http_method_names = ["get", "post", "delete", "head", "options"]

    def get_queryset(self):
        return selectors.listing_list_for_user(self.request.user)

    def perform_create(self, serializer):
        serializer.instance = services.listing_create(**serializer.validated_data)

    def destroy(self, request, *args, **kwargs):
        listing = self.get_object()  # checks object permissions
        services.listing_withdraw(listing=listing)
        return Response(status=status.HTTP_204_NO_CONTENT)


class InventoryView(APIView):
    """The compute list (算力清单): installed capacity in standard units by region, supplier, chip class,
    domestic or imported, device model or data centre, with domestic, green and Shanghai shares."""

    permission_classes = [permissions.AllowAny]

    @extend_schema(
        parameters=[
            OpenApiParameter("group_by", str, enum=list(selectors.INVENTORY_GROUPS), default="region"),
            OpenApiParameter("supplier", int, required=False),
        ],
        responses=s.InventoryReportSerializer,
    )
    def get(self, request):
        group_by = request.query_params.get("group_by", "region")
        if group_by not in selectors.INVENTORY_GROUPS:
            raise ValidationError({"group_by": [f"Choose one of: {', '.join(selectors.INVENTORY_GROUPS)}."]})
        supplier = None
        if "supplier" in request.query_params:
            pk = id_of(request.query_params["supplier"])
            supplier = Organisation.objects.filter(pk=pk).first() if pk else None  # nosemgrep: object-by-id-without-owner -- the compute list is public
            if supplier is None:
                raise ValidationError({"supplier": ["No such organisation."]})
        return Response(selectors.inventory_report(group_by=group_by, supplier=supplier))

