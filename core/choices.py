"""The names a run may choose from, importable without torch, peft or Flower: the CLI
offers them as choices and the config is checked against them before anything loads."""

from __future__ import annotations

from fedpeft.core.adapters.methods import method_names
from fedpeft.core.errors import ConfigError
from fedpeft.core.training.accelerator import DEVICES
from fedpeft.core.wire.delta_codec import ENCODINGS as DELTA_ENCODINGS

TASKS = ("seq-cls", "causal-lm")  # core/base/tasks.py
QUANTIZATION_MODES = ("int8", "int4", "none")
GENERATION_PRECISIONS = ("int8", "int4")  # a language model's exported base weights (export/genai.py)
PARTITIONERS = ("natural", "iid", "dirichlet")
OPTIMIZERS = ("adamw", "sgd")
HEAD_INITS = ("class-means", "none")  # how a classifier's head starts (core/training/class_means.py)
PRIVACY_MODES = ("off", "central", "distributed")  # server/privacy.py, core/privacy.py
ATTACKS = ("label-flip", "backdoor", "scaled", "sign-flip", "colluding")  # simulations/attacks.py
# fedpeft's name -> the class in flwr.serverapp.strategy that server/strategy.py wraps
STRATEGIES = {
    "fedavg": "FedAvg",
    "fedavgm": "FedAvgM",
    "fedadam": "FedAdam",
    "fedyogi": "FedYogi",
    "fedmedian": "FedMedian",
    "fedtrimmedavg": "FedTrimmedAvg",
    "krum": "Krum",
    "multikrum": "MultiKrum",
    "fltrust": "FedAvg",  # FedAvg's rounds, deltas weighed by trust in server/fltrust.py
}
METHODS = tuple(method_names())
__all__ = ["ATTACKS", "DELTA_ENCODINGS", "DEVICES", "GENERATION_PRECISIONS", "HEAD_INITS", "METHODS", "OPTIMIZERS", "PARTITIONERS", "PRIVACY_MODES", "QUANTIZATION_MODES",
           "STRATEGIES", "TASKS", "check_choice"]


def check_choice(what: str, value: str, allowed) -> str:
    if value not in allowed:
        raise ConfigError(f"unknown {what} {value!r}; choose one of {list(allowed)}")
    return value
