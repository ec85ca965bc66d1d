"""The frozen base: a transformers folder packaged, quantized for transport, cached by a node."""
