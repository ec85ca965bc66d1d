"""`fedpeft registry serve` as a child process on 127.0.0.1 (tests, benchmarks, demos):
started, killed with SIGKILL and restarted over the same store and port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path


class RegistryProcess:
    """Start, kill -9 and restart a registry over the same store; `address` is HOST:PORT."""

    def __init__(self, root: Path, operators: Path, tls: Path, extra: tuple[str, ...] = ()) -> None:
        self.root, self.operators, self.tls, self.extra = Path(root), Path(operators), Path(tls), extra
        self.process: subprocess.Popen | None = None
        self.port = 0  # the first start picks a free port; restarts reuse it
        self.log: list[str] = []
        self.banner = ""  # the "listening on" line of the latest start
        self.metrics_url = ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RegistryProcess:
        command = [sys.executable, "-m", "fedpeft.cli", "registry", "serve", "--store", str(self.root / "store"),
                   "--operators", str(self.operators), "--port", str(self.port),
                   "--tls-cert", str(self.tls / "server.pem"), "--tls-key", str(self.tls / "server.key"), *self.extra]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        before = []  # what the registry logged before its banner (taking in TUF metadata, say)
        while "listening on" not in (first := self.process.stdout.readline()):
            if not first:
                raise RuntimeError(f"registry did not start: {''.join(before)}")
            before.append(first)
        self.log.extend(before)
        self.banner = first
        self.port = int(first.split("listening on ")[1].split(" ")[0].rsplit(":", 1)[1])
        if "/metrics" in first:  # `--metrics-port`: where Prometheus scrapes it
            self.metrics_url = first.split("metrics ")[-1].strip()
        threading.Thread(target=self._drain, args=(self.process,), daemon=True).start()
        return self

    def _drain(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.log.append(line)

    def kill9(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


def operator_material(folder: Path):
    """In `folder`: an operator key (operator.key/.pub), the registry's operator list naming it
    (operators.json) and TLS files for 127.0.0.1 (tls/): what a registry process for a
    benchmark or demo needs. Returns the operator's private key."""
    from fedpeft.core.trust.keys import Keyring, load_private_key, load_public_key, new_key_pair
    from fedpeft.core.trust.tls import write_tls_files

    folder = Path(folder)
    new_key_pair(folder / "operator.key")
    operators = Keyring(folder / "operators.json")
    operators.enroll("ops", load_public_key(folder / "operator.pub"))
    operators.save()
    write_tls_files(folder / "tls", ["127.0.0.1"])
    return load_private_key(folder / "operator.key")

