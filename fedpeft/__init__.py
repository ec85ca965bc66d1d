"""fedpeft: federated personalization of adapters on a quantized, frozen base."""

import logging

# torchao reports optional CUDA kernels it cannot load on CPU machines; not our concern.
logging.getLogger("torchao").setLevel(logging.ERROR)
# torchao registers enums with torch's pytree at import, and torch warns that this is no
# longer needed: a note for torchao's authors, not for our users.
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

import warnings

# PEFT warns that LoRA cannot be merged into torchao layers; fedpeft never merges into the
# quantized base (export merges into an fp32 copy), so the warning says nothing useful.
warnings.filterwarnings("ignore", message="TorchaoLoraLinear was instantiated")


def __getattr__(name: str):
    """`fedpeft.load_adapter` without importing torch for every `import fedpeft`."""
    if name == "load_adapter":
        from .adapter import load_adapter

        return load_adapter
    raise AttributeError(f"module 'fedpeft' has no attribute {name!r}")
