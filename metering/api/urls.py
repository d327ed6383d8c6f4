from django.urls import path

from metering.api import views

urlpatterns = [
    path("events/", views.UsageEventsIngest.as_view(), name="metering-events"),
    path("contracts/", views.ContractList.as_view(), name="metering-contracts"),
    path("contracts/<int:pk>/", views.ContractDetail.as_view(), name="metering-contract"),
    path("contracts/<int:pk>/dispute/", views.ContractDispute.as_view(), name="metering-contract-dispute"),
    path("disputes/", views.DisputeList.as_view(), name="metering-disputes"),
    path("disputes/<int:pk>/resolve/", views.DisputeResolve.as_view(), name="metering-dispute-resolve"),
    path("metrics/", views.Metrics.as_view(), name="metering-metrics"),
]
