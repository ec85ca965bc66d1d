"""The coordination side: a Flower ServerApp that aggregates adapter deltas."""
