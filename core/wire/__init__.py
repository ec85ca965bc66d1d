"""Flower wire formats: records that carry tensors, bases and templates; the signed delta envelope."""
