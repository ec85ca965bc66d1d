"""`fedpeft registry serve`: the Registry service on a grpcio asyncio server, TLS on."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc

from fedpeft.core.errors import ConfigError
from fedpeft.core.trust.keys import Keyring
from fedpeft.core.trust.tls import read_pem
from fedpeft.protos import REGISTRY_MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES
from fedpeft.protos import registry_pb2_grpc

from .service import PUBLISH_DEADLINE_S, RegistryService
from .store import RegistryStore


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
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
    registry_pb2_grpc.add_RegistryServicer_to_server(RegistryService(store, operators, settings.publish_deadline), server)
    address = f"{settings.host}:{settings.port}"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise ConfigError(f"cannot listen on {address}")
    await server.start()
    # One line a supervisor (or a test) can wait for; the port matters when 0 was asked.
    print(f"[fedpeft] registry listening on {settings.host}:{port} ({'TLS' if credentials else 'INSECURE'}), "
          f"store {settings.store} (registry id {store.registry_id}), {len(store.releases())} release(s), "
          f"{len(operators.keys)} operator key(s)",
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=5)
    store.close()


def run(settings: ServeSettings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    asyncio.run(serve(settings))
