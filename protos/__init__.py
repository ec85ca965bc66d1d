"""Protobuf wire formats: signed deltas and the adapter registry service (issues 3, 5)."""
