"""Flower's own programs as child processes: `flower-superlink`, `flower-supernode`, and
the `flwr` CLI (register SuperNodes, submit a run, read its status).

fedpeft does not reimplement any of them; it only builds their command lines. Runtime
dependency installation (`uv sync` per run) is switched off: the ServerApp and ClientApp
are the installed fedpeft package's, and the machines may have no package index.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import tomli_w

from fedpeft.core.errors import FedPeftError
from fedpeft.core.trust.json_reader import JSONRefused, parse_json_object
from fedpeft.core.trust.tls import CA_CERT, SERVER_CERT, SERVER_KEY

from .supernode import BIN



def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def flower_environment(flwr_home: Path, extra: dict[str, str] | None = None, bin_dir: Path = BIN) -> dict[str, str]:
    """Environment of Flower's processes: its SuperExec finds flwr-serverapp/flwr-clientapp on
    PATH (`bin_dir`'s: a device node's are its light environment's)."""
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_HOME": str(flwr_home),
            "PYTHONUNBUFFERED": "1", **(extra or {})}


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants. Flower's SuperExec runs in a session of its own
    (and so do the ServerApp / ClientApp processes it starts): a process-group kill would
    leave them running, so fedpeft walks the tree."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_processes(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def kill_tree(pid: int) -> None:
    kill_processes(process_tree(pid))


def kill_flower_tree(pid: int) -> bool:
    """kill_tree(pid) if pid is still a Flower program (not a reused pid)."""
    try:
        command = " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    if "flower-" not in command:
        return False
    kill_tree(pid)
    return True


class FlowerProcess:
    """One Flower program and the processes it starts (its SuperExec, ServerApp, ClientApps)."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.name, self.argv, self.log, self.env = name, argv, Path(log), env
        self.process: subprocess.Popen | None = None
        self.log_start = 0  # a restart appends to the log: this start's lines begin here

    def start(self) -> FlowerProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.log_start = out.tell()
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        """What this start of the process has logged."""
        if not self.log.exists():
            return ""
        with self.log.open("rb") as handle:
            handle.seek(self.log_start)
            return handle.read().decode(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            if not self.alive:
                raise FedPeftError(f"{self.name} exited ({self.process.returncode}): {self.log_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise FedPeftError(f"{self.name}: no {text!r} within {timeout:.0f} s; see {self.log}")
            time.sleep(0.2)

    def kill9(self) -> None:
        kill_tree(self.process.pid)
        self.process.wait()

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM, then SIGKILL for the program and whatever it started that is still running."""
        if not self.alive:
            return
        tree = process_tree(self.process.pid)  # taken first: once it exits, its children are reparented
        self.process.terminate()
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        kill_processes(tree)
        self.process.wait()


@dataclass(frozen=True)
class SuperLinkSettings:
    port: int
    tls: Path               # folder with ca.crt, server.pem, server.key (fedpeft certs)
    database: Path          # SuperLink state (nodes, runs) that survives a restart
    host: str = "127.0.0.1"  # 0.0.0.0 to accept SuperNodes from other machines

    def command(self) -> list[str]:
        return [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(self.tls / CA_CERT),
                "--ssl-certfile", str(self.tls / SERVER_CERT), "--ssl-keyfile", str(self.tls / SERVER_KEY),
                "--enable-supernode-auth", "--database", str(self.database),
                "--disable-runtime-dependency-installation", "--host", self.host, "--port", str(self.port)]


class FlowerCli:
    """The `flwr` command line against one SuperLink, configured in a FLWR_HOME of its own."""

    CONNECTION = "fedpeft"

    def __init__(self, home: Path, superlink: str, ca: Path) -> None:
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        connection = {"address": superlink, "root-certificates": str(Path(ca).resolve())}
        (self.home / "config.toml").write_text(tomli_w.dumps(
            {"superlink": {"default": self.CONNECTION, self.CONNECTION: connection}}))

    def _flwr(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "flwr"), *args], capture_output=True, text=True,
                              env=flower_environment(self.home), timeout=120)

    def _json(self, *args: str) -> dict:
        proc = self._flwr(*args, "--format", "json")
        start = proc.stdout.find("{")
        try:
            reply = parse_json_object(proc.stdout[start:], "flwr's answer") if start >= 0 else {}
        except JSONRefused:
            reply = {}
        if proc.returncode != 0 or not reply.get("success"):
            detail = reply.get("error-message") or (proc.stdout + proc.stderr).strip()[-1500:]
            raise FedPeftError(f"`flwr {' '.join(args[:2])}` failed: {detail}")
        return reply

    def register(self, public_key: Path) -> int:
        return int(self._json("supernode", "register", str(public_key), self.CONNECTION)["node-id"])

    def online_nodes(self) -> set[int]:
        nodes = self._json("supernode", "list", self.CONNECTION)["nodes"]
        return {int(n["node-id"]) for n in nodes if n["status"] == "online"}

    def submit(self, app: Path, run_config: dict[str, str | bool]) -> int:
        overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        return int(self._json("run", str(app), self.CONNECTION, "--run-config", overrides)["run-id"])

    def run_status(self, run_id: int) -> str:
        """pending, starting, running, finished:completed, finished:failed, ..."""
        return str(self._json("list", self.CONNECTION, "--run-id", str(run_id))["runs"][0]["status"])

    def run_log(self, run_id: int) -> str:
        """What the run's ServerApp has logged so far (`flwr log --show`)."""
        return self._flwr("log", str(run_id), self.CONNECTION, "--show").stdout
