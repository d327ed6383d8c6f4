from django.db import transaction
from django.db.models import F
from django.shortcuts import get_object_or_404

from ledger.models import Account, Hold, TopUp
from vouchers.models import Voucher


def refund_unlocked(top_up_id, amount):
    # ruleid: balance-read-modify-write-without-lock
    top_up = TopUp.objects.get(pk=top_up_id)
    top_up.refunded_fen += amount
    top_up.save(update_fields=["refunded_fen"])


def refund_unlocked_404(pk, amount):
    # ruleid: balance-read-modify-write-without-lock
    voucher = get_object_or_404(Voucher, pk=pk)
    if amount > 0:
        voucher.returned_fen = voucher.returned_fen + amount
    voucher.save()


def debit_unlocked(pk, amount):
    with transaction.atomic():  # atomic alone does not lock the row
        # ruleid: balance-read-modify-write-without-lock
        account = Account.objects.filter(pk=pk).first()
        account.balance_fen -= amount
        account.save(update_fields=["balance_fen"])


def debit_with_update_unlocked(pk, amount):
    # ruleid: balance-read-modify-write-without-lock
    account = Account.objects.get(pk=pk)
    Account.objects.filter(pk=pk).update(balance_fen=account.balance_fen - amount)


def debit_with_value_unlocked(pk, amount):
    # ruleid: balance-read-modify-write-without-lock
    balance = Account.objects.values_list("balance_fen", flat=True).get(pk=pk)
    Account.objects.filter(pk=pk).update(balance_fen=balance - amount)


def refund_locked(top_up_id, amount):
    with transaction.atomic():
        # ok: balance-read-modify-write-without-lock
        top_up = TopUp.objects.select_for_update().get(pk=top_up_id)
        top_up.refunded_fen += amount
        top_up.save(update_fields=["refunded_fen"])


def debit_locked_values(ids, amount):
    with transaction.atomic():
        # ok: balance-read-modify-write-without-lock
        rows = Account.objects.select_for_update().filter(pk__in=ids).order_by("pk").values_list("pk", "balance_fen")
        balances = {pk: balance - amount for pk, balance in rows}
        for pk, balance in balances.items():
            Account.objects.filter(pk=pk).update(balance_fen=balance)


def capture_with_f(hold_id, amount):
    # ok: balance-read-modify-write-without-lock
    hold = Hold.objects.get(pk=hold_id)
    Hold.objects.filter(pk=hold.pk).update(captured_fen=F("captured_fen") + amount)


def rename(pk, name):
    # ok: balance-read-modify-write-without-lock
    account = Account.objects.get(pk=pk)
    account.name = account.name.strip() + name
    account.save(update_fields=["name"])
