"""Adapter templates and methods (PEFT), and the adapter tensors of a PEFT model."""
