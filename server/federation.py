"""One federation run as named steps: prepare, distribute, federate, personalize, publish.

`run_federation` strings them together; each step is a function of what the steps
before it produced, so a reader (or a test) can follow or run one step alone.
"""

from __future__ import annotations

import random
import secrets
from collections import Counter
import time
from dataclasses import dataclass, field, replace
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from fedpeft.core.adapters.state import Arrays
from fedpeft.core.adapters.template import AdapterTemplate, create_template
from fedpeft.core.base.model import Base, load_base
from fedpeft.core.base.package import BasePackage
from fedpeft.core.base.tasks import get_task
from fedpeft.core.config import FederationConfig, FederationSection
from fedpeft.core.errors import ConfigError, FedPeftError
from fedpeft.core.training.class_means import head_from_means, head_names, with_head
from fedpeft.core.training.data import client_data, num_partitions
from fedpeft.core.training.job import Job
from fedpeft.core.trust.hashing import tensors_id
from fedpeft.core.trust.keys import Keyring, key_id, load_operator_key
from fedpeft.core.trust.release import Release
from fedpeft.core.wire.delta_codec import DeltaEncoding
from fedpeft.core.wire.install import install_content
from fedpeft.core.wire.records import from_record, to_record

from . import class_means, report
from .centralized import centralized_reference
from .checkpoint import CHECKPOINT_FILE, Checkpoint, load_checkpoint
from .fltrust import RootUpdate, root_split
from .privacy import PrivacyLedger
from .privacy import report as privacy_report
from .publish import write_adapter
from .replies import BadReply, install_reply, personalize_reply, status_reply
from .run_log import RunLog
from .strategy import StrategyHooks, StrategySettings, build_strategy, global_problem
from .verify import DeltaVerifier, VerifyPolicy, as_rejection, checked_reports, content_bytes

DEVICE_EXPORT = "device-export"  # the run folder's training export for device clients and nodes
INSTALL_BATCH = 8  # install messages sent at once (they share one copy of the base)


@dataclass
class RunSetup:
    """What `prepare` builds before any node is asked: base, template, job, keys, checkpoint."""

    config: FederationConfig
    labels: list[str]
    out: Path
    package: BasePackage
    base: Base
    template: AdapterTemplate
    job: Job
    keyring: Keyring
    operator_key: Ed25519PrivateKey
    checkpoint: Checkpoint | None
    head_start: Arrays | None = None  # the template's adapter with round zero's head (class means)
    round_zero: dict[str, Any] | None = None  # what round zero cost and found (summary.json's head_init)

    @property
    def class_means_head(self) -> bool:
        """Whether the run starts from the class-means head (round zero; the centralized
        reference does the same on the pooled rows): a classifier, without DP."""
        return (self.config.federation.head_init == "class-means" and bool(self.base.task.head_modules)
                and self.config.privacy.mode == "off")

    @property
    def done(self) -> int:
        """Rounds completed before this process started (a resumed run)."""
        return self.checkpoint.round if self.checkpoint else 0

    @property
    def initial(self) -> Arrays:
        if self.checkpoint:
            return self.checkpoint.adapter
        return dict(self.head_start or self.template.init)


@dataclass
class Roster:
    """The nodes that hold the run's base and template, and how many needed the base (or export) sent."""

    ready: set[int] = field(default_factory=set)
    base_sent_to: int = 0
    export_sent_to: int = 0  # device nodes sent the training export
    devices: set[int] = field(default_factory=set)  # nodes that said they are device nodes (no torch)
    bad_replies: dict[str, int] = field(default_factory=dict)  # "phase: reason" -> count, outside the rounds
    signers: dict[int, str] = field(default_factory=dict)  # node -> the enrolled key it signed deltas with

    def drop(self, phase: str, node: int, bad: BadReply) -> None:
        log(WARNING, "dropped %s reply from node %d (%s)", phase, node, bad)
        key = f"{phase}: {bad.reason}"
        self.bad_replies[key] = self.bad_replies.get(key, 0) + 1


