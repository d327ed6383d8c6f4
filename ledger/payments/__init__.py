"""Payments in and out of the ledger through a provider interface (Stripe, offline bank transfer).

base.py       the provider interface, provider selection, errors
stripe_provider.py / offline.py   the two providers
services.py   top-ups, refunds and payouts: rows, provider calls and ledger entries
webhooks.py   Stripe webhook verification and event handling
views.py, serializers.py, urls.py, selectors.py   the REST API under /api/v1/ledger/
"""
