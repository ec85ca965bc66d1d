"""ONNX export of bases with adapters applied, for mobile and edge runtimes (issue 4)."""
