"""Payments in and out of the ledger through a provider interface (Stripe, offline bank transfer)."""
