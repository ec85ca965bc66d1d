"""TLS certificates for a registry or a SuperLink on hosts of one's own: a private CA and
a server certificate it signs (names as Flower expects: ca.crt, server.pem, server.key).

For production, certificates from the organisation's CA go in the same three files.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedpeft.core.errors import ConfigError

from .atomic import write_new_private
from .files import UnreadableFile, read_small

CA_CERT, SERVER_CERT, SERVER_KEY = "ca.crt", "server.pem", "server.key"
TLS_FILE_BYTES = 1024 * 1024  # a PEM certificate or key



def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _subject_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def write_tls_files(folder: Path, hosts: list[str], valid_days: int = 365) -> dict[str, Path]:
    """Write ca.crt, server.pem and server.key (0600) valid for `hosts`; refuses to
    overwrite existing files."""
    folder = Path(folder)
    paths = {name: folder / name for name in (CA_CERT, SERVER_CERT, SERVER_KEY)}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing:
        raise ConfigError(f"{existing[0]} already exists; refusing to overwrite TLS files")
    if not hosts:
        raise ConfigError("name at least one host (IP address or DNS name) for the server certificate")
    now = datetime.now(UTC)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(_name("fedpeft CA")).issuer_name(_name("fedpeft CA"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=valid_days))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    server_cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
                   .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=valid_days))
                   .add_extension(x509.SubjectAlternativeName(_subject_names(hosts)), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    paths[CA_CERT].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[SERVER_CERT].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    write_new_private(paths[SERVER_KEY], server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


def read_pem(path: Path, kind: str) -> bytes:
    """The bytes of a PEM certificate (`kind` "certificate") or private key ("key"), checked to
    parse before gRPC gets them: gRPC reports a bad file only as a failed bind or handshake."""
    try:
        data = read_small(Path(path), TLS_FILE_BYTES)
        if kind == "certificate":
            x509.load_pem_x509_certificates(data)
        else:
            serialization.load_pem_private_key(data, password=None)
    except (UnreadableFile, ValueError, TypeError) as exc:
        raise ConfigError(f"TLS {kind} {path}: {exc if isinstance(exc, UnreadableFile) else 'not a PEM ' + kind}") from exc
    return data
