from django.urls import include, path

from ledger.api import views

urlpatterns = [
    path("accounts/", views.AccountList.as_view(), name="ledger-accounts"),
    path("balances/", views.Balances.as_view(), name="ledger-balances"),
    path("statement/", views.Statement.as_view(), name="ledger-statement"),
    path("", include("ledger.payments.urls")),
]