def prepare(config: FederationConfig, labels: tuple[str, ...], out: Path, resume: bool = False) -> RunSetup:
    """Package the base, build the template, and load the checkpoint a resumed run goes on from."""
    out.mkdir(parents=True, exist_ok=True)
    task = get_task(config.model.task)
    package = BasePackage.from_pretrained(config.model.folder(), task, config.model.quantization)
    base = load_base(package, num_labels=len(labels))
    template = create_template(base.model, task, config.template_spec(), list(labels))
    checkpoint_path = out / CHECKPOINT_FILE
    checkpoint = load_checkpoint(checkpoint_path) if resume else None
    if checkpoint is not None and (checkpoint.base_id, checkpoint.template_id) != (package.base_id, template.template_id):
        raise ConfigError(f"{checkpoint_path} belongs to another run (base {checkpoint.base_id[:12]}, template "
                          f"{checkpoint.template_id[:12]}; this config makes {package.base_id[:12]}, "
                          f"{template.template_id[:12]}): choose another run.out, or start afresh "
                          f"(fedpeft simulate --restart)")
    job = Job(package.base_id, template.template_id, config.data_spec(labels), config.train_settings(),
              config.personalization.epochs, config.personalization.local_only_epochs, config.personalization.best_epoch,
              run_id=checkpoint.run_id if checkpoint else secrets.token_hex(16),
              encoding=DeltaEncoding(config.federation.delta_encoding, config.federation.delta_block),
              dp_clip=config.privacy.clip if config.privacy.mode == "distributed" else 0.0)
    sec = config.security
    operator_key = load_operator_key(Path(sec.operator_key))
    if config.simulation.device_clients > 0:
        job = _with_device_clients(job, config, package, template, out / DEVICE_EXPORT, operator_key)
    if config.simulation.rank_mix:
        job = replace(job, client_ranks=config.rank_of_partitions(num_partitions(job.data)))
        drawn = Counter(rank or config.adapter.rank for rank in job.client_ranks)
        print("[fedpeft] devices of different sizes: " + ", ".join(f"{n} clients at LoRA rank {r}" for r, n in
              sorted(drawn.items())) + " (each column averaged over the clients that trained it)", flush=True)
    setup = RunSetup(config, list(labels), out, package, base, template, job, _enrolled_keys(sec.keyring),
                     operator_key, checkpoint)
    print(f"[fedpeft] base {package.base_id[:12]} ({config.model.quantization}, "
          f"{package.download_bytes / 1e6:.1f} MB of {package.fp32_bytes / 1e6:.1f} MB fp32), "
          f"template {template.template_id[:12]} ({template.method})", flush=True)
    if checkpoint is not None:
        print(f"[fedpeft] resuming run {job.run_id[:12]} after round {setup.done}/{config.federation.rounds}, "
              f"global adapter {checkpoint.adapter_id[:12]}", flush=True)
    return setup


def _with_device_clients(job: Job, config: FederationConfig, package: BasePackage, template: AdapterTemplate,
                         folder: Path, operator_key: Ed25519PrivateKey) -> Job:
    """Pick the simulated clients that train as devices and give them a signed training
    export of the template (kept in the run folder; a resumed run reuses it)."""
    nodes = num_partitions(job.data)
    chosen = sorted(random.Random(config.run.seed).sample(range(nodes), round(config.simulation.device_clients * nodes)))
    manifest = training_export(package, template, folder, operator_key, job)
    print(f"[fedpeft] {len(chosen)} of {nodes} clients train as devices (ONNX Runtime, numpy {job.train.optimizer}): "
          f"{chosen}; training graph gradients within {manifest['parity']['gradient_max_abs']:.1g} of PyTorch",
          flush=True)
    return replace(job, device_partitions=tuple(chosen), device_export=str(folder.resolve()))


