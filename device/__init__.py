"""What runs on a device without PyTorch: pull and install signed adapters, predict with ONNX Runtime.

Nothing here imports torch, transformers or peft (tests/test_device_imports.py).
"""
