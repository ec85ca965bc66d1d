"""`fedpeft deploy local`: one SuperLink and N SuperNodes as processes on 127.0.0.1.

Everything a real deployment has, made for the occasion and kept in one work folder so a
restart finds it again: a private CA and the SuperLink's TLS certificate, per SuperNode
an authentication key (registered with the SuperLink) and an Ed25519 key that signs its
deltas (enrolled in the run's keyring), its data partition and its own base cache. The
SuperLink keeps its state in a database file, so SuperNodes and runs survive its restart.

Device nodes (`device_nodes`) start with `fedpeft device join` from a light environment
(`device_env`: a venv with fedpeft --no-deps, device/requirements.txt and flwr; no torch),
each with its partition's rows written to its own data file, as a phone holds its own.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from fedpeft.core.training.data import client_data, load_rows

from fedpeft.core.config import FederationConfig
from fedpeft.core.errors import FedPeftError
from fedpeft.core.trust.atomic import write_atomic
from fedpeft.core.trust.files import read_small
from fedpeft.core.trust.json_reader import parse_json
from fedpeft.core.trust.keys import Keyring, key_id, load_public_key, new_key_pair, public_key_path
from fedpeft.core.trust.tls import CA_CERT, write_tls_files

from .flower import (
    FlowerCli,
    FlowerProcess,
    SuperLinkSettings,
    flower_environment,
    free_port,
    kill_flower_tree,
)
from .node_auth import new_node_auth_key
from .submit import submit_and_wait
from .supernode import BIN, SuperNodeSettings

HOST = "127.0.0.1"
ACTIVATED = "SuperNode ID:"                           # flower-supernode's line once the SuperLink let it in
REFUSED_WHILE_ONLINE = "Failed to activate SuperNode"  # its exit reason while its earlier self still counts as online


@dataclass(frozen=True)
class NodeFiles:
    """One SuperNode's files: its keys, its registered node id and its base cache."""

    partition: int
    folder: Path
    device: bool = False  # a device node: `fedpeft device join`, ONNX Runtime, its own data file

    @property
    def data_file(self) -> Path:
        return self.folder / "rows.jsonl"

    @property
    def auth_key(self) -> Path:
        return self.folder / "auth.key"

    @property
    def signing_key(self) -> Path:
        return self.folder / "client.key"

    @property
    def node_id_file(self) -> Path:
        return self.folder / "node-id"


