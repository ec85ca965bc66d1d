"""fedpeft: federated personalization of adapters on a quantized, frozen base."""

import logging

# torchao reports optional CUDA kernels it cannot load on CPU machines; not our concern.
logging.getLogger("torchao").setLevel(logging.ERROR)

import warnings

# PEFT warns that LoRA cannot be merged into torchao layers; fedpeft never merges into the
# quantized base (export merges into an fp32 copy), so the warning says nothing useful.
warnings.filterwarnings("ignore", message="TorchaoLoraLinear was instantiated")
