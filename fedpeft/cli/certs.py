"""`fedpeft certs`: a private CA and a server certificate, the TLS of the registry and the SuperLink."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import CERTIFICATE_DAYS, command, host


def add_commands(commands) -> None:
    certs = command(commands, "certs", "write a private CA and a server certificate (TLS for registry, SuperLink)",
                    "fedpeft certs --out tls --host 127.0.0.1")
    certs.add_argument("--out", required=True, help="folder for ca.crt, server.pem, server.key")
    certs.add_argument("--host", action="append", required=True, type=host,
                       help="IP or DNS name of the server (repeatable)")
    certs.add_argument("--valid-days", type=CERTIFICATE_DAYS, default=365, help="certificate lifetime (default 365)")
    certs.set_defaults(run=_certs)


def _certs(args: argparse.Namespace) -> None:
    from fedpeft.core.trust.tls import write_tls_files

    paths = write_tls_files(Path(args.out), args.host, args.valid_days)
    print(f"CA {paths['ca.crt']}, server certificate {paths['server.pem']} for {', '.join(args.host)}, "
          f"key {paths['server.key']} (mode 600)")
