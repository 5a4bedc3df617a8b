"""Idempotency-Key: a creating call sent again with the same key gets the first answer."""
