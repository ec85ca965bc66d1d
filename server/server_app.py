"""fedpeft ServerApp: ship the base once, run adapter rounds, report personalization."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from logging import INFO
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from fedpeft.core.adapters.state import set_adapter_arrays
from fedpeft.core.adapters.template import AdapterTemplate, create_template
from fedpeft.core.base.cache import NodeCache, default_cache_root
from fedpeft.core.base.model import load_base
from fedpeft.core.base.package import BasePackage
from fedpeft.core.base.tasks import get_task
from fedpeft.core.config import FederationConfig, load_config
from fedpeft.core.errors import ConfigError, FedPeftError
from fedpeft.core.training.data import load_rows
from fedpeft.core.training.job import Job
from fedpeft.core.trust.hashing import tensors_id
from fedpeft.core.trust.keys import Keyring, key_id, load_operator_key
from fedpeft.core.trust.release import sign_release
from fedpeft.core.wire.records import from_record, install_content, to_record

from . import report
from .checkpoint import CHECKPOINT_FILE, Checkpoint, load_checkpoint
from .run_log import RunLog
from .strategy import RunBinding, build_strategy
from .verify import DeltaVerifier, VerifyPolicy


@dataclass
class Distribution:
    nodes: list[int]
    base_sent_to: int


def wait_for_nodes(grid: Grid, minimum: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= minimum:
            return nodes
        if time.monotonic() > deadline:
            raise FedPeftError(f"only {len(nodes)} of the {minimum} required nodes connected within {timeout:.0f} s")
        time.sleep(1)


def _ask(grid: Grid, nodes: list[int], message_type: str, content_for, timeout: float) -> list[Message]:
    messages = [Message(content_for(node), message_type=message_type, dst_node_id=node) for node in nodes]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    for reply in replies:
        if reply.has_error():
            log(INFO, "node %d failed %s: %s", reply.metadata.src_node_id, message_type, reply.error.reason)
    return [r for r in replies if not r.has_error()]


def distribute(grid: Grid, nodes: list[int], job: Job, package: BasePackage, template: AdapterTemplate,
               timeout: float) -> Distribution:
    """Send the template to every node and the base to nodes that lack it in their cache."""
    ids = ConfigRecord({"base-id": job.base_id, "template-id": job.template_id})
    status = _ask(grid, nodes, "query.status", lambda _: RecordDict({"config": ids}), timeout)
    needs = {r.metadata.src_node_id: r.content.config_records["status"] for r in status}
    lacking_base = {n for n, s in needs.items() if not s["has-base"]}
    lacking = sorted(n for n, s in needs.items() if not s["has-base"] or not s["has-template"])

    def content(node: int) -> RecordDict:
        record = install_content(template, package if node in lacking_base else None)
        record["config"] = ids
        return record

    installed = _ask(grid, lacking, "query.install", content, timeout)
    ready = sorted((set(needs) - set(lacking)) | {r.metadata.src_node_id for r in installed})
    return Distribution(ready, len(lacking_base))


def run_federation(grid: Grid, config: FederationConfig, labels: tuple[str, ...], out: Path,
                   resume: bool = False) -> dict:
    """The whole run; writes adapter/, metrics.jsonl, summary.json and plots into `out`.

    After every completed round the server state goes to `out/checkpoint.safetensors`;
    with `resume`, a run whose checkpoint is there goes on from its last completed round.
    """
    out.mkdir(parents=True, exist_ok=True)
    task = get_task(config.model.task)
    folder = config.model.folder()
    cache = NodeCache(default_cache_root() / "server")
    package = BasePackage.from_pretrained(folder, task, config.model.quantization)
    cache.put(package, package.base_id)
    base = load_base(cache, package.base_id, num_labels=len(labels))
    template = create_template(base.model, task, config.template_spec(), list(labels))
    checkpoint_path = out / CHECKPOINT_FILE
    checkpoint = load_checkpoint(checkpoint_path) if resume else None
    if checkpoint is not None and (checkpoint.base_id, checkpoint.template_id) != (package.base_id, template.template_id):
        raise ConfigError(f"{checkpoint_path} belongs to another run (base {checkpoint.base_id[:12]}, template "
                          f"{checkpoint.template_id[:12]}; this config makes {package.base_id[:12]}, "
                          f"{template.template_id[:12]}): choose another run.out or remove it")
    job = Job(package.base_id, template.template_id, config.data_spec(labels), config.train_settings(),
              config.personalization.epochs, config.personalization.local_only_epochs,
              run_id=checkpoint.run_id if checkpoint else secrets.token_hex(16))
    sec = config.security
    keyring = Keyring.from_json(checkpoint.keyring_json) if checkpoint else _enrolled_keys(sec.keyring)
    operator_key = load_operator_key(Path(sec.operator_key))
    fed = config.federation
    print(f"[fedpeft] base {package.base_id[:12]} ({config.model.quantization}, "
          f"{package.download_bytes / 1e6:.1f} MB of {package.fp32_bytes / 1e6:.1f} MB fp32), "
          f"template {template.template_id[:12]} ({template.method})", flush=True)
    initial = dict(template.init)
    done = 0
    if checkpoint is not None:
        initial, done = checkpoint.adapter, checkpoint.round
        print(f"[fedpeft] resuming run {job.run_id[:12]} after round {done}/{fed.rounds}, "
              f"global adapter {checkpoint.adapter_id[:12]}", flush=True)

    nodes = wait_for_nodes(grid, fed.min_clients, fed.round_timeout)
    dist = distribute(grid, nodes, job, package, template, fed.round_timeout)
    print(f"[fedpeft] base sent to {dist.base_sent_to} of {len(nodes)} nodes", flush=True)
    ready, base_sends = set(dist.nodes), dist.base_sent_to

    def bring_up_new_nodes(round_grid: Grid) -> None:
        """A node that joins (or returns) mid-run gets the template, and the base if it lacks it."""
        nonlocal base_sends
        joined = sorted(set(round_grid.get_node_ids()) - ready)
        if joined:
            added = distribute(round_grid, joined, job, package, template, fed.round_timeout)
            ready.update(added.nodes)
            base_sends += added.base_sent_to
            print(f"[fedpeft] {len(added.nodes)} node(s) joined; base sent to {added.base_sent_to}", flush=True)

    run_log = RunLog(out / "metrics.jsonl", fed.rounds, rows=list(checkpoint.rows) if checkpoint else [])
    binding = RunBinding(job.run_id, job.base_id, job.template_id,
                         {n: (template.init[n].dtype.str, template.init[n].shape) for n in template.trainable_names})
    verifier = DeltaVerifier(keyring, VerifyPolicy(sec.max_update_norm, sec.max_examples, sec.max_message_bytes))
    strategy = build_strategy(fed.strategy, fed.fraction, fed.min_clients, binding, verifier, sec.min_accepted,
                              fed.strategy_options)
    strategy.on_train, strategy.on_evaluate = run_log.train_done, run_log.evaluate_done
    strategy.on_configure, strategy.round_offset = bring_up_new_nodes, done
    if checkpoint is not None:
        strategy.restore_state(checkpoint.strategy_state)

    def save_checkpoint(server_round: int, arrays: ArrayRecord) -> None:
        if server_round:  # 0 is Flower's look at the initial adapter, before any round
            Checkpoint(done + server_round, job.run_id, job.base_id, job.template_id, from_record(arrays),
                       keyring.to_json(), strategy.state_arrays(), run_log.rows).save(checkpoint_path)

    result = strategy.start(grid, to_record(initial), fed.rounds - done, fed.round_timeout,
                            train_config=job.to_config(), evaluate_config=job.to_config(), evaluate_fn=save_checkpoint)
    final = from_record(result.arrays) if len(result.arrays) else initial

    print("[fedpeft] personalization: evaluating on every client's test split", flush=True)
    replies = _ask(grid, sorted(ready & set(grid.get_node_ids())), "query.personalize",
                   lambda _: RecordDict({"arrays": to_record(final), "config": job.to_config()}),
                   fed.round_timeout)
    clients = sorted(
        ({"client": str(r.content.config_records["client"]["name"]),
          "examples": int(r.content.metric_records["metrics"]["num-examples"]),
          **{arm: float(r.content.metric_records["metrics"][f"{arm}-acc"]) for arm in report.ARMS}}
         for r in replies),
        key=lambda c: c["client"],
    )
    stats, table = report.personalization_table(clients)
    print(table, flush=True)

    peft_model = template.attach(base.model)
    set_adapter_arrays(peft_model, final)
    peft_model.peft_config["default"].base_model_name_or_path = str(folder)
    peft_model.save_pretrained(str(out / "adapter"))
    release = sign_release(out / "adapter", operator_key, version=fed.rounds, base_id=package.base_id,
                           template_id=template.template_id, labels=list(labels), parent=None,
                           metrics={"global_accuracy": stats["global"]["weighted_mean"]}, valid_days=sec.release_days)
    print(f"[fedpeft] published adapter release v{release.version} ({release.release_id[:12]}), "
          f"signed by operator key {key_id(operator_key.public_key())[:12]}", flush=True)

    uploads = [r["bytes_up"] / r["replies"] for r in run_log.rows if r.get("replies")]
    summary = {
        "rounds": fed.rounds,
        "clients": len(clients),
        "resumed_after_round": done,
        "labels": list(labels),
        "base_id": package.base_id,
        "template_id": template.template_id,
        "adapter_method": template.method,
        "quantization": config.model.quantization,
        "initial_accuracy": stats["initial"]["weighted_mean"],
        "global_accuracy": stats["global"]["weighted_mean"],
        "personalized_accuracy": stats["personalized"]["weighted_mean"],
        "local_only_accuracy": stats["local_only"]["weighted_mean"],
        "personalization": stats,
        "release_id": release.release_id,
        "adapter_id": tensors_id(final),
        "rejected": run_log.rejected_totals(),
        "rejections": [{"round": r["round"], **x} for r in run_log.rows for x in r.get("rejections", [])],
        "unchanged_rounds": [r["round"] for r in run_log.rows if r.get("unchanged")],
        "bytes_up_per_client_round": sum(uploads) / len(uploads) if uploads else 0,
        "base_fp32_bytes": package.fp32_bytes,
        "base_download_bytes": package.download_bytes,
        "base_sent_to": base_sends,  # nodes this server process sent the base to (the rest had it cached)
        "trainable_params": int(sum(template.init[n].size for n in template.trainable_names)),
        "total_params": int(sum(p.numel() for p in base.model.parameters())),
    }
    report.write_json(out / "summary.json", summary)
    report.write_json(out / "clients.json", clients)
    report.plot_curves(run_log.rows, summary["initial_accuracy"], out / "curves.png")
    report.plot_clients(clients, out / "clients.png")
    return summary


def _enrolled_keys(path: str) -> Keyring:
    if not path:
        raise ConfigError("security.keyring is not set: enroll client keys with `fedpeft keys enroll`")
    keyring = Keyring.load(Path(path))
    if not keyring.keys:
        raise ConfigError(f"keyring {path} enrolls no client keys; deltas could not be verified")
    return keyring


def make_server_app(config: FederationConfig, labels: tuple[str, ...], out: Path) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, config, labels, out)

    return app


app = ServerApp()


@app.main()
def deployed_main(grid: Grid, context: Context) -> None:
    """The ServerApp `flwr run` starts on a SuperLink (deploy/): the run config names the
    settings file and whether to resume from the checkpoint in its run.out."""
    if not context.run_config.get("config"):
        raise ConfigError("the run config names no settings file (config=...): submit with `fedpeft deploy`")
    config = load_config(str(context.run_config["config"]))
    _, labels = load_rows(config.data_spec())
    run_federation(grid, config, labels, Path(config.run.out), resume=bool(context.run_config["resume"]))
