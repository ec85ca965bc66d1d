"""The `flower-supernode` command line of one node: a PyTorch node or a device node.

Kept apart from deploy/flower.py (which needs psutil and tomli_w to manage processes) so
that `fedpeft device join` runs from the light device install.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode, flwr: installed beside this Python


@dataclass(frozen=True)
class SuperNodeSettings:
    superlink: str          # HOST:PORT
    ca: Path                # the CA certificate that signed the SuperLink's
    auth_key: Path          # node_auth.new_node_auth_key, registered with the SuperLink
    port: int               # this SuperNode's own (local) API for its ClientApp processes
    node_config: dict[str, str | int] = field(default_factory=dict)  # partition-id, key-file, cache-dir, kind, ...
    bin_dir: Path = BIN     # where flower-supernode is installed (a device node: its light environment)

    def command(self) -> list[str]:
        config = " ".join(f"{k}={json.dumps(v)}" for k, v in self.node_config.items())
        return [str(self.bin_dir / "flower-supernode"), "--superlink", self.superlink, "--root-certificates",
                str(self.ca), "--auth-supernode-private-key", str(self.auth_key), "--node-config", config,
                "--port", str(self.port)]
