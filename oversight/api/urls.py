from django.urls import path

from oversight.api import views

urlpatterns = [
    path("trades/", views.TradeTape.as_view(), name="oversight-trades"),
    path("orders/", views.OrderList.as_view(), name="oversight-orders"),
    path("order-events/", views.OrderEventList.as_view(), name="oversight-order-events"),
    path("contracts/", views.ContractList.as_view(), name="oversight-contracts"),
    path("ledger/entries/", views.JournalEntryList.as_view(), name="oversight-journal"),
    path("metering/usage-events/", views.UsageEventList.as_view(), name="oversight-usage-events"),
    path("metering/deliveries/", views.DeliveryList.as_view(), name="oversight-deliveries"),
    path("audit/records/", views.AuditRecordList.as_view(), name="oversight-audit-records"),
    path("audit/checkpoints/", views.AuditCheckpointList.as_view(), name="oversight-audit-checkpoints"),
    path("audit/verify/", views.AuditVerify.as_view(), name="oversight-audit-verify"),
    path("alerts/", views.AlertList.as_view(), name="oversight-alerts"),
    path("alerts/<int:pk>/", views.AlertDetail.as_view(), name="oversight-alert"),
    path("alerts/<int:pk>/review/", views.AlertReviewView.as_view(), name="oversight-alert-review"),
    path("metrics/", views.MetricsView.as_view(), name="oversight-metrics"),
    path("attestations/", views.AttestationListCreate.as_view(), name="oversight-attestations"),
    path("attestations/outstanding/", views.OutstandingAttestations.as_view(), name="oversight-attestations-outstanding"),
]
