"""What every command's module shares: the one-line-error parser, the subcommand builders,
the checked values (ranges, hosts, addresses) and the registry, operator-key and device-slot
options, so that each is defined once and refused the same way everywhere."""

from __future__ import annotations

import argparse
import ipaddress
import re
from pathlib import Path
from typing import NoReturn

from fedpeft.core.config import DAY_S, Range
from fedpeft.core.errors import ConfigError
from fedpeft.core.trust.keys import OPERATOR_PASSPHRASE_ENV as OPERATOR_ENV
from fedpeft.core.trust.release import CHANNEL_PATTERN

# The command-line values that are no config key; the others use core/config.py's RANGES.
# Each is an argparse `type=`, so a bad value is refused with one line and exit code 2
# before any import, key or file (tests/test_cli_values.py drives every one).
NODES = Range(int, 2, 256, reason="a federation needs at least 2 SuperNodes")
RUN_TIMEOUT = Range(float, 0, 30 * DAY_S, low_open=True)
SHARE = Range(float, 0, 1)
CERTIFICATE_DAYS = Range(int, 1, 36_500)
PORT = Range(int, 0, 65_535)
PUBLISH_DEADLINE = Range(float, 0, DAY_S, low_open=True)
TIMESTAMP_VALID = Range(float, 2, DAY_S, reason="a timestamp must outlive its re-signing schedule")
VERSION = Range(int, 1, 2**63 - 1, reason="SQLite's integer range")
ROOT_KEYS = Range(int, 1, 16)
THREADS = Range(int, 0, 1024)
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def host(text: str) -> str:
    """--host: an IP address or a DNS name (RFC 1123), refused in one line here rather
    than as a gRPC or x509 traceback later; 256.1.1.1 is neither (a name's last label is
    never all digits)."""
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    labels = text.split(".")
    if len(text) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit():
        return text
    shown = text if len(text) <= 40 else text[:37] + "..."
    raise argparse.ArgumentTypeError(f"must be an IP address or a DNS name, got {shown!r}")


def channel(text: str) -> str:
    """--channel: a name the registry and devices accept (core/trust/release.py's pattern),
    refused here before anything is staged, signed or sent."""
    if CHANNEL_PATTERN.fullmatch(text):
        return text
    shown = text if len(text) <= 40 else text[:37] + "..."
    raise argparse.ArgumentTypeError(f"must be lowercase letters, digits and '-' (a letter first, up to 32), "
                                     f"got {shown!r}")


def address(text: str) -> str:
    """HOST:PORT with host's rules, an IPv6 host in brackets, and a port in 1..65535."""
    name, colon, port = text.rpartition(":")
    bracketed = name.startswith("[") and name.endswith("]")
    name = name[1:-1] if bracketed else name
    try:
        if not colon or bracketed != (":" in name):  # brackets around an IPv6 address, and only there
            raise ValueError
        host(name)
        Range(int, 1, 65_535)(port)
    except (ValueError, argparse.ArgumentTypeError):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise argparse.ArgumentTypeError(f"must be HOST:PORT (an IP address or DNS name, a port in 1..65535), "
                                         f"got {shown!r}") from None
    return text


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is refused in one line (no usage block): the line
    names the option and what it allows, and --help has the rest."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def command(group, name: str, text: str, example: str) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with an example."""
    return group.add_parser(name, help=text, description=text, epilog=f"example:\n  {example}",
                            formatter_class=argparse.RawDescriptionHelpFormatter)


def group(commands, name: str, text: str, dest: str):
    """A command of subcommands (`fedpeft keys new`), one of which must be given."""
    return commands.add_parser(name, help=text, description=text).add_subparsers(dest=dest, required=True)


def registry_arguments(sub: argparse.ArgumentParser) -> None:
    """Where the registry is and how to reach it: the options of every command that talks to it."""
    sub.add_argument("--registry", type=address, default="127.0.0.1:50061",
                     help="HOST:PORT of `fedpeft registry serve`")
    sub.add_argument("--ca-cert", help="CA certificate that signed the registry's TLS certificate")
    sub.add_argument("--insecure", action="store_true", help="plaintext (a registry started with --insecure)")


def registry_client(args: argparse.Namespace):
    """A client of the registry that `registry_arguments` named (TLS unless --insecure)."""
    from fedpeft.device.registry_client import RegistryClient

    if not args.ca_cert and not args.insecure:
        raise ConfigError("give the registry's CA certificate (--ca-cert) or --insecure for a plaintext registry")
    return RegistryClient(args.registry, None if args.insecure else Path(args.ca_cert))


def operator_arguments(sub: argparse.ArgumentParser) -> None:
    """The registry's options and the operator key that signs what a command changes there."""
    registry_arguments(sub)
    sub.add_argument("--operator-key", required=True, help=f"operator private key (passphrase in ${OPERATOR_ENV})")


def private_keys(paths: list[str]) -> list:
    """Private key files given as options (`--channel-key`, `--add`...), loaded."""
    from fedpeft.core.trust.keys import load_private_key

    return [load_private_key(Path(path)) for path in paths]


def slot_arguments(sub: argparse.ArgumentParser) -> None:
    """The device slot a command works on and what the device trusts."""
    sub.add_argument("--state", required=True, help="the device's adapter folder (state.json, releases/)")
    sub.add_argument("--key", required=True, help="the operator public key the device trusts")
    sub.add_argument("--base-id", required=True, help="the base this device runs")


def device_slot(args: argparse.Namespace):
    """The device slot in --state, trusting --key for --base-id on --channel."""
    from fedpeft.core.trust.keys import load_public_key
    from fedpeft.device.slot import Device

    return Device(Path(args.state), load_public_key(Path(args.key)), args.base_id, args.channel)
