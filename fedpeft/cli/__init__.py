"""fedpeft: federated adapters over a quantized frozen base, signed deltas, signed releases, ONNX export."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version

from fedpeft.core.errors import FedPeftError

from . import artifacts, certs, deploy, device, keys, registry, simulate
from .common import Parser

# Each module adds its commands, in the order `fedpeft --help` lists them.
COMMANDS = (simulate, deploy, keys, artifacts, certs, registry, device)
# Commands whose failure is a verdict on what they checked (exit 1); any other fails as a usage error (2).
VERDICT_COMMANDS = ("verify", "predict", "device")


def build_parser() -> argparse.ArgumentParser:
    """Every command's parser, from the modules that own them (the docs and tests walk it too)."""
    parser = Parser(prog="fedpeft", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fedpeft {version('fedpeft')}")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a fedpeft or file error is one `fedpeft: error:` line and an exit code, not a traceback."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (FedPeftError, OSError) as exc:  # OSError: a path that is missing, unreadable or unwritable
        print(f"fedpeft: error: {exc}", file=sys.stderr)
        return 1 if args.command in VERDICT_COMMANDS else 2
    return 0
