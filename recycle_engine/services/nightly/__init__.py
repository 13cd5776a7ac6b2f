"""The nightly run: due attempts, claims, hand-offs sent to FlexFactor, processor charges, workers."""
