"""Adapters at the edge: HTTP, processors, the clock, the webhook service."""
