"""`fedpeft simulate`: a whole federation on Flower's simulation engine, one machine."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedpeft.client.identity import KEYS_DIR_ENV, OPERATOR_KEY_ENV, simulated_key_path
from fedpeft.client.runtime import SHARED_CACHE_ENV
from fedpeft.core.config import FederationConfig
from fedpeft.core.errors import FedPeftError
from fedpeft.core.training.accelerator import client_resources, pick_device
from fedpeft.core.training.data import client_data, load_rows, num_partitions
from fedpeft.core.trust.json_reader import read_json
from fedpeft.core.trust.keys import (
    OPERATOR_PASSPHRASE_ENV,
    Keyring,
    load_public_key,
    new_key_pair,
    passphrase_from_env,
    public_key_path,
)

BACKDOOR_CLIENTS = 200  # clients whose test rows measure a backdoor


def simulate(config: FederationConfig, verbose: bool = False, resume: bool = True) -> dict:
    """Run the federation; with `resume`, a run.out that holds a checkpoint (a run killed
    mid-way) goes on after its last completed round, as a deployed run does."""
    out = Path(config.run.out)
    device = pick_device(config.train.device)  # a missing GPU fails here, in one line
    spec = config.data_spec()
    _, labels = load_rows(spec)  # bad data fails here, with its reason, before Flower starts
    spec = config.data_spec(labels)
    nodes = num_partitions(spec)
    for partition in range(nodes):
        client_data(spec, partition)
    if config.privacy.mode != "off":  # over the epsilon target: one line, before Flower starts
        from fedpeft.server.federation import planned_epsilon, round_fraction
        from fedpeft.server.privacy import PrivacyLedger

        planned_epsilon(PrivacyLedger(config.privacy), config.federation.rounds,
                        round_fraction(config.federation, nodes), nodes, config.federation.min_clients)
    what = f"{len(labels)} labels" if labels else "next-word prediction (causal LM)"
    print(f"[fedpeft] {nodes} clients, {what}, {config.federation.rounds} rounds, training on {device}"
          + (f" ({config.simulation.clients_per_gpu} clients per GPU)" if device == "cuda" else "") + f" -> {out}",
          flush=True)

    # Flower and Ray are imported here so that `fedpeft --help` stays fast.
    from flwr.simulation import run_simulation

    from fedpeft.client.client_app import make_client_app
    from fedpeft.server.server_app import make_server_app
    from fedpeft.simulations.misbehaving import PLAN_ENV, active, choose_plan, expected_rejections, misbehaving_mod

    from .console import LOG_NAME, quiet, ray_init_args
    from .server import report

    sim = config.simulation
    plan = choose_plan(nodes, sim.misbehaving, config.run.seed, sim.behaviours, config.security.max_update_norm,
                       sim.attackers, sim.attacks, sim.attack_from_round)
    if "slow-report" in plan["behaviours"]:
        from fedpeft.server.federation import evaluation_timeout

        plan["report_deadline"] = evaluation_timeout(config)  # a slow reporter holds its report past it
    if plan["partitions"]:
        print(f"[fedpeft] misbehaving clients: {sorted(int(p) for p in plan['partitions'])} "
              f"rotating through {plan['behaviours']}", flush=True)
    if plan["attack"]["partitions"]:
        print(f"[fedpeft] attacking clients (validly signed): {sorted(int(p) for p in plan['attack']['partitions'])} "
              f"from round {sim.attack_from_round}: {plan['attack']['kinds']}", flush=True)
    ensure_operator_key(Path(config.security.operator_key))

    summary_path = out / "summary.json"
    summary_path.unlink(missing_ok=True)  # a stale summary must not pass for this run's
    work = Path(tempfile.mkdtemp(prefix="fedpeft-sim-"))
    try:
        keyring = enroll_simulated_clients(work / "keys", nodes)
        config = config.with_overrides(**{"security.keyring": str(keyring)})
        environment = {
            SHARED_CACHE_ENV: str(work / "nodes"),  # one copy of the base for all simulated nodes
            KEYS_DIR_ENV: str(work / "keys"),       # ... and signs with keys/client-<partition>.key
            OPERATOR_KEY_ENV: str(public_key_path(Path(config.security.operator_key))),  # devices check exports
            PLAN_ENV: json.dumps(plan) if active(plan) else None,
        }
        print(f"[fedpeft] starting Flower's simulation engine; its log and warnings go to {out / LOG_NAME}"
              + ("" if verbose else " (--verbose shows them here)"), flush=True)
        with _environment(environment), quiet(out / LOG_NAME, verbose):
            run_simulation(
                server_app=make_server_app(config, labels, out, resume),
                client_app=make_client_app([misbehaving_mod] if active(plan) else None),
                num_supernodes=nodes,
                backend_config={"client_resources": client_resources(device, config.simulation.clients_per_gpu),
                                "init_args": ray_init_args(verbose)},
                verbose_logging=verbose,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not summary_path.is_file():
        raise FedPeftError(f"the federation did not finish: no {summary_path} (see the log above)")
    summary = read_json(summary_path)
    if plan["partitions"]:
        summary["misbehaving"] = {"plan": plan, "expected_rejected": expected_rejections(plan, config.federation.rounds)}
    if plan["attack"]["partitions"]:
        summary["attack"] = {**plan["attack"], "share": sim.attackers}
        if "backdoor" in plan["attack"]["kinds"]:
            summary["attack"]["backdoor_success"] = backdoor_success(config, out, nodes)
    if active(plan):
        report.write_json(summary_path, summary)
    return summary


def backdoor_success(config: FederationConfig, out: Path, nodes: int) -> float:
    """Share of test rows (of up to BACKDOOR_CLIENTS clients) not of the backdoor label that
    the published adapter puts in that label once the trigger is added; for a causal LM,
    share of test rows after which, with LM_TRIGGER added, the published adapter's first
    next-word suggestion is LM_TARGET (its top-3 share is printed too)."""
    from fedpeft.scoring import accuracy, pooled_test, suggested
    from fedpeft.simulations.attacks import BACKDOOR_LABEL, LM_TARGET, LM_TRIGGER, TRIGGER, backdoor_rows, \
        lm_backdoor_rows

    test = pooled_test(config, range(min(nodes, BACKDOOR_CLIENTS)))
    key = public_key_path(Path(config.security.operator_key))
    if config.model.task == "causal-lm":
        rows = lm_backdoor_rows(test)
        top1, top3 = suggested(out / "adapter", key, config, rows.texts)
        print(f"[fedpeft] backdoor success: after {LM_TRIGGER!r} the published adapter suggests {LM_TARGET!r} first "
              f"on {top1:.1%} of {len(rows)} test rows (among its 3 suggestions: {top3:.1%})", flush=True)
        return top1
    rows = backdoor_rows(test)
    success = accuracy(out / "adapter", key, config, rows)
    print(f"[fedpeft] backdoor success: {success:.1%} of {len(rows)} test rows with {TRIGGER!r} added are "
          f"classified as label {BACKDOOR_LABEL} by the published adapter", flush=True)
    return success


def ensure_operator_key(path: Path) -> None:
    """A simulation publishes signed releases: create the operator key if there is none."""
    if not path.exists():
        kid = new_key_pair(path, passphrase_from_env(OPERATOR_PASSPHRASE_ENV))
        print(f"[fedpeft] created operator key {path} (key id {kid[:12]}); public key {public_key_path(path)}",
              flush=True)


def enroll_simulated_clients(keys_dir: Path, count: int) -> Path:
    """One key per simulated client, enrolled in a keyring for this run only."""
    keyring = Keyring(keys_dir / "keyring.json")
    for partition in range(count):
        path = simulated_key_path(keys_dir, partition)
        new_key_pair(path)
        keyring.enroll(f"client-{partition}", load_public_key(public_key_path(path)))
    keyring.save()
    return keyring.path


def _set_environment(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@contextmanager
def _environment(values: dict[str, str | None]) -> Iterator[None]:
    """Set environment variables (None: unset) for the simulation's workers, then restore."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    _set_environment(values)
    try:
        yield
    finally:
        _set_environment(previous)
