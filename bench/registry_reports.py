"""Device health reports against a real registry process on 127.0.0.1 over TLS.

Enrolls `--devices` device keys, publishes one release, then sends `--reports` signed
reports as fast as `--threads` client threads can (one report per device per release is
counted, a later one replacing the earlier; the rest are refused by name: rate or replay), and prints reports per second
and the registry process's resident memory before and after, for accepted reports and for
a flood of refused ones side by side.

    .venv/bin/python bench/registry_reports.py [--devices 1000] [--reports 5000] [--threads 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
from safetensors.numpy import save_file

import fedpeft  # noqa: F401
from fedpeft.core.trust.device_report import sign_report
from fedpeft.core.trust.keys import Keyring, load_private_key, new_key_pair
from fedpeft.core.trust.release import sign_release
from fedpeft.device.registry_client import RegistryClient, RegistryError
from fedpeft.server.registry import operator
from fedpeft.server.registry.process import RegistryProcess, operator_material


def _send(address: str, ca: Path, reports: list[tuple[bytes, bytes]], threads: int) -> tuple[float, dict[str, int]]:
    outcomes: dict[str, int] = {}
    clients = [RegistryClient(address, ca) for _ in range(threads)]

    def send(item: tuple[int, tuple[bytes, bytes]]) -> str:
        index, (payload, signature) = item
        try:
            clients[index % threads].report(payload, signature)
            return "accepted"
        except RegistryError as error:
            return str(error).split(": ")[2]

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for outcome in pool.map(send, enumerate(reports)):
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    seconds = time.perf_counter() - start
    for client in clients:
        client.close()
    return seconds, outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--reports", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        key = operator_material(root)
        devices = Keyring(root / "devices.json")
        keys = []
        for index in range(args.devices):
            new_key_pair(root / "keys" / f"d{index}.key")
            keys.append(load_private_key(root / "keys" / f"d{index}.key"))
            devices.enroll(f"d{index}", keys[-1].public_key())
        devices.save()
        (root / "adapter").mkdir()
        (root / "adapter" / "adapter_config.json").write_text("{}")
        save_file({"w": np.zeros(4, np.float32)}, str(root / "adapter" / "adapter_model.safetensors"))
        base_id = "b" * 64
        sign_release(root / "adapter", key, version=1, base_id=base_id, template_id="t", labels=["a"], parent=None,
                     metrics={}, valid_days=1)
        registry = RegistryProcess(root, root / "operators.json", root / "tls",
                                   extra=("--devices", str(root / "devices.json"))).start()
        try:
            process = psutil.Process(registry.process.pid)
            with RegistryClient(registry.address, root / "tls" / "ca.crt") as client:
                release = operator.publish(client, key, root / "adapter", "stable")
            reports = [sign_report(keys[i % args.devices], base_id=base_id, release_id=release.release_id,
                                   channel="stable", load_ok=True, latency_ms=(5.0, 9.0), rows=100, correct=81,
                                   previous_correct=80) for i in range(args.reports)]
            rows = []
            for label, batch in (("5 reports per device (a later one replaces the earlier)", reports),
                                 ("the same again (all refused by name)", reports)):
                rss_before = process.memory_info().rss
                seconds, outcomes = _send(registry.address, root / "tls" / "ca.crt", batch, args.threads)
                rows.append((label, len(batch) / seconds, outcomes, rss_before, process.memory_info().rss))
        finally:
            registry.stop()
    print(f"{args.devices} enrolled devices, {args.reports} reports per row, {args.threads} client threads")
    for label, rate, outcomes, before, after in rows:
        print(f"{label:52s} {rate:8.0f} reports/s  registry RSS {before / 2**20:.0f} -> {after / 2**20:.0f} MB  "
              f"{dict(sorted(outcomes.items()))}")


if __name__ == "__main__":
    main()
