"""`fedpeft registry serve`: the Registry service on a grpcio asyncio server, TLS on."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc

from fedpeft.core.errors import ConfigError
from fedpeft.core.trust.keys import Keyring, load_private_key
from fedpeft.core.trust.tls import read_pem
from fedpeft.core.trust.tuf_roles import TIMESTAMP_EXPIRY
from fedpeft.protos import REGISTRY_MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES
from fedpeft.protos import registry_pb2_grpc

from .canary import AutomatedCanary, load_policies
from .health import DRIFT_THRESHOLD, ReportBook
from .metrics import RegistryMetrics
from .service import PUBLISH_DEADLINE_S, RegistryService, log
from .store import RegistryStore, StoreError
from .tuf_repository import OnlineKeys, TufRepository


@dataclass(frozen=True)
class ServeSettings:
    store: Path
    operators: Path             # Keyring JSON of operator public keys (`fedpeft keys enroll`)
    host: str = "127.0.0.1"
    port: int = 50061           # 0: any free port (printed)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = False      # plaintext, for a laptop only; must be asked for
    publish_deadline: float = PUBLISH_DEADLINE_S  # seconds a publish stream may take
    tuf: Path | None = None     # `fedpeft keys tuf-init`'s registry/ folder: online keys + the first metadata
    timestamp_valid: float = TIMESTAMP_EXPIRY.total_seconds()  # seconds a TUF timestamp is valid (re-signed at half)
    metrics_port: int | None = None  # serve Prometheus /metrics there (0: any free port; TLS as the registry)
    devices: Path | None = None      # keyring of enrolled device keys: health reports are taken from these only
    canary_policy: Path | None = None  # TOML promotion policy per channel (server/registry/canary.py)
    automation_key: Path | None = None  # the key the channel roles name for automated decisions
    drift_threshold: float = DRIFT_THRESHOLD  # a release whose median reported drift is above this is flagged


def _credentials(settings: ServeSettings) -> grpc.ServerCredentials | None:
    if settings.insecure:
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise ConfigError("the registry serves over TLS: give --tls-cert and --tls-key "
                          "(`fedpeft certs` writes a pair), or --insecure on a trusted laptop")
    return grpc.ssl_server_credentials([(read_pem(Path(settings.tls_key), "key"),
                                         read_pem(Path(settings.tls_cert), "certificate"))])


async def serve(settings: ServeSettings) -> None:
    operators = Keyring.load(settings.operators)
    if not operators.keys:
        raise ConfigError(f"{settings.operators} lists no operator key; enroll one with `fedpeft keys enroll`")
    credentials = _credentials(settings)
    store = RegistryStore(settings.store)
    tuf = _tuf_repository(settings, store)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
    metrics = RegistryMetrics()
    reports = (ReportBook(store, Keyring.load(settings.devices), tuf, drift_threshold=settings.drift_threshold)
               if settings.devices else None)
    canary = _canary(settings, store, tuf, reports)
    registry_pb2_grpc.add_RegistryServicer_to_server(
        RegistryService(store, operators, settings.publish_deadline, tuf, metrics, reports, canary), server)
    address = f"{settings.host}:{settings.port}"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise ConfigError(f"cannot listen on {address}")
    await server.start()
    scrape = ""
    if settings.metrics_port is not None:
        tls = (None, None) if settings.insecure else (settings.tls_cert, settings.tls_key)
        metrics_port = metrics.serve(settings.host.strip("[]"), settings.metrics_port, *tls)
        scrape = f", metrics {'http' if settings.insecure else 'https'}://{settings.host}:{metrics_port}/metrics"
    # One line a supervisor (or a test) can wait for; the port matters when 0 was asked.
    print(f"[fedpeft] registry listening on {settings.host}:{port} ({'TLS' if credentials else 'INSECURE'}), "
          f"store {settings.store} (registry id {store.registry_id}), {len(store.releases())} release(s), "
          f"{len(operators.keys)} operator key(s), TUF {_tuf_mode(tuf)}{scrape}",
          flush=True)
    refresher = asyncio.create_task(_keep_fresh(tuf)) if tuf.online else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if refresher:
        refresher.cancel()
    await server.stop(grace=5)
    store.close()


def _tuf_repository(settings: ServeSettings, store: RegistryStore) -> TufRepository:
    """With --tuf: the online keys, and the first metadata taken in if the store has none.
    Without: a store's TUF metadata is served as it is (a mirror that re-signs nothing)."""
    if settings.tuf is None:
        return TufRepository(store, None)
    folder = Path(settings.tuf)
    if not (folder / "timestamp.key").is_file() or not (folder / "metadata").is_dir():
        raise ConfigError(f"--tuf {folder}: give the registry/ folder `fedpeft keys tuf-init` wrote "
                          "(snapshot.key, timestamp.key, metadata/)")
    tuf = TufRepository(store, OnlineKeys.load(folder), timedelta(seconds=settings.timestamp_valid))
    try:
        tuf.initialize(folder / "metadata")  # the banner's first line says it is on; nothing is logged before it
        tuf.start()
    except (OSError, StoreError) as exc:
        raise ConfigError(f"--tuf {folder}: cannot take in its metadata: {exc}") from exc
    return tuf


def _canary(settings: ServeSettings, store: RegistryStore, tuf: TufRepository,
            reports: ReportBook | None) -> AutomatedCanary | None:
    if settings.canary_policy is None:
        return None
    if reports is None or settings.tuf is None:
        raise ConfigError("--canary-policy needs --devices (whose reports it judges) and --tuf (the channels it moves)")
    key = load_private_key(settings.automation_key) if settings.automation_key else None
    policies = load_policies(settings.canary_policy)
    unknown = sorted({name for p in policies.values() for name in (p.channel, p.promote_to)} - set(tuf.channels()))
    if unknown:
        raise ConfigError(f"--canary-policy names {unknown}, which targets does not delegate "
                          f"(channels: {', '.join(tuf.channels())})")
    return AutomatedCanary(store, tuf, reports, policies, key)


def _tuf_mode(tuf: TufRepository) -> str:
    if not tuf.enabled:
        return "off"
    return f"on, channels {','.join(tuf.channels())}" + ("" if tuf.online else " (mirror: no online keys)")


async def _keep_fresh(tuf: TufRepository) -> None:
    """Re-sign timestamp (and snapshot) before they expire, checking four times per timestamp validity."""
    while True:
        await asyncio.sleep(max(0.5, tuf.timestamp_valid.total_seconds() / 4))
        try:
            if tuf.refresh():
                log.info("registry: TUF timestamp re-signed")
        except Exception:  # a failed re-sign must not stop the schedule; devices refuse a stale timestamp anyway
            log.exception("registry: TUF timestamp could not be re-signed")


def run(settings: ServeSettings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    asyncio.run(serve(settings))
