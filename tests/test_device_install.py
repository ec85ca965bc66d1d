"""The light device install, built for real: pip installs fedpeft without its dependencies
plus device/requirements.txt into a fresh environment with no torch, then that
environment pulls a release, personalizes it and predicts; with flwr added, it holds what
a device node runs (the ClientApp, `fedpeft device join`) and still no torch. Slow (pip
downloads): marked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA, registry_trusting

from fedpeft.core.training.data import client_data
from fedpeft.core.training.synthetic_data import LABELS
from fedpeft.device.registry_client import RegistryClient
from fedpeft.server.registry import operator as registry_operator

ROOT = Path(__file__).resolve().parents[1]


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


@pytest.mark.slow
def test_a_device_environment_without_torch_pulls_trains_and_predicts(trained_export, tmp_path):
    env = tmp_path / "device-env"
    python = env / "bin" / "python"
    for step in ([sys.executable, "-m", "venv", str(env)],
                 [str(python), "-m", "pip", "install", "-q", "--no-deps", str(ROOT)],
                 [str(python), "-m", "pip", "install", "-q", "-r", str(ROOT / "device" / "requirements.txt")]):
        proc = subprocess.run(step, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    for heavy in ("torch", "transformers", "peft", "ray", "flwr"):
        assert subprocess.run([str(python), "-c", f"import {heavy}"], capture_output=True).returncode != 0, heavy
    site = next((env / "lib").glob("python*/site-packages"))
    full = next((Path(sys.prefix) / "lib").glob("python*/site-packages"))
    print(f"device install {_size_mb(site):.0f} MB, full install {_size_mb(full):.0f} MB")
    assert _size_mb(site) < 0.2 * _size_mb(full)

    key, root = trained_export["key"], trained_export["root"]
    rows = tmp_path / "rows.csv"
    train = client_data(DATA, 0).train
    rows.write_text("text,label\n" + "".join(f'"{t}",{LABELS[y]}\n' for t, y in zip(train.texts, train.labels)))
    fedpeft = env / "bin" / "fedpeft"
    with registry_trusting(tmp_path, key) as (address, ca):
        with RegistryClient(address, ca) as client:
            release = registry_operator.publish(client, key, root / "adapter", "stable")
        slot = ["--state", str(tmp_path / "device"), "--key", str(root / "operator.pub"), "--base-id", release.base_id]
        commands = [
            ["device", "pull", *slot, "--registry", address, "--ca-cert", str(ca)],
            ["device", "train", *slot, "--export", str(trained_export["export"]), "--data", str(rows),
             "--max-length", "32"],
            ["predict", str(trained_export["export"]), "the striker scored twice", *slot],
        ]
        outputs = []
        for command in commands:
            proc = subprocess.run([str(fedpeft), *command], capture_output=True, text=True, timeout=300, cwd=tmp_path)
            assert proc.returncode == 0, (command, proc.stderr[-3000:])
            outputs.append(proc.stdout)
    assert "installed v1" in outputs[0] and "personal adapter from v1" in outputs[1]
    assert outputs[2].split("\t")[0] in LABELS
    record = json.loads((tmp_path / "device" / "personal" / "personal.json").read_text())
    assert record["release_id"] == release.release_id and record["examples"] == len(train)

    # a device node: flwr (no simulation extra) beside the light install
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "flwr==1.41.*"], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    node = subprocess.run([str(python), "-c", "import sys, fedpeft.client.client_app, fedpeft.device.export_cache, "
                           "fedpeft.device.trainer; print(sorted(m for m in ('torch', 'transformers', 'peft', 'ray') "
                           "if m in sys.modules))"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert node.returncode == 0 and node.stdout.strip() == "[]", node.stderr[-3000:]
    for heavy in ("torch", "transformers", "peft", "ray"):
        assert subprocess.run([str(python), "-c", f"import {heavy}"], capture_output=True).returncode != 0, heavy
    assert (env / "bin" / "flower-supernode").is_file() and (env / "bin" / "flwr-clientapp").is_file()
    joined = subprocess.run([str(fedpeft), "device", "join", "--help"], capture_output=True, text=True, timeout=120)
    assert joined.returncode == 0 and "--superlink" in joined.stdout
