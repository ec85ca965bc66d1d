"""Where simulated and PyTorch clients train: `[train] device = auto | cpu | cuda`.

`auto` takes the GPU when PyTorch sees one and the CPU otherwise; asking for `cuda` on a
machine without one is a one-line error before anything loads, not a crash mid-round.
On a GPU, Flower's simulation packs `[simulation] clients_per_gpu` clients on it (Ray's
fractional `num_gpus`); each worker process holds its own copy of the frozen base.
"""

from __future__ import annotations

from fedpeft.core.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def pick_device(requested: str, cuda_available: bool | None = None) -> str:
    """"cpu" or "cuda" for a requested device; `cuda_available` None asks PyTorch."""
    if requested not in DEVICES:
        raise ConfigError(f"unknown train.device {requested!r}; choose one of {list(DEVICES)}")
    if requested == "cpu":
        return "cpu"
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if requested == "cuda" and not cuda_available:
        raise ConfigError("train.device is 'cuda' but PyTorch sees no CUDA GPU here (use auto or cpu)")
    return "cuda" if cuda_available else "cpu"


def client_resources(device: str, clients_per_gpu: int) -> dict[str, float]:
    """Flower simulation resources of one client on a picked device."""
    if clients_per_gpu < 1:
        raise ConfigError(f"simulation.clients_per_gpu must be at least 1, got {clients_per_gpu}")
    return {"num_cpus": 1, "num_gpus": 1.0 / clients_per_gpu if device == "cuda" else 0.0}
