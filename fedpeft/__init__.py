"""fedpeft: federated personalization of adapters on a quantized, frozen base."""

import logging

# torchao reports optional CUDA kernels it cannot load on CPU machines; not our concern.
logging.getLogger("torchao").setLevel(logging.ERROR)
