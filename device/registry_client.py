"""A small synchronous client of the Registry service (protos/registry.proto), used by
devices (pull), operators (publish, promote, list) and the benchmarks."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from fedpeft.core.errors import FedPeftError
from fedpeft.core.trust.files import open_append, regular_file_size
from fedpeft.core.trust.tls import read_pem
from fedpeft.protos import REGISTRY_CHUNK_BYTES as CHUNK_BYTES
from fedpeft.protos import REGISTRY_MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES
from fedpeft.protos import registry_pb2 as pb
from fedpeft.protos import registry_pb2_grpc


class RegistryError(FedPeftError):
    """The registry refused a call or could not be reached; `code` is the gRPC status."""

    def __init__(self, call: str, error: grpc.RpcError) -> None:
        self.code = error.code()
        super().__init__(f"registry {call}: {self.code.name}: {error.details()}")


@dataclass(frozen=True)
class Download:
    resumed_from: int   # bytes already on disk from an interrupted earlier attempt
    received: int       # bytes received in this call
    size: int           # bytes on disk now


class RegistryClient:
    def __init__(self, address: str, ca_cert: Path | None, timeout_s: float = 60.0) -> None:
        """`ca_cert` None: plaintext (only against `registry serve --insecure`)."""
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        if ca_cert is None:
            self.channel = grpc.insecure_channel(address, options)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates=read_pem(Path(ca_cert), "certificate"))
            self.channel = grpc.secure_channel(address, credentials, options)
        self.stub = registry_pb2_grpc.RegistryStub(self.channel)
        self.timeout_s = timeout_s

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, name: str, *args):
        try:
            return getattr(self.stub, name)(*args, timeout=self.timeout_s)
        except grpc.RpcError as error:
            raise RegistryError(name, error) from error

    def latest_reply(self, base_id: str, channel: str, installed_version: int) -> pb.LatestReply:
        """The registry's answer: the channel's current release unless it is not newer than
        `installed_version`, and whether the registry serves TUF metadata."""
        return self._call("GetLatest", pb.LatestRequest(base_id=base_id, channel=channel,
                                                        installed_version=installed_version))

    def latest(self, base_id: str, channel: str, installed_version: int) -> pb.SignedManifest | None:
        """The channel's current release, or None when it is not newer than `installed_version`."""
        reply = self.latest_reply(base_id, channel, installed_version)
        return None if reply.not_modified else reply.release

    def releases(self, base_id: str = "") -> list[pb.ReleaseEntry]:
        """Every release (of one base), page by page."""
        entries, token = [], ""
        while True:
            reply = self._call("List", pb.ListRequest(base_id=base_id, page_token=token))
            entries.extend(reply.releases)
            if not reply.next_page_token:
                return entries
            token = reply.next_page_token

    def identity(self) -> str:
        """The registry id a publish request must name."""
        return self._call("Identity", pb.IdentityRequest()).registry_id

    def promote(self, statement: bytes, signature: bytes, channel_role: pb.RoleMetadata | None = None) -> pb.PromoteReply:
        return self._call("Promote", pb.PromoteRequest(promotion=pb.SignedManifest(manifest=statement, signature=signature),
                                                       channel_role=channel_role))

    def metadata_reply(self, role: str, version: int = 0) -> pb.MetadataReply:
        """TUF metadata of `role` at `version` (0: the newest), with root v1's endorsement."""
        return self._call("GetMetadata", pb.MetadataRequest(role=role, version=version))

    def metadata(self, role: str, version: int = 0) -> bytes:
        return self.metadata_reply(role, version).metadata

    def has_tuf(self) -> bool:
        """Whether the registry keeps TUF metadata (it has a root)."""
        try:
            self.metadata("root")
        except RegistryError as error:
            if error.code == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    def put_metadata(self, batch: list[tuple[str, bytes]]) -> list[tuple[str, int]]:
        """Send operator-signed (role, metadata) to be applied together; [(role, version)] back."""
        reply = self._call("PutMetadata", pb.PutMetadataRequest(
            roles=[pb.RoleMetadata(role=role, metadata=body) for role, body in batch]))
        from tuf.api.metadata import Metadata  # the operator's side only: devices never upload

        versions = {role: Metadata.from_bytes(body).signed.version for role, body in batch}
        return [(role.role, versions.get(role.role, 0)) for role in reply.roles]

    def publish(self, request: tuple[bytes, bytes], release: tuple[bytes, bytes], blobs: dict[str, Path],
                progress: Callable[[int], None] | None = None,
                channel_role: pb.RoleMetadata | None = None) -> pb.PublishReply:
        """Send a signed publish request (statement, signature), the signed release it names
        (release.json, release.sig), on a TUF registry the channel role's next metadata, and
        the files (by SHA-256) the registry does not hold yet."""
        start = pb.PublishStart(request=pb.SignedManifest(manifest=request[0], signature=request[1]),
                                release=pb.SignedManifest(manifest=release[0], signature=release[1]),
                                channel_role=channel_role)

        def messages() -> Iterator[pb.PublishRequest]:
            yield pb.PublishRequest(start=start)
            sent = 0
            for sha256, path in blobs.items():
                with open(path, "rb") as handle:
                    offset = 0
                    while data := handle.read(CHUNK_BYTES):
                        yield pb.PublishRequest(chunk=pb.BlobChunk(sha256=sha256, offset=offset, data=data))
                        offset += len(data)
                        sent += len(data)
                        if progress:
                            progress(sent)
        return self._call("Publish", messages())

    def report(self, payload: bytes, signature: bytes) -> str:
        """Send a signed health report; the canary decision it settled ("" if none)."""
        return self._call("Report", pb.DeviceReport(report=payload, signature=signature)).decision

    def status(self) -> dict:
        """Channels, report aggregates and canary decisions (read with the guarded JSON reader)."""
        from fedpeft.core.trust.json_reader import parse_json_object

        return parse_json_object(self._call("Status", pb.StatusRequest()).status, "registry status")

    def blob(self, sha256: str) -> Iterator[bytes]:
        """A blob's bytes chunk by chunk, from its start (the caller bounds how much it reads)."""
        try:
            for chunk in self.stub.FetchBlob(pb.FetchRequest(sha256=sha256), timeout=self.timeout_s):
                yield chunk.data
        except grpc.RpcError as error:
            raise RegistryError("FetchBlob", error) from error

    def fetch_blob(self, sha256: str, size: int, part: Path,
                   progress: Callable[[int, int], None] | None = None) -> Download:
        """Append blob `sha256` to `part` until it holds `size` bytes, resuming from what
        `part` already holds. Stops at `size` bytes: a longer stream is cut, not stored;
        a shorter one leaves `part` short (the caller sees Download.size < size)."""
        start = regular_file_size(part, follow_links=False) if os.path.lexists(part) else 0
        if start > size:
            part.unlink()
            start = 0
        written = start
        if start == size:  # already complete (an earlier attempt, or a file the device holds)
            return Download(resumed_from=start, received=0, size=size)
        try:
            stream = self.stub.FetchBlob(pb.FetchRequest(sha256=sha256, offset=start), timeout=self.timeout_s)
            with open_append(part) as handle:  # never through a link planted under downloads/
                for chunk in stream:
                    if written >= size:
                        stream.cancel()
                        break
                    if chunk.offset != written or chunk.sha256 != sha256:
                        raise FedPeftError(f"registry sent blob {chunk.sha256[:12]} at {chunk.offset}, "
                                           f"expected {sha256[:12]} at {written}")
                    data = chunk.data[:size - written]
                    handle.write(data)
                    handle.flush()
                    written += len(data)
                    if progress:
                        progress(written, size)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                raise RegistryError("FetchBlob", error) from error
        return Download(resumed_from=start, received=written - start, size=written)
