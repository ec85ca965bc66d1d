"""The run settings every node needs, sent in each message's ConfigRecord.

Nodes hold no configuration of their own beyond their partition: what to train, on which
base and template, with which data spec and hyper-parameters all comes from the server.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from flwr.app import ConfigRecord

from fedpeft.core.config import RANGES, Range
from fedpeft.core.errors import ConfigError
from fedpeft.core.trust.json_reader import parse_json, parse_json_object
from fedpeft.core.wire.delta_codec import DeltaEncoding
from fedpeft.core.wire.envelope import DeltaBinding

from .data import DataSpec
from .settings import TrainSettings


@dataclass(frozen=True)
class Job:
    base_id: str
    template_id: str
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSettings = field(default_factory=TrainSettings)
    personal_epochs: int = 2
    local_only_epochs: int = 5
    best_epoch: bool = False  # personalization keeps the epoch with the lowest validation loss
    run_id: str = ""  # nonce the server draws per run; signed deltas are bound to it
    # Simulation: partitions that train as devices (ONNX Runtime) with this signed training export.
    device_partitions: tuple[int, ...] = ()
    device_export: str = ""
    # Simulation: each partition's LoRA rank when below the template's (simulation.rank_mix; 0: full).
    client_ranks: tuple[int, ...] = ()
    encoding: DeltaEncoding = field(default_factory=DeltaEncoding)  # how deltas travel up
    # privacy.mode distributed: clip the delta to dp_clip and add N(0, dp_noise_std^2) before signing
    # (the server sets the std per round, from the clients it asked: core/privacy.py).
    dp_clip: float = 0.0
    dp_noise_std: float = 0.0

    def to_config(self) -> ConfigRecord:
        return ConfigRecord({
            "base-id": self.base_id,
            "template-id": self.template_id,
            "data": self.data.to_json(),
            "train": json.dumps(asdict(self.train)),
            "personal-epochs": self.personal_epochs,
            "local-only-epochs": self.local_only_epochs,
            "best-epoch": self.best_epoch,
            "run-id": self.run_id,
            "device-partitions": json.dumps(list(self.device_partitions)),
            "device-export": self.device_export,
            "client-ranks": json.dumps(list(self.client_ranks)),
            "delta-encoding": self.encoding.kind,
            "delta-block": self.encoding.block,
            "dp-clip": self.dp_clip,
            "dp-noise-std": self.dp_noise_std,
        })

    @classmethod
    def from_config(cls, config: ConfigRecord) -> Job:
        return cls(
            base_id=str(config["base-id"]),
            template_id=str(config["template-id"]),
            data=DataSpec.from_json(str(config["data"])),
            train=_train_settings(str(config["train"])),
            personal_epochs=_checked(config, "personal-epochs", RANGES["personalization.epochs"]),
            local_only_epochs=_checked(config, "local-only-epochs", RANGES["personalization.local_only_epochs"]),
            best_epoch=config["best-epoch"] is True,
            run_id=str(config["run-id"]),
            device_partitions=tuple(int(p) for p in parse_json(str(config["device-partitions"]), "device-partitions")),
            device_export=str(config["device-export"]),
            client_ranks=_ranks(str(config["client-ranks"])),
            encoding=DeltaEncoding(str(config["delta-encoding"]),
                                   _checked(config, "delta-block", RANGES["federation.delta_block"])),
            dp_clip=_checked(config, "dp-clip", DP_VALUE),
            dp_noise_std=_checked(config, "dp-noise-std", DP_VALUE),
        )

    def rank_for(self, partition: int, node_limit: int = 0) -> int:
        """The LoRA rank a client trains at: the smallest of train.rank, its simulated
        partition's drawn rank and its node's own limit (`max-rank`); 0: the template's."""
        drawn = self.client_ranks[partition] if partition < len(self.client_ranks) else 0
        limits = [r for r in (self.train.rank, drawn, node_limit) if r > 0]
        return min(limits, default=0)

    @property
    def binding(self) -> DeltaBinding:
        """The run-wide part of what this job's deltas are bound to."""
        return DeltaBinding(self.run_id, self.base_id, self.template_id)


# A clip or noise std the server sends (0: privacy off); finite and bounded on the node too.
DP_VALUE = Range(float, 0, 1e12)


def _checked(config: ConfigRecord, key: str, allowed: Range) -> int | float:
    """A number of the job, held to its range on the node: the server's message is not
    trusted to have been checked (a NaN clip or 10**22 personalization epochs)."""
    value = config[key]
    allowed.check(f"the job's {key}", value)
    return value


def _ranks(text: str) -> tuple[int, ...]:
    values = parse_json(text, "client-ranks")
    if not isinstance(values, list) or not all(type(v) is int and 0 <= v <= 65_536 for v in values):
        raise ConfigError("the job's client-ranks must be a list of LoRA ranks")
    return tuple(values)


def _train_settings(text: str) -> TrainSettings:
    """The job's hyper-parameters, held to the config's ranges on the node too: a server's
    text must not set 10**22 epochs or a NaN learning rate."""
    values = parse_json_object(text, "the job's train settings")
    try:
        settings = TrainSettings(**values)
    except TypeError as exc:
        raise ConfigError(f"the job's train settings do not fit TrainSettings ({exc})") from None
    for key, allowed in RANGES.items():
        if key.startswith("train."):
            allowed.check(f"the job's {key}", getattr(settings, key.removeprefix("train.")))
    return settings
