"""Declined initial sales: reruns queued or sent, and the real-time cascade."""
