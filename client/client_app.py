"""fedpeft ClientApp: installs the base once, then trains and evaluates adapters.

A PyTorch node trains the quantized base's adapter with PyTorch. A device node (node
config `kind = "device"`, the light install: no torch, transformers or peft) receives the
run's signed training export instead of the base and answers every message with ONNX
Runtime and numpy, on its own rows (`data-file`); `fedpeft device join` starts one.

Message types:
- `query.status`: does this node already hold the run's base and template?
- `query.install`: verify and cache the template and (if sent) the quantized base.
- `query.class_means`: round zero, per-class feature sums and counts, signed as a delta is.
- `train`: train from the global adapter, reply with the delta and its signed envelope.
- `evaluate`: validation accuracy of the global adapter.
- `query.personalize`: the personalization report on the node's test split.

A deployed node may start a fresh process per message: status and install need no model,
so torch, transformers and peft (about 8 s to import) are imported only by the handlers
that train or evaluate.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from fedpeft.core.adapters.rank import limits
from fedpeft.core.adapters.template import AdapterTemplate
from fedpeft.core.errors import ConfigError
from fedpeft.core.privacy import noise_share
from fedpeft.core.training.accelerator import pick_device
from fedpeft.core.training.data import ClientData, TextSplit, client_data, own_data
from fedpeft.core.training.job import Job
from fedpeft.core.training.personalization import Learner, local_update, personalization
from fedpeft.core.trust.hashing import tensors_id
from fedpeft.core.wire.envelope import DeltaClaim, delta_content
from fedpeft.core.wire.install import export_from_content, package_from_content, template_from_content
from fedpeft.core.wire.records import from_record

from . import identity, runtime


def _partition(context: Context) -> int:
    return int(context.node_config.get("partition-id", 0))  # a device node that joined alone has none


def _cache(context: Context):
    return runtime.node_cache(dict(context.node_config), context.node_id)


def _device_node(context: Context) -> bool:
    return context.node_config.get("kind") == "device"


def _exports(context: Context):
    from fedpeft.device.export_cache import ExportCache

    return ExportCache(_cache(context).root)


def _device_data(job: Job, context: Context) -> ClientData:
    """A device node's own rows: the node config's `data-file` (cut as core/training/data.py `own_data` says)."""
    path = context.node_config.get("data-file")
    if not path:
        raise ConfigError("a device node needs data-file (its own rows) in its node config")
    return own_data(Path(str(path)), job.data, str(context.node_config.get("data-name") or Path(str(path)).stem))


def _global_adapter(msg: Message, template: AdapterTemplate) -> dict[str, np.ndarray]:
    """The global adapter a message carries: rounds send only the trained tensors, the
    frozen ones (FFA-LoRA's A) are the template's, installed once."""
    return {**template.init, **from_record(msg.content.array_records["arrays"])}


@dataclass(frozen=True)
class Worker:
    """What does this node's work: a PyTorch session, or (a device) the export's graphs."""

    learner: Learner
    template: AdapterTemplate


def prepare(msg: Message, context: Context, scoring: bool = False) -> tuple[Job, Worker, ClientData]:
    """The run's settings, what trains here (loaded once per process), and this node's data.

    A device node uses its cached training export and its own rows; a simulated device
    client (`job.device_partitions`) the run's training export: no torch. Every other
    client the base loaded with PyTorch. (`scoring`: the work is to score adapters, which a
    causal LM's training export has no graph for: a simulated LM device scores with
    PyTorch, a device node refuses.)
    """
    job = Job.from_config(msg.content.config_records["config"])
    cache, partition = _cache(context), _partition(context)
    learner: Learner | None = None
    if _device_node(context):
        from fedpeft.device import client as device_client

        learner = device_client.trainer(_exports(context).path(job.base_id, job.template_id),
                                        identity.operator_key(dict(context.node_config)))
        if scoring and learner.inference is None:
            raise ConfigError("this device node's export has no graph to score adapters with (a language model)")
        data = _device_data(job, context)
    else:
        data = client_data(job.data, partition)
        if partition in job.device_partitions:
            from fedpeft.device import client as device_client

            trainer = device_client.trainer(Path(job.device_export), identity.operator_key())
            learner = None if scoring and trainer.inference is None else trainer
    if learner is None:
        from .task import TorchLearner

        session = runtime.session(cache, job.base_id, job.template_id, pick_device(job.train.device))
        worker = Worker(TorchLearner(session), session.template)
    else:
        worker = Worker(learner, cache.load_template(job.template_id))
    # a client that cannot afford the template's LoRA rank trains at its own (0: the template's)
    rank = job.rank_for(partition, int(context.node_config.get("max-rank", 0)))
    job = replace(job, train=replace(job.train, rank=rank if limits(rank, worker.template.init) else 0))
    return job, worker, data


def status(msg: Message, context: Context) -> Message:
    """What the node holds: the base (a device node: the training export) and the template."""
    config = msg.content.config_records["config"]
    base_id, template_id = str(config["base-id"]), str(config["template-id"])
    cache = _cache(context)
    device = _device_node(context)
    reply = ConfigRecord({
        "has-base": _exports(context).has(base_id, template_id) if device else cache.has(base_id),
        "has-template": cache.has_template(template_id),
        "device": device,
    })
    return Message(RecordDict({"status": reply}), reply_to=msg)


def install(msg: Message, context: Context) -> Message:
    config = msg.content.config_records["config"]
    base_id, template_id = str(config["base-id"]), str(config["template-id"])
    cache = _cache(context)
    if _device_node(context):
        exports = _exports(context)
        if "export" in msg.content.config_records or not exports.has(base_id, template_id):
            exports.put(export_from_content(msg.content), base_id, template_id,
                        identity.operator_key(dict(context.node_config)))
    else:
        if "base" in msg.content.array_records:
            cache.put(package_from_content(msg.content), base_id)
        if not cache.has(base_id):
            raise ValueError(f"base {base_id[:12]} was neither sent nor cached")
    cache.put_template(template_from_content(msg.content), template_id)
    return Message(RecordDict({"status": ConfigRecord({"installed": True})}), reply_to=msg)


def train(msg: Message, context: Context) -> Message:
    """Train on this node's training split; reply with the signed delta."""
    job, worker, data = prepare(msg, context)
    return signed_update(msg, context, job, worker, data.train)


def signed_update(msg: Message, context: Context, job: Job, worker: Worker, split: TextSplit) -> Message:
    """Train on `split`, then sign the delta bound to this run, round, base, template and
    parent. (A simulated attacker calls it with poisoned rows: simulations/attacks.py.)"""
    server_round = int(msg.content.config_records["config"]["server-round"])
    seed = job.train.seed * 100_003 + server_round * 1_009 + _partition(context)
    job = replace(job, train=job.train.for_round(server_round))
    global_arrays = _global_adapter(msg, worker.template)
    delta, result = local_update(worker.learner, job, split, global_arrays, seed)
    if job.dp_clip:  # distributed DP: this client's share of the noise, added before it signs
        delta = noise_share(delta, job.dp_clip, job.dp_noise_std, np.random.default_rng())
    binding = job.binding.for_round(server_round, tensors_id(global_arrays))
    metrics = {"train-loss": result.loss, "steps": result.steps}
    if job.train.rank:  # trained below the template's rank: the server averages its columns accordingly
        metrics["rank"] = job.train.rank
    claim = DeltaClaim(binding, result.examples, metrics)
    key = identity.signing_key(dict(context.node_config), _partition(context))
    return Message(delta_content(key, claim, delta, job.encoding), reply_to=msg)


def class_means(msg: Message, context: Context) -> Message:
    """Round zero: per-class sums of the features the head sees over the training split, and
    the class counts, signed like a delta bound to round 0 and the template's adapter."""
    job, worker, data = prepare(msg, context)
    stats = worker.learner.class_sums(worker.template.init, data.train, job.train)
    claim = DeltaClaim(job.binding.for_round(0, tensors_id(worker.template.init)), len(data.train))
    key = identity.signing_key(dict(context.node_config), _partition(context))
    return Message(delta_content(key, claim, stats), reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    job, worker, data = prepare(msg, context, scoring=True)
    result = worker.learner.evaluate(_global_adapter(msg, worker.template), data.val, job.train)
    metrics = MetricRecord({"num-examples": result.examples, "eval-loss": result.loss, "eval-acc": result.accuracy})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def personalize(msg: Message, context: Context) -> Message:
    job, worker, data = prepare(msg, context, scoring=True)
    scores = personalization(worker.learner, job, data, _global_adapter(msg, worker.template), worker.template.init,
                             seed=job.train.seed + _partition(context))
    metrics = MetricRecord({"num-examples": len(data.test), **{f"{k}-acc": v.accuracy for k, v in scores.items()}})
    if scores["global"].top1 is not None:  # a causal LM: next-word top-1 and token loss (perplexity) too
        metrics.update({f"{k}-{name}": value for k, v in scores.items() for name, value in
                        (("top1", v.top1), ("loss", v.loss))})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)  # the server names it by the node's key


def make_client_app(mods: list[Mod] | None = None) -> ClientApp:
    """The fedpeft ClientApp; `mods` wrap every handler (simulations/misbehaving.py uses one)."""
    client_app = ClientApp(mods=mods or [])
    client_app.query("status")(status)
    client_app.query("install")(install)
    client_app.query("class_means")(class_means)
    client_app.train()(train)
    client_app.evaluate()(evaluate)
    client_app.query("personalize")(personalize)
    return client_app


app = make_client_app()
