"""Device pulls from a real registry process on 127.0.0.1 over TLS.

Publishes one release of the default adapter shapes (bundled all-MiniLM-L6-v2, LoRA r=8,
4 labels), then runs side by side in one process and prints pulls/second, bytes per pull
and ratios:

1. full pulls, one at a time: check, download, verify, install;
2. full pulls, `--concurrency` devices at once (each its own TLS channel and state);
3. "not modified" checks of devices that are already current;

each against a registry without TUF and one serving TUF metadata (devices provisioned
with its root, the channel's role verified by python-tuf before each pull), with the
TUF/plain ratio.

    .venv/bin/python bench/registry_pulls.py [--pulls 200] [--concurrency 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from verify_throughput import minilm_lora_template, minilm_model

import fedpeft  # noqa: F401
from fedpeft.core.training.synthetic_data import LABELS
from fedpeft.core.trust.keys import load_private_key
from fedpeft.core.trust.release import sign_release
from fedpeft.device.registry_client import RegistryClient
from fedpeft.device.slot import Device
from fedpeft.server.registry import operator
from fedpeft.server.registry.process import RegistryProcess, operator_material
from fedpeft.server.registry.tuf_operator import init_repository


def _pulls(registry: RegistryProcess, tls: Path, public, base_id: str, folders: list[Path],
           concurrency: int, trusted_root: bytes | None) -> tuple[float, list]:
    def pull(folder: Path):
        with RegistryClient(registry.address, tls / "ca.crt") as client:
            return Device(folder, public, base_id, trusted_root=trusted_root).pull(client)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(pull, folders))
    return time.perf_counter() - start, results


def _measure(root: Path, key, public, base_id: str, args, tuf: bool) -> tuple[list, object]:
    """Publish the adapter to a fresh registry (with TUF or without) and time the three kinds of pull."""
    mode = "tuf" if tuf else "plain"
    extra, channel_keys, trusted_root = (), [], None
    if tuf:
        made = init_repository(root / "tuf", key)
        extra, channel_keys = ("--tuf", str(made.registry)), [load_private_key(made.offline / "stable.key")]
        trusted_root = made.root.read_bytes()
    registry = RegistryProcess(root / mode, root / "operators.json", root / "tls", extra=extra).start()
    try:
        with RegistryClient(registry.address, root / "tls" / "ca.crt") as client:
            release = operator.publish(client, key, root / "adapter", "stable", channel_keys=channel_keys)
        rows = []
        for label, concurrency, prefix in (("full pull, sequential", 1, "seq"),
                                           (f"full pull, {args.concurrency} concurrent", args.concurrency, "par"),
                                           (f"not modified, {args.concurrency} concurrent", args.concurrency, "par")):
            folders = [root / mode / f"{prefix}-{i}" for i in range(args.pulls)]
            seconds, results = _pulls(registry, root / "tls", public, base_id, folders, concurrency, trusted_root)
            expected = "not-modified" if label.startswith("not") else "installed"
            assert all(r.status == expected for r in results), {r.status for r in results}
            rows.append((label, args.pulls / seconds, sum(r.bytes_received for r in results) / args.pulls))
    finally:
        registry.stop()
    return rows, release


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pulls", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        key = operator_material(root)
        public = key.public_key()
        model = minilm_model()
        template = minilm_lora_template(model)
        base_id = "b" * 64
        template.attach(model).save_pretrained(str(root / "adapter"))
        sign_release(root / "adapter", key, version=1, base_id=base_id, template_id=template.template_id,
                     labels=list(LABELS), parent=None, metrics={}, valid_days=1)

        measured = {tuf: _measure(root, key, public, base_id, args, tuf) for tuf in (False, True)}

    release = measured[False][1]
    payload = sum(e["size"] for e in release.files.values())
    print(f"release: {len(release.files)} files, {payload:,} bytes (adapter_model.safetensors + config)")
    print(f"{'':38s} {'pulls/s':>9s} {'bytes/pull':>11s} {'vs sequential':>14s} {'TUF pulls/s':>12s} {'TUF/plain':>10s}")
    plain, tuf = measured[False][0], measured[True][0]
    for (label, rate, per_pull), (_, tuf_rate, _) in zip(plain, tuf, strict=True):
        print(f"{label:38s} {rate:9.1f} {per_pull:11,.0f} {rate / plain[0][1]:13.2f}x {tuf_rate:12.1f} "
              f"{tuf_rate / rate:9.2f}x")


if __name__ == "__main__":
    main()
