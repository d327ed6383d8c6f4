from django.shortcuts import get_object_or_404

from exchange import selectors
from exchange.models import Instrument, Order
from ledger.models import Account
from marketplace.selectors import acting_organisation


def order_detail(request, pk):
    # ruleid: object-by-id-without-owner
    order = Order.objects.get(pk=pk)
    # ruleid: object-by-id-without-owner
    order = Order.objects.filter(pk=pk).first()
    # ruleid: object-by-id-without-owner
    order = Order.objects.select_related("instrument").get(id=pk)
    # ruleid: object-by-id-without-owner
    order = get_object_or_404(Order, pk=pk)
    # ruleid: object-by-id-without-owner
    order = get_object_or_404(Order.objects.select_related("hold"), pk=pk)
    # ruleid: object-by-id-without-owner
    accounts = Account.objects.filter(pk__in=request.GET.getlist("account"))
    return order, accounts


def order_detail_scoped(request, pk):
    org = acting_organisation(request.user, request.GET.get("organisation"))
    # ok: object-by-id-without-owner
    order = Order.objects.get(pk=pk, organisation=org)
    # ok: object-by-id-without-owner
    order = Order.objects.filter(pk=pk).filter(organisation__memberships__user=request.user).first()
    # ok: object-by-id-without-owner
    order = Order.objects.select_related("instrument").filter(id=pk, buyer__organisation=org).first()
    # ok: object-by-id-without-owner
    order = get_object_or_404(Order, pk=pk, organisation_id=org.pk)
    # ok: object-by-id-without-owner
    order = get_object_or_404(selectors.order_list_for_user(request.user), pk=pk)
    qs = selectors.order_list_for_user(request.user)
    # ok: object-by-id-without-owner
    order = qs.filter(pk=pk).first()
    # ok: object-by-id-without-owner
    instrument = get_object_or_404(Instrument.objects.select_related("product"), pk=pk)
    # ok: object-by-id-without-owner
    order = Order.objects.filter(client_order_id=pk, organisation=org).first()
    # ok: object-by-id-without-owner
    mine = Account.objects.filter(pk__in=selectors.organisation_ids_for_user(request.user), kind="available")
    # ok: object-by-id-without-owner
    order = get_object_or_404(Order.objects.filter(buyer_id__in=[org.pk]), pk=pk)
    # ruleid: object-by-id-without-owner
    order = get_object_or_404(Order.objects.filter(status="open"), pk=pk)
    return order, instrument, mine
