"""Payments under /api/v1/ledger/: top-ups, payouts and the Stripe webhook."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from ledger.payments import views

router = SimpleRouter()
router.register("top-ups", views.TopUpViewSet, basename="ledger-top-up")
router.register("payouts", views.PayoutViewSet, basename="ledger-payout")

urlpatterns = [
    path("webhooks/stripe/", views.stripe_webhook, name="ledger-stripe-webhook"),
    *router.urls,
]