class LocalDeployment:
    """Start, kill -9 and restart the SuperLink and each SuperNode; `run_local` is the whole job."""

    def __init__(self, work: Path, nodes: int, device_nodes: int = 0, device_env: Path | None = None) -> None:
        if nodes + device_nodes < 2:
            raise FedPeftError(f"a federation needs at least 2 SuperNodes, got {nodes + device_nodes}")
        self.device_bin = Path(device_env).resolve() / "bin" if device_env else BIN
        missing = [n for n in ("fedpeft", "flower-supernode", "flwr-clientapp") if not (self.device_bin / n).is_file()]
        if device_nodes and missing:
            raise FedPeftError(f"{self.device_bin} holds no {', '.join(missing)}: --device-env must be a virtual "
                               f"environment with the device install and flwr (docs: deploy a device node)")
        self.work = Path(work).resolve()
        self.nodes = [NodeFiles(i, self.work / "nodes" / f"node-{i}", device=i >= nodes)
                      for i in range(nodes + device_nodes)]
        self.operator_public_key: Path | None = None
        self.data_names: dict[int, str] = {}
        self.tls = self.work / "tls"
        self.keyring = self.work / "keyring.json"
        self.port = free_port(HOST)  # kept for restarts, so SuperNodes find the SuperLink again
        self.node_ports = [free_port(HOST) for _ in self.nodes]
        self.superlink: FlowerProcess | None = None
        self.supernodes: dict[int, FlowerProcess] = {}
        self.cli = FlowerCli(self.work / "flwr-home", self.address, self.tls / CA_CERT)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def prepare(self, config: FederationConfig) -> FederationConfig:
        """Certificates and keys (made once, reused after a restart) and their enrollment."""
        self.stop_leftovers()
        if not (self.tls / CA_CERT).exists():
            write_tls_files(self.tls, [HOST])
        keyring = Keyring.load(self.keyring)
        for node in self.nodes:
            if not node.auth_key.exists():
                new_node_auth_key(node.auth_key)
            if not node.signing_key.exists():
                new_key_pair(node.signing_key)
            public = load_public_key(public_key_path(node.signing_key))
            if keyring.get(key_id(public)) is None:
                keyring.enroll(f"client-{node.partition}", public)
        keyring.save()
        config = config.with_overrides(**{"security.keyring": str(self.keyring), "data.clients": len(self.nodes)})
        self.operator_public_key = public_key_path(Path(config.security.operator_key)).resolve()
        spec = config.data_spec(load_rows(config.data_spec())[1])
        for node in self.nodes:
            if node.device:
                self.data_names[node.partition] = _write_rows(node.data_file, spec, node.partition)
        return config

    def start_superlink(self) -> None:
        settings = SuperLinkSettings(self.port, self.tls, self.work / "superlink.db", HOST)
        env = flower_environment(self.cli.home, {"FEDPEFT_CACHE": str(self.work / "server-cache")})
        self.superlink = FlowerProcess("superlink", settings.command(), self.work / "logs" / "superlink.log", env).start()
        self._record_pids()
        self.superlink.wait_for("Uvicorn running on", timeout=120)

    def register_nodes(self) -> None:
        """Register each SuperNode's authentication key once; the SuperLink's database keeps it."""
        for node in self.nodes:
            if not node.node_id_file.exists():
                node_id = self.cli.register(public_key_path(node.auth_key))
                write_atomic(node.node_id_file, f"{node_id}\n".encode())

    def node_id(self, partition: int) -> int:
        return int(self.nodes[partition].node_id_file.read_text())

    def _launch_supernode(self, partition: int) -> None:
        node = self.nodes[partition]
        log = self.work / "logs" / f"supernode-{partition}.log"
        if node.device:
            command = [str(self.device_bin / "fedpeft"), "device", "join", "--superlink", self.address,
                       "--ca-cert", str(self.tls / CA_CERT), "--auth-key", str(node.auth_key),
                       "--key", str(node.signing_key), "--operator-key", str(self.operator_public_key),
                       "--data", str(node.data_file), "--name", self.data_names[partition],
                       "--state", str(node.folder), "--seed-offset", str(partition),
                       "--port", str(self.node_ports[partition])]
            env = flower_environment(self.cli.home, bin_dir=self.device_bin)
        else:
            command = SuperNodeSettings(self.address, self.tls / CA_CERT, node.auth_key, self.node_ports[partition], {
                "partition-id": partition, "num-partitions": len(self.nodes),
                "key-file": str(node.signing_key), "cache-dir": str(node.folder / "cache"),
            }).command()
            env = flower_environment(self.cli.home)
        self.supernodes[partition] = FlowerProcess(f"supernode {partition}", command, log, env).start()
        self._record_pids()

    def start_supernodes(self, partitions: list[int], timeout: float = 240) -> None:
        """Start SuperNodes and wait until the SuperLink has let each in.

        The SuperLink counts a killed SuperNode as online until its heartbeats have been
        missing for about a minute, and refuses to activate the same key until then: a
        node refused that way is started again until it is let in.
        """
        for partition in partitions:
            self._launch_supernode(partition)
        waiting, deadline = set(partitions), time.monotonic() + timeout
        while waiting:
            for partition in sorted(waiting):
                process = self.supernodes[partition]
                if ACTIVATED in process.log_text():
                    waiting.discard(partition)
                elif not process.alive:
                    if REFUSED_WHILE_ONLINE not in process.log_text():
                        raise FedPeftError(f"supernode {partition} exited: {process.log_text()[-2000:]}")
                    self._launch_supernode(partition)
            if waiting and time.monotonic() > deadline:
                raise FedPeftError(f"SuperNodes {sorted(waiting)} not let in after {timeout:.0f} s; see {self.work / 'logs'}")
            time.sleep(2)

    def wait_online(self, partitions: list[int], timeout: float = 120) -> None:
        wanted = {self.node_id(p) for p in partitions}
        deadline = time.monotonic() + timeout
        while not wanted <= self.cli.online_nodes():
            for partition in partitions:
                if not self.supernodes[partition].alive:
                    raise FedPeftError(f"supernode {partition} exited: {self.supernodes[partition].log_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise FedPeftError(f"SuperNodes {partitions} not all online after {timeout:.0f} s")
            time.sleep(1)

    def start(self) -> None:
        """SuperLink, registration, then every SuperNode, until all are online."""
        self.start_superlink()
        self.register_nodes()
        self.start_supernodes([n.partition for n in self.nodes])

    def check_alive(self) -> None:
        if self.superlink is None or not self.superlink.alive:
            raise FedPeftError(f"the SuperLink exited; see {self.work / 'logs' / 'superlink.log'}")

    def stop(self) -> None:
        for process in [*self.supernodes.values(), self.superlink]:
            if process is not None:
                process.stop()
        self.pid_file.unlink(missing_ok=True)

    @property
    def pid_file(self) -> Path:
        return self.work / "processes.json"

    def _record_pids(self) -> None:
        processes = [*self.supernodes.values(), self.superlink]
        write_atomic(self.pid_file, json.dumps([p.process.pid for p in processes if p is not None]).encode())

    def stop_leftovers(self) -> None:
        """A deployment killed with kill -9 leaves its Flower processes running (each in its
        own session, holding ports and the database): stop them before starting again."""
        if not self.pid_file.exists():
            return
        pids = parse_json(read_small(self.pid_file), str(self.pid_file))
        for pid in pids if isinstance(pids, list) else []:
            if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 1:
                continue  # only process ids this class wrote are signalled
            if kill_flower_tree(pid):
                print(f"[fedpeft] stopped process {pid} (and its children) left by an earlier deployment", flush=True)
        self.pid_file.unlink()


def _write_rows(path: Path, spec, partition: int) -> str:
    """A device node's own rows: its partition's train/val/test rows with their split named,
    so it cuts them as a PyTorch node cuts the same partition; returns the partition's name."""
    data = client_data(spec, partition)
    lines = []
    for split, rows in (("train", data.train), ("val", data.val), ("test", data.test)):
        for text, label in zip(rows.texts, rows.labels, strict=True):
            row = {"text": text, "split": split, **({"label": spec.labels[label]} if spec.labels else {})}
            lines.append(json.dumps(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, ("\n".join(lines) + "\n").encode())
    return data.client


def run_local(config: FederationConfig, nodes: int, timeout: float, device_nodes: int = 0,
              device_env: Path | None = None) -> dict:
    """The whole job: start everything, run the federation (resuming a killed one), stop."""
    deployment = LocalDeployment(Path(config.run.out) / "deployment", nodes, device_nodes, device_env)
    config = deployment.prepare(config)
    try:
        deployment.start()
        devices = f" ({device_nodes} device nodes, no torch)" if device_nodes else ""
        print(f"[fedpeft] SuperLink {deployment.address} (TLS, SuperNode authentication), {nodes + device_nodes} "
              f"SuperNodes{devices} online; logs in {deployment.work / 'logs'}", flush=True)
        return submit_and_wait(deployment.cli, config, deployment.work, timeout, deployment.check_alive)
    finally:
        deployment.stop()