def training_export(package: BasePackage, template: AdapterTemplate, folder: Path, operator_key: Ed25519PrivateKey,
                    job: Job) -> dict[str, Any]:
    """The manifest of the run's signed training export for devices (training graph, and for a
    classifier the evaluation graph) in `folder`: the one there if it was made for this base
    and template, else a new one, its gradients checked on the first client's rows."""
    from fedpeft.device.predict import open_export
    from fedpeft.export.exporter import export_training

    try:
        manifest = open_export(folder, operator_key.public_key())
        if (manifest["base_id"], manifest["template_id"]) == (package.base_id, template.template_id):
            return manifest
    except (FedPeftError, KeyError):
        pass
    print("[fedpeft] device clients: exporting the training graph (ONNX, int8 base)", flush=True)
    return export_training(package, template, folder, operator_key, client_data(job.data, 0).train,
                           job.train.max_length)


def wait_for_nodes(grid: Grid, minimum: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= minimum:
            return nodes
        if time.monotonic() > deadline:
            raise FedPeftError(f"only {len(nodes)} of the {minimum} required nodes connected within {timeout:.0f} s")
        time.sleep(1)


def ask(grid: Grid, nodes: list[int], message_type: str, content_for, timeout: float,
        failed: dict[int, str] | None = None) -> list[Message]:
    """Send one message per node and keep the replies that carry no error; `failed`
    collects why each other node gave none (its error, or no reply by the deadline)."""
    messages = [Message(content_for(node), message_type=message_type, dst_node_id=node) for node in nodes]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    for reply in replies:
        if reply.has_error():
            log(INFO, "node %d failed %s: %s", reply.metadata.src_node_id, message_type, reply.error.reason)
    if failed is not None:
        failed.update({r.metadata.src_node_id: f"failed: {r.error.reason}" for r in replies if r.has_error()})
        answered = {r.metadata.src_node_id for r in replies}
        failed.update({n: f"no reply within {timeout:.0f} s" for n in nodes if n not in answered})
    return [r for r in replies if not r.has_error()]


def distribute(grid: Grid, nodes: list[int], setup: RunSetup, roster: Roster) -> None:
    """Send the template to every node, the base to PyTorch nodes that lack it in their
    cache, and the run's signed training export (made on first need) to device nodes that
    lack it.

    The install content is built once per kind and shared by every message, so the server
    holds one copy of the base however many nodes need it. The first node lacking the base
    gets it alone; the rest go out INSTALL_BATCH nodes at a time, each batch asked again
    first, because nodes that share a cache (simulated nodes on one machine) already hold
    what an earlier batch got: a simulation sends the base once, not once per node.
    """
    job, timeout = setup.job, setup.config.federation.round_timeout
    ids = ConfigRecord({"base-id": job.base_id, "template-id": job.template_id})

    def lacking(asked: list[int]) -> dict[int, str]:
        """Asked nodes that lack the base (or export) or the template -> what they are sent
        besides the template: "base", "export" or ""."""
        needs = {}
        for reply in ask(grid, asked, "query.status", lambda _: RecordDict({"config": ids}), timeout):
            try:
                needs[reply.metadata.src_node_id] = status_reply(reply.content)
            except BadReply as bad:
                roster.drop("status", reply.metadata.src_node_id, bad)
        roster.devices |= {n for n, status in needs.items() if status.device}
        roster.ready |= {n for n, status in needs.items() if status.has_base and status.has_template}
        return {n: "" if status.has_base else "export" if status.device else "base"
                for n, status in sorted(needs.items()) if not (status.has_base and status.has_template)}

    built: dict[str, RecordDict] = {}  # per kind, shared by the messages

    def content(node: int) -> RecordDict:
        kind = batch[node]
        if kind not in built:
            export = setup.out / DEVICE_EXPORT if kind == "export" else None
            if export is not None:
                training_export(setup.package, setup.template, export, setup.operator_key, job)
            built[kind] = install_content(setup.template, setup.package if kind == "base" else None, export)
            built[kind]["config"] = ids
        return built[kind]

    first = lacking(nodes)
    waiting = sorted(first, key=lambda n: first[n] != "base")  # nodes lacking the base first
    start = 0
    while start < len(waiting):
        size = 1 if not start and sum(kind == "base" for kind in first.values()) > 1 else INSTALL_BATCH
        chunk = waiting[start:start + size]
        batch = {n: first[n] for n in chunk} if not start else lacking(chunk)
        for reply in ask(grid, list(batch), "query.install", content, timeout):
            try:
                install_reply(reply.content)
                roster.ready.add(reply.metadata.src_node_id)
            except BadReply as bad:
                roster.drop("install", reply.metadata.src_node_id, bad)
        roster.base_sent_to += sum(kind == "base" for kind in batch.values())
        roster.export_sent_to += sum(kind == "export" for kind in batch.values())
        start += size


def head_round(grid: Grid, setup: RunSetup, roster: Roster) -> RunSetup:
    """Round zero (federation.head_init = class-means): every ready node sends its signed
    per-class feature sums and counts (core/training/class_means.py); the verified ones
    (server/class_means.py) set the classifier head to the nearest-class-mean head the
    rounds start from. Skipped for a model without a head, a resumed run (its checkpoint
    holds the adapter), and under DP (the statistics are not covered by the accountant)."""
    config, job, template, sec = setup.config, setup.job, setup.template, setup.config.security
    if setup.checkpoint or not setup.class_means_head:
        if config.federation.head_init == "class-means" and config.privacy.mode != "off" and not setup.checkpoint:
            print("[fedpeft] round 0 skipped: class feature means are not covered by the DP accountant "
                  "(federation.head_init = 'none' says so for good)", flush=True)
        return setup
    start = time.monotonic()
    names = head_names(template.init, setup.base.task)
    expect = class_means.expectation(job.binding.for_round(0, tensors_id(template.init)), *template.init[names[0]].shape)
    verifier = DeltaVerifier(setup.keyring, VerifyPolicy(0.0, sec.max_examples, sec.max_message_bytes))
    failed: dict[int, str] = {}
    replies = ask(grid, sorted(roster.ready), "query.class_means", lambda _: RecordDict({"config": job.to_config()}),
                  config.federation.round_timeout, failed)
    stats, refused, sizes = [], [], []
    for reply in replies:
        sizes.append(content_bytes(reply.content))
        try:
            stats.append(class_means.checked_statistics(verifier.verify(reply.content, expect, sizes[-1])))
            roster.signers[reply.metadata.src_node_id] = stats[-1].client
        except Exception as exc:  # a check that broke on crafted input must not end the run
            refused.append(as_rejection(exc))
    sums, counts, outliers = class_means.combine(stats, sec.max_weight_ratio)
    refused += outliers
    for bad in refused:
        log(WARNING, "round 0: refused class statistics from %s (%s)", bad.client or "an unproven node", bad)
    used = len(stats) - len(outliers)
    record = {"clients": used, "asked": len(roster.ready), "rows": int(counts.sum()) if used else 0,
              "refused": {r: sum(b.reason == r for b in refused) for r in sorted({b.reason for b in refused})},
              "no_reply": len(failed), "bytes_up_per_client": sum(sizes) / max(len(sizes), 1),
              "seconds": round(time.monotonic() - start, 1)}
    if not used:
        why = "; ".join([*(f"{n} {r}" for r, n in record["refused"].items()), *sorted(set(failed.values()))])
        print(f"[fedpeft] round 0: no usable class statistics ({why or 'no clients'}); the rounds start from the "
              f"template's head", flush=True)
        return replace(setup, round_zero=record)
    weight, bias = head_from_means(sums, counts)
    print(f"[fedpeft] round 0: head set from the class feature means of {used} clients ({record['rows']} rows), "
          f"{record['bytes_up_per_client'] / 1e3:.1f} KB up per client"
          + (f"; refused {record['refused']}" if refused else "") + f"  ({record['seconds']:.0f} s)", flush=True)
    return replace(setup, head_start=with_head(template.init, names, weight, bias), round_zero=record)


def federate(grid: Grid, setup: RunSetup, roster: Roster) -> tuple[Arrays, RunLog]:
    """The rounds: Flower's strategy with signed-delta verification; a checkpoint after each."""
    fed, sec, job, template = setup.config.federation, setup.config.security, setup.job, setup.template
    run_log = RunLog(setup.out / "metrics.jsonl", fed.rounds, rows=list(setup.checkpoint.rows) if setup.checkpoint else [],
                     next_word=setup.config.model.task == "causal-lm")

    def bring_up_new_nodes(round_grid: Grid) -> None:
        """A node that joins (or returns) mid-run gets the template, and the base if it lacks it."""
        joined = sorted(set(round_grid.get_node_ids()) - roster.ready)
        if joined:
            before = (len(roster.ready), roster.base_sent_to)
            distribute(round_grid, joined, setup, roster)
            print(f"[fedpeft] {len(roster.ready) - before[0]} node(s) joined; base sent to "
                  f"{roster.base_sent_to - before[1]}", flush=True)

    def save_checkpoint(server_round: int, arrays: ArrayRecord) -> None:
        if server_round:  # 0 is Flower's look at the initial adapter, before any round
            Checkpoint(setup.done + server_round, job.run_id, job.base_id, job.template_id, from_record(arrays),
                       strategy.state_arrays(), run_log.rows).save(setup.out / CHECKPOINT_FILE)

    tensors = {n: (template.init[n].dtype.str, template.init[n].shape) for n in template.trainable_names}
    verifier = DeltaVerifier(setup.keyring, VerifyPolicy(sec.max_update_norm, sec.max_examples, sec.max_message_bytes))
    hooks = StrategyHooks(on_configure=bring_up_new_nodes, on_train=run_log.train_done,
                          on_evaluate=run_log.evaluate_done)
    fraction = round_fraction(fed, len(roster.ready))
    settings = StrategySettings(name=fed.strategy, fraction=fraction, min_clients=fed.min_clients,
                                min_accepted=sec.min_accepted, max_weight_ratio=sec.max_weight_ratio,
                                options=fed.strategy_options, encoding=job.encoding, privacy=setup.config.privacy,
                                round_offset=setup.done)
    strategy = build_strategy(settings, job.binding, tensors, verifier, hooks, root_update=fltrust_root(setup))
    if setup.checkpoint is not None:
        strategy.restore_state(setup.checkpoint.strategy_state)
    if strategy.ledger is not None:
        plan_privacy(strategy.ledger, setup, run_log.rows, fraction, len(roster.ready))
    if setup.done >= fed.rounds:
        print(f"[fedpeft] all {fed.rounds} rounds were completed before; evaluating and publishing", flush=True)
        return setup.initial, run_log
    if not sec.max_update_norm and setup.config.privacy.mode == "off":  # DP bounds deltas its own way
        print("[fedpeft] security.max_update_norm is 0: deltas of any norm are accepted (an aggregate that is not "
              "finite is still refused); set a bound a few times the honest norms in metrics.jsonl", flush=True)
    try:
        result = strategy.start(grid, to_record(setup.initial), fed.rounds - setup.done, fed.round_timeout,
                                train_config=job.to_config(), evaluate_config=job.to_config(),
                                evaluate_fn=save_checkpoint)
    finally:
        roster.signers.update(strategy.signers)  # who signed what: the personalization report's names
    return (from_record(result.arrays) if len(result.arrays) else setup.initial), run_log


def fltrust_root(setup: RunSetup) -> RootUpdate | None:
    """FLTrust's reference: the server's own update on a root set of rows each round, that
    every delta is weighed against (None for every other strategy)."""
    fed, job = setup.config.federation, setup.job
    if fed.strategy != "fltrust":
        return None
    root = root_split(job.data, fed.root_examples, job.train.seed)
    root_update = RootUpdate(setup.base, setup.template, root, job.train)
    print(f"[fedpeft] fltrust: the server trains on a root set of {len(root)} rows each round and weighs each "
          f"delta by its agreement with that update", flush=True)
    return root_update


def plan_privacy(ledger: PrivacyLedger, setup: RunSetup, rows: list[dict], fraction: float, nodes: int) -> None:
    """Client-level DP before the first round: charge `ledger` with what a resumed run
    already spent (`rows`, metrics.jsonl), refuse a run whose remaining rounds would pass
    privacy.target_epsilon, and say what the run spends."""
    fed, dp = setup.config.federation, setup.config.privacy
    # Rows from before rates were logged: everyone sampled.
    ledger.steps = [(r.get("noise_multiplier") or dp.noise_multiplier, r.get("sample_rate", 1.0)) for r in rows]
    planned = planned_epsilon(ledger, fed.rounds - setup.done, fraction, nodes, fed.min_clients)
    where = "by the server" if dp.mode == "central" else "by each client before signing"
    print(f"[fedpeft] client-level DP ({dp.mode}): deltas clipped and noised {where}, clip {dp.clip:g}, noise "
          f"multiplier {dp.noise_multiplier:g}; the run spends epsilon {planned:.3g} at delta {dp.delta:g} if "
          f"every asked client answers", flush=True)


def round_fraction(fed: FederationSection, nodes: int) -> float:
    """The fraction Flower samples a round: `clients_per_round` of `nodes`, else `fraction`.
    Flower takes int(nodes x fraction): half a client more keeps float rounding from losing one."""
    return min(1.0, (fed.clients_per_round + 0.5) / max(1, nodes)) if fed.clients_per_round else fed.fraction


def planned_epsilon(ledger: PrivacyLedger, rounds: int, fraction: float, nodes: int, min_clients: int = 0) -> float:
    """The run's epsilon if every remaining round samples as Flower will: int(nodes x fraction)
    of the nodes, but never fewer than `min_clients` (federation.min_clients is Flower's
    min_train_nodes: a --clients-per-round below it still asks min_clients nodes); raises
    ConfigError, before any round, above privacy.target_epsilon."""
    sampled = min(max(1, nodes), max(1, int(nodes * fraction), min_clients))
    return ledger.check_budget(rounds, sampled / max(1, nodes))


def evaluation_timeout(config: FederationConfig) -> float:
    """The personalization phase's deadline: `federation.evaluation_timeout`, or the round
    timeout scaled by the phase's epochs against a round's (it trains 2 + 5 epochs by
    default where a round trains 1, on the same clients)."""
    if config.federation.evaluation_timeout > 0:
        return config.federation.evaluation_timeout
    work = config.personalization.epochs + config.personalization.local_only_epochs
    return config.federation.round_timeout * max(1.0, work / config.train.epochs)


def personalize(grid: Grid, setup: RunSetup, final: Arrays, roster: Roster) -> tuple[list[dict[str, Any]], list[dict]]:
    """Every ready node's test accuracy of the initial, global, personalized and local-only
    adapters; and the nodes that gave none, each with why."""
    timeout = evaluation_timeout(setup.config)
    nodes = sorted(roster.ready & set(grid.get_node_ids()))
    sample = setup.config.personalization.clients
    if sample and sample < len(nodes):
        nodes = sorted(random.Random(setup.config.run.seed).sample(nodes, sample))
    print(f"[fedpeft] personalization: evaluating on each client's test split ({len(nodes)} clients, "
          f"deadline {timeout:.0f} s)", flush=True)
    failed: dict[int, str] = {}
    replies = ask(grid, nodes, "query.personalize",
                  lambda _: RecordDict({"arrays": to_record(final), "config": setup.job.to_config()}), timeout, failed)
    sec = setup.config.security
    next_word = setup.config.model.task == "causal-lm"
    reports, refused = checked_reports(replies, lambda c: personalize_reply(c, report.ARMS, sec.max_examples, next_word),
                                       roster.signers, sec.max_weight_ratio)
    for node, bad in refused:
        roster.drop("personalize", node, bad)
        failed[node] = f"bad reply: {bad.reason}"
    # Each row weighs its capped count; a capped one also says what it claimed.
    clients = [{"client": r.client, "examples": r.examples, **r.metrics,
                **({"claimed_examples": r.claimed} if r.claimed != r.examples else {})} for r in reports]
    if next_word:
        clients = [report.with_perplexity(c) for c in clients]
    missing = [{"node": node, "reason": reason} for node, reason in sorted(failed.items())]
    if missing:
        print(f"[fedpeft] {len(missing)} of {len(nodes)} clients did not report: "
              + "; ".join(f"node {m['node']} ({m['reason']})" for m in missing), flush=True)
    if not clients:
        raise FedPeftError(f"no client reported its personalization results within {timeout:.0f} s; the global "
                           f"adapter is in {setup.out / CHECKPOINT_FILE}")
    return sorted(clients, key=lambda c: c["client"]), missing


def centralize(setup: RunSetup, global_accuracy: float) -> dict[str, Any]:
    """The centralized reference (server/centralized.py), trained here on the server."""
    fed = setup.config.federation
    reference = centralized_reference(setup.base, setup.template, setup.job, fed.rounds, fed.fraction,
                                      setup.class_means_head)
    what = "next-word top-3 " if "perplexity" in reference else ""
    print(f"[fedpeft] centralized reference {what}{reference['accuracy']:.3f} (the same adapter, {reference['epochs']} "
          f"epochs over all {reference['train_examples']} training rows pooled): the global adapter is "
          f"{global_accuracy - reference['accuracy']:+.3f} from it", flush=True)
    return reference


def publish(setup: RunSetup, final: Arrays, stats: dict[str, Any], privacy: dict[str, Any]) -> Release:
    """The global adapter as a PEFT folder with a release signed by the operator key; never
    one that is not finite (a checkpoint written before such adapters were refused)."""
    problem = global_problem(final)
    if problem is not None:
        raise FedPeftError(f"the global adapter is not publishable ({problem}); nothing was released")
    release = write_adapter(setup.out / "adapter", setup.base, setup.template, final, setup.operator_key,
                            version=setup.config.federation.rounds, model=setup.config.model, stats=stats,
                            valid_days=setup.config.security.release_days, privacy=privacy)
    print(f"[fedpeft] published adapter release v{release.version} ({release.release_id[:12]}), "
          f"signed by operator key {key_id(setup.operator_key.public_key())[:12]}", flush=True)
    return release


def next_word_figures(stats: dict[str, Any], next_word: dict[str, Any] | None,
                      centralized: dict[str, Any] | None) -> dict[str, float | None]:
    """A causal LM's named figures: `<arm>_top1`, `<arm>_top3`, `<arm>_perplexity` (weighted
    means over the clients), and the centralized reference's; nothing for a classifier."""
    if next_word is None:
        return {}
    figures = {f"{arm}_{name}": next_word[name][arm]["weighted_mean"] for arm in stats for name in next_word}
    return figures | {f"centralized_{name}": centralized[name] if centralized else None for name in next_word}


def summarize(setup: RunSetup, final: Arrays, clients: list[dict[str, Any]], missing: list[dict], stats: dict[str, Any],
              release: Release, run_log: RunLog, roster: Roster, centralized: dict[str, Any] | None,
              privacy: dict[str, Any], next_word_stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """summary.json, clients.json and the plots."""
    template, package = setup.template, setup.package
    uploads = [r["bytes_up"] / r["replies"] for r in run_log.rows if r.get("replies")]
    summary = {
        "rounds": setup.config.federation.rounds,
        "clients": len(clients) + len(missing),  # asked for the personalization report
        "clients_reported": len(clients),  # the accuracies below are over these
        "missing_clients": missing,
        "resumed_after_round": setup.done,
        "labels": setup.labels,
        "base_id": package.base_id,
        "template_id": template.template_id,
        "adapter_method": template.method,
        "head_init": setup.round_zero,  # round zero's cost and what it used (None: not run)
        "quantization": setup.config.model.quantization,
        "initial_accuracy": stats["initial"]["weighted_mean"],
        "global_accuracy": stats["global"]["weighted_mean"],
        "personalized_accuracy": stats["personalized"]["weighted_mean"],
        "local_only_accuracy": stats["local_only"]["weighted_mean"],
        "centralized_accuracy": centralized["accuracy"] if centralized else None,
        "centralized": centralized,
        **next_word_figures(stats, next_word_stats, centralized),
        "next_word": next_word_stats,
        "privacy": privacy,
        "personalization": stats,
        "release_id": release.release_id,
        "adapter_id": tensors_id(final),
        "rejected": run_log.totals("rejected"),
        "bad_replies": {**run_log.totals("eval_rejected", "evaluate: "), **roster.bad_replies},
        "rejections": [{"round": r["round"], **x} for r in run_log.rows for x in r.get("rejections", [])],
        "unchanged_rounds": [r["round"] for r in run_log.rows if r.get("unchanged")],
        "bytes_up_per_client_round": sum(uploads) / len(uploads) if uploads else 0,
        "base_fp32_bytes": package.fp32_bytes,
        "base_download_bytes": package.download_bytes,
        "device_clients": [f"client-{p}" for p in setup.job.device_partitions],  # trained with ONNX Runtime
        "base_sent_to": roster.base_sent_to,  # nodes this server process sent the base to (the rest had it cached)
        "device_nodes": len(roster.devices),  # deployed nodes without torch (the light install)
        "export_sent_to": roster.export_sent_to,  # device nodes this process sent the training export to
        "trainable_params": int(sum(template.init[n].size for n in template.trainable_names)),
        "total_params": int(sum(p.numel() for p in setup.base.model.parameters())),
    }
    out = setup.out
    report.write_json(out / "summary.json", summary)
    report.write_json(out / "clients.json", clients)
    report.plot_curves(run_log.rows, summary["initial_accuracy"], summary["global_accuracy"], out / "curves.png",
                       summary["centralized_accuracy"], next_word=next_word_stats is not None)
    report.plot_clients(clients, out / "clients.png", "next-word top-3 accuracy" if next_word_stats else "test accuracy")
    return summary


def run_federation(grid: Grid, config: FederationConfig, labels: tuple[str, ...], out: Path,
                   resume: bool = False) -> dict[str, Any]:
    """The whole run; writes adapter/, metrics.jsonl, summary.json and plots into `out`.

    After every completed round the server state goes to `out/checkpoint.safetensors`;
    with `resume`, a run whose checkpoint is there goes on from its last completed round.
    """
    setup = prepare(config, labels, out, resume)
    roster = Roster()
    nodes = wait_for_nodes(grid, config.federation.min_clients, config.federation.round_timeout)
    distribute(grid, nodes, setup, roster)
    print(f"[fedpeft] base sent to {roster.base_sent_to} of {len(nodes)} nodes"
          + (f"; {len(roster.devices)} device nodes (no torch), training export sent to {roster.export_sent_to}"
             if roster.devices else ""), flush=True)
    setup = head_round(grid, setup, roster)
    final, run_log = federate(grid, setup, roster)
    clients, missing = personalize(grid, setup, final, roster)
    stats, table = report.personalization_table(clients)
    next_word_stats = None
    if setup.config.model.task == "causal-lm":
        next_word_stats, table = report.next_word_table(clients)
    print(table, flush=True)
    centralized = centralize(setup, stats["global"]["weighted_mean"]) if config.run.centralized_baseline else None
    privacy = privacy_report(config.privacy, run_log.rows)
    if privacy["mode"] != "off":
        print(f"[fedpeft] privacy: the adapter is ({privacy['epsilon']:.3g}, {privacy['delta']:g})-DP per client "
              f"over {privacy['rounds']} rounds ({privacy['mode']} noise, opacus RDP accountant)", flush=True)
    release = publish(setup, final, stats, privacy)
    return summarize(setup, final, clients, missing, stats, release, run_log, roster, centralized, privacy,
                     next_word_stats)


def _enrolled_keys(path: str) -> Keyring:
    if not path:
        raise ConfigError("security.keyring is not set: enroll client keys with `fedpeft keys enroll`")
    keyring = Keyring.load(Path(path))
    if not keyring.keys:
        raise ConfigError(f"keyring {path} enrolls no client keys; deltas could not be verified")
    return keyring
