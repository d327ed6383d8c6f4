from __future__ import annotations

import csv

import django_filters
from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, permissions
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from common.api import NewestFirst, id_of
from common.filters import UtcIsoDateTimeFilter
from common.money import format_cny
from ledger import selectors
from ledger.api import serializers as s
from ledger.models import Account, AccountKind, EntryKind, Posting
from marketplace.models import Organisation
from marketplace.selectors import acting_organisation


def _organisation_for_reading(request, organisation_id) -> Organisation:
    """Members read their own organisation; regulators and operators read any. Foreign ids are 404."""
    if selectors.can_see_all(request.user):
        if organisation_id in (None, ""):
            raise NotFound({"organisation": ["Say which organisation with `organisation`."]})
        pk = id_of(organisation_id)
        org = Organisation.objects.filter(pk=pk).first() if pk else None  # nosemgrep: object-by-id-without-owner -- only for those who may see all (checked above)
        if org is None:
            raise NotFound({"organisation": ["No such organisation."]})
        return org
    return acting_organisation(request.user, organisation_id)


class AccountList(generics.ListAPIView):
    """Ledger accounts you may see, with their balances."""

    serializer_class = s.AccountSerializer
    permission_classes = [permissions.IsAuthenticated]
    filterset_fields = ["organisation", "kind"]
    ordering_fields = ["id", "balance_fen"]

    def get_queryset(self):
        return selectors.account_list_for_user(self.request.user)


class Balances(APIView):
    """An organisation's available, held, escrow and receivable balances in CNY."""

    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(parameters=[OpenApiParameter("organisation", int, required=False)], responses=s.BalancesSerializer)
    def get(self, request):
        org = _organisation_for_reading(request, request.query_params.get("organisation"))
        fen = selectors.balances_get(organisation=org)
        return Response({"organisation": org.pk, "currency": "CNY", **{k: format_cny(v) for k, v in fen.items()}, "balances_fen": fen})


class StatementFilter(django_filters.FilterSet):
    account_kind = django_filters.ChoiceFilter(field_name="account__kind", choices=AccountKind.choices)
    entry_kind = django_filters.ChoiceFilter(field_name="entry__kind", choices=EntryKind.choices)
    since = UtcIsoDateTimeFilter(field_name="entry__created_at", lookup_expr="gte")
    until = UtcIsoDateTimeFilter(field_name="entry__created_at", lookup_expr="lt")
    reference = django_filters.CharFilter(field_name="entry__reference")

    class Meta:
        model = Posting
        fields = ["account_kind", "entry_kind", "since", "until", "reference"]


CSV_COLUMNS = ["posting", "entry", "created_at", "entry_kind", "account_kind", "amount_cny", "balance_after_cny", "reference", "memo"]


class _Echo:
    def write(self, value: str) -> str:
        return value


class Statement(generics.ListAPIView):
    """An organisation's postings, newest first, paged by cursor (a statement grows with every trade: no page
    counts it); `?export=csv` streams the whole filtered statement."""

    pagination_class = NewestFirst
    serializer_class = s.StatementLineSerializer
    permission_classes = [permissions.IsAuthenticated]
    filterset_class = StatementFilter
    ordering_fields = ["id"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation: no request user
            return Posting.objects.none()
        org = _organisation_for_reading(self.request, self.request.query_params.get("organisation"))
        return selectors.posting_list_for_accounts(Account.objects.filter(organisation=org))

    @extend_schema(parameters=[OpenApiParameter("organisation", int, required=False), OpenApiParameter("export", str, enum=["csv"], required=False)])
    def get(self, request, *args, **kwargs):
        if request.query_params.get("export") == "csv":
            queryset = self.filter_queryset(self.get_queryset())
            return self._csv(queryset)
        return super().get(request, *args, **kwargs)

    def _csv(self, queryset) -> StreamingHttpResponse:
        writer = csv.writer(_Echo())

        def rows():
            yield writer.writerow(CSV_COLUMNS)
            for p in queryset.iterator(chunk_size=2000):
                yield writer.writerow([
                    p.pk, p.entry_id, p.entry.created_at.isoformat(), p.entry.kind, p.account.kind,
                    format_cny(p.amount_fen), format_cny(p.balance_after_fen), p.entry.reference, p.entry.memo,
                ])

        response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="statement.csv"'
        return response
