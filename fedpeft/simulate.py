"""`fedpeft simulate`: a whole federation on Flower's simulation engine, one machine."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from fedpeft.config import FederationConfig
from fedpeft.core.data import client_data, load_rows, num_partitions
from fedpeft.core.errors import FedPeftError


def simulate(config: FederationConfig) -> dict:
    out = Path(config.run.out)
    spec = config.data_spec()
    _, labels = load_rows(spec)  # bad data fails here, with its reason, before Flower starts
    spec = config.data_spec(labels)
    nodes = num_partitions(spec)
    for partition in range(nodes):
        client_data(spec, partition)
    print(f"[fedpeft] {nodes} clients, {len(labels)} labels, {config.federation.rounds} rounds -> {out}", flush=True)

    # Flower and Ray are imported here so that `fedpeft --help` stays fast.
    from flwr.simulation import run_simulation

    from fedpeft.client.client_app import app as client_app
    from fedpeft.server.server_app import make_server_app

    cache_root = tempfile.mkdtemp(prefix="fedpeft-nodes-")
    previous = os.environ.get("FEDPEFT_CACHE")
    os.environ["FEDPEFT_CACHE"] = cache_root  # each simulated node caches under node-<id>/
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        run_simulation(
            server_app=make_server_app(config, labels, out),
            client_app=client_app,
            num_supernodes=nodes,
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
        )
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)
        if previous is None:
            os.environ.pop("FEDPEFT_CACHE", None)
        else:
            os.environ["FEDPEFT_CACHE"] = previous
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        raise FedPeftError(f"the federation did not finish: no {summary_path} (see the log above)")
    return json.loads(summary_path.read_text())
