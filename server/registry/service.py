"""The Registry gRPC service (protos/registry.proto) over a RegistryStore.

Publish and Promote accept only statements signed by an operator key of the registry's
operator list; the signature is checked over the received bytes before they are parsed.
Anyone who can reach the service may read: devices do not trust the registry, they
check every release and blob themselves (device/slot.py).

Releases are public and every run folder holds a signed one, so a signed release does not
allow publishing it: a publish stream opens with an operator-signed publish request for
this registry, that release and a channel (publish_request.py), used once. Only once that
first message has arrived (within a short wait, holding nothing) and checked out does the
stream take one of MAX_PUBLISHES slots (none free: refused at once), and from then it must
finish within the publish deadline. An anonymous caller holds no slot. List answers in pages.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncIterator

import grpc

from fedpeft.core.trust.keys import EnrolledKey, Keyring
from fedpeft.core.trust.release import Release, check_channel, check_promotion, check_release
from fedpeft.core.trust.signed_files import ManifestError, signer_of
from fedpeft.protos import REGISTRY_CHUNK_BYTES as CHUNK_BYTES
from fedpeft.protos import registry_pb2 as pb
from fedpeft.protos import registry_pb2_grpc

from .publish_request import PublishOrder, check_publish_request
from .store import BlobWriter, ChannelMove, RegistryStore, StoredRelease, StoreError
from .canary import STATUS_ROWS, AutomatedCanary
from .health import ReportBook
from .metrics import RegistryMetrics
from .tuf_repository import TufRepository

log = logging.getLogger("fedpeft.registry")
MAX_PUBLISHES = 4         # publish streams at once; each holds at most one writer per file its release lists
PUBLISH_DEADLINE_S = 300  # a publish stream that takes longer is cut and its files discarded
FIRST_MESSAGE_S = 10.0    # the most a stream may wait before its first message (or the deadline, if shorter)
LIST_PAGE = 100
STATUS = {  # StoreError / ManifestError reason -> gRPC status
    "malformed": grpc.StatusCode.INVALID_ARGUMENT, "expired": grpc.StatusCode.INVALID_ARGUMENT,
    "blob-mismatch": grpc.StatusCode.DATA_LOSS, "missing-blob": grpc.StatusCode.FAILED_PRECONDITION,
    "exists": grpc.StatusCode.ALREADY_EXISTS, "stale-version": grpc.StatusCode.FAILED_PRECONDITION,
    "stale-promotion": grpc.StatusCode.FAILED_PRECONDITION, "unknown-release": grpc.StatusCode.NOT_FOUND,
    "not-operator": grpc.StatusCode.PERMISSION_DENIED, "wrong-key": grpc.StatusCode.PERMISSION_DENIED,
    "bad-signature": grpc.StatusCode.PERMISSION_DENIED, "busy": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "too-slow": grpc.StatusCode.DEADLINE_EXCEEDED, "no-request": grpc.StatusCode.PERMISSION_DENIED,
    "wrong-registry": grpc.StatusCode.PERMISSION_DENIED, "wrong-release": grpc.StatusCode.PERMISSION_DENIED,
    "replayed-request": grpc.StatusCode.ALREADY_EXISTS, "not-yet-valid": grpc.StatusCode.FAILED_PRECONDITION,
    "bad-metadata": grpc.StatusCode.INVALID_ARGUMENT, "below-threshold": grpc.StatusCode.PERMISSION_DENIED,
    "unknown-role": grpc.StatusCode.PERMISSION_DENIED, "outside-channel": grpc.StatusCode.PERMISSION_DENIED,
    "online-key-mismatch": grpc.StatusCode.FAILED_PRECONDITION, "read-only": grpc.StatusCode.FAILED_PRECONDITION,
    "no-tuf": grpc.StatusCode.FAILED_PRECONDITION, "tuf-required": grpc.StatusCode.FAILED_PRECONDITION,
    "removes-channel": grpc.StatusCode.FAILED_PRECONDITION, "unknown-key": grpc.StatusCode.PERMISSION_DENIED,
    "too-often": grpc.StatusCode.RESOURCE_EXHAUSTED, "oversized": grpc.StatusCode.INVALID_ARGUMENT,
    "replayed": grpc.StatusCode.ALREADY_EXISTS, "no-reports": grpc.StatusCode.FAILED_PRECONDITION,
    "not-on-channel": grpc.StatusCode.FAILED_PRECONDITION,
}


def _timed(handler):
    """Record a unary (or client-streaming) handler's time in the request latency histogram."""
    @functools.wraps(handler)
    async def timed(self, request, context):
        with self.metrics.timed(handler.__name__):
            return await handler(self, request, context)
    return timed


def _signed(stored: StoredRelease) -> pb.SignedManifest:
    return pb.SignedManifest(manifest=stored.manifest, signature=stored.signature)


class RegistryService(registry_pb2_grpc.RegistryServicer):
    def __init__(self, store: RegistryStore, operators: Keyring, publish_deadline: float = PUBLISH_DEADLINE_S,
                 tuf: TufRepository | None = None, metrics: RegistryMetrics | None = None,
                 reports: ReportBook | None = None, canary: AutomatedCanary | None = None) -> None:
        self.store, self.operators, self.publish_deadline = store, operators, publish_deadline
        self.tuf = tuf or TufRepository(store, None)
        self.metrics = metrics or RegistryMetrics()
        self.reports, self.canary = reports, canary
        self.publishing = 0  # streams in Publish now (handlers share one event loop: a plain count)

    def _operator_key(self, signature: bytes, what: str) -> EnrolledKey:
        signer, _ = signer_of(signature, what)
        operator = self.operators.get(signer)
        if operator is None:
            raise StoreError("not-operator", f"{what} signed by key {signer[:12]}, which is not an operator key")
        return operator

    async def _refuse(self, context: grpc.aio.ServicerContext, call: str, error: StoreError | ManifestError) -> None:
        log.warning("registry: refused %s from %s: %s", call, context.peer(), error)
        self.metrics.refusals.labels(call, error.reason).inc()  # reasons are the code's own names: a bounded set
        await context.abort(STATUS.get(error.reason, grpc.StatusCode.INVALID_ARGUMENT), str(error))

    @_timed
    async def Publish(self, request_iterator: AsyncIterator[pb.PublishRequest], context) -> pb.PublishReply:
        messages = aiter(request_iterator)
        try:
            start = await self._first_message(messages)
            operator, order, release = self._authorize(start)
            channel_change = self._channel_change(start.channel_role, order.channel, release.base_id, release.release_id)
            if self.publishing >= MAX_PUBLISHES:
                raise StoreError("busy", f"{MAX_PUBLISHES} publishes are running; try again later")
            self.store.claim(order.request_id, order.valid_until)  # no await since the count: nobody slips in
        except (StoreError, ManifestError) as error:
            await self._refuse(context, "Publish", error)
        self.publishing += 1
        self.metrics.publish_streams.set(self.publishing)
        writers: dict[str, BlobWriter] = {}
        received = 0
        try:
            log.info("registry: publish slot taken (%d of %d) for v%d (%s) by %s", self.publishing, MAX_PUBLISHES,
                     release.version, release.release_id[:12], operator.name)
            async with asyncio.timeout(self.publish_deadline):
                sizes = {entry["sha256"]: entry["size"] for entry in release.files.values()}
                async for message in messages:
                    chunk = message.chunk
                    if not message.HasField("chunk") or chunk.sha256 not in sizes:
                        raise StoreError("malformed", f"chunk of a blob the release does not list: {chunk.sha256[:12]!r}")
                    if chunk.sha256 not in writers:
                        writers[chunk.sha256] = self.store.new_blob(chunk.sha256, sizes[chunk.sha256])
                    writers[chunk.sha256].write(chunk.offset, chunk.data)
                    received += len(chunk.data)
                for writer in writers.values():
                    writer.finish()
                self.store.add_release(release, start.release.manifest, start.release.signature,
                                       ChannelMove(order.channel, order.created, start.request.manifest,
                                                   start.request.signature), then=channel_change)
        except TimeoutError:
            await self._refuse(context, "Publish", StoreError("too-slow", f"the publish stream took more than "
                                                                          f"{self.publish_deadline:g} s"))
        except (StoreError, ManifestError) as error:
            await self._refuse(context, "Publish", error)
        finally:  # a refused, failed or cancelled (client gone) publish leaves no open file behind
            self.publishing -= 1
            self.metrics.publish_streams.set(self.publishing)
            for writer in writers.values():
                writer.discard()
        self.metrics.changes.labels("publish", order.channel).inc()
        self.metrics.channel_version.labels(release.base_id[:12], order.channel).set(release.version)
        log.info("registry: published v%d (%s) of base %s to %s by %s, %d bytes", release.version,
                 release.release_id[:12], release.base_id[:12], order.channel, operator.name, received)
        return pb.PublishReply(release_id=release.release_id, version=release.version, bytes_received=received)

    async def _first_message(self, messages: AsyncIterator[pb.PublishRequest]) -> pb.PublishStart:
        """The stream's first message, waited for briefly and before any slot is taken: a
        caller that opens streams and sends nothing holds nothing."""
        wait = min(FIRST_MESSAGE_S, self.publish_deadline)
        try:
            async with asyncio.timeout(wait):
                first = await anext(messages, None)
        except TimeoutError:
            raise StoreError("too-slow", f"no first message within {wait:g} s") from None
        if first is None or not first.HasField("start") or not first.start.request.manifest:
            raise StoreError("no-request", "a publish stream opens with an operator-signed publish request "
                                           "and the release it names")
        return first.start

    def _authorize(self, start: pb.PublishStart) -> tuple[EnrolledKey, PublishOrder, Release]:
        """(operator, order, release) if the request is an operator's, for this registry, unused
        and within its time, and names the signed release sent with it, which is new: all
        before a slot is taken or a file opened."""
        operator = self._operator_key(start.request.signature, "publish-request")
        order = check_publish_request(start.request.manifest, start.request.signature, operator.public_key,
                                      self.store.registry_id)
        signer = self._operator_key(start.release.signature, "release")
        release = check_release(start.release.manifest, start.release.signature, signer.public_key)
        if release.release_id != order.release_id:
            raise ManifestError("wrong-release", f"the publish request names release {order.release_id[:12]}, "
                                                 f"the stream sent {release.release_id[:12]}")
        self.store.check_unclaimed(order.request_id)
        self.store.check_new(release)  # a replayed or stale release opens no file
        return operator, order, release

    def _channel_change(self, role: pb.RoleMetadata, channel: str, base_id: str, release_id: str):
        """On a TUF registry, what stores the channel role's metadata that a publish or
        promotion must carry (checked now, and again inside the transaction); None elsewhere."""
        if not self.tuf.enabled:
            if role.metadata:
                raise StoreError("no-tuf", "this registry keeps no TUF metadata; send the change without it")
            return None
        if not role.metadata or role.role != channel:
            raise StoreError("tuf-required", f"this registry keeps TUF metadata: the change must carry {channel}'s "
                                             "next metadata, signed with that channel's key")
        batch, must_list = [(role.role, role.metadata)], (channel, base_id, release_id)
        self.tuf.check(batch, must_list)  # refused before any file is opened
        return self.tuf.stage(batch, must_list)

    @_timed
    async def List(self, request: pb.ListRequest, context) -> pb.ListReply:
        """One page of releases; `next_page_token` ("BASE_ID:VERSION" of the last one) asks for the next."""
        after = ("", 0)
        if request.page_token:
            base_id, _, version = request.page_token.rpartition(":")
            if not version.isdigit() or len(base_id) > 64:
                await self._refuse(context, "List", StoreError("malformed", "page_token is not BASE_ID:VERSION"))
            after = (base_id, int(version))
        page = self.store.releases(request.base_id, after=after, limit=LIST_PAGE + 1)
        more = len(page) > LIST_PAGE
        page = page[:LIST_PAGE]
        return pb.ListReply(releases=[pb.ReleaseEntry(release=_signed(r), channels=r.channels) for r in page],
                            next_page_token=f"{page[-1].base_id}:{page[-1].version}" if more else "")

    @_timed
    async def GetLatest(self, request: pb.LatestRequest, context) -> pb.LatestReply:
        try:
            current = self.store.current(request.base_id, check_channel(request.channel))
        except ManifestError as error:
            await self._refuse(context, "GetLatest", error)
        if current is None:
            self.metrics.pulls.labels("-", "not-found").inc()  # not the caller's channel name: labels stay bounded
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no release of base {request.base_id[:12]} in channel {request.channel!r}")
        if current.version <= request.installed_version:
            self.metrics.pulls.labels(request.channel, "not-modified").inc()
            return pb.LatestReply(not_modified=True, tuf=self.tuf.enabled)
        self.metrics.pulls.labels(request.channel, "release").inc()
        return pb.LatestReply(release=_signed(current), tuf=self.tuf.enabled)

    async def FetchBlob(self, request: pb.FetchRequest, context) -> AsyncIterator[pb.BlobChunk]:
        try:
            path = self.store.blob_path(request.sha256)
        except StoreError as error:
            await self._refuse(context, "FetchBlob", error)
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no blob {request.sha256[:12]}")
        with handle:
            handle.seek(0, 2)
            if request.offset > handle.tell():
                await context.abort(grpc.StatusCode.OUT_OF_RANGE,
                                    f"offset {request.offset} is past the end of blob {request.sha256[:12]}")
            offset = request.offset
            handle.seek(offset)
            while data := handle.read(CHUNK_BYTES):
                yield pb.BlobChunk(sha256=request.sha256, offset=offset, data=data)
                offset += len(data)

    @_timed
    async def Promote(self, request: pb.PromoteRequest, context) -> pb.PromoteReply:
        try:
            signed = request.promotion
            operator = self._operator_key(signed.signature, "promotion")
            statement = check_promotion(signed.manifest, signed.signature, operator.public_key)
            channel_change = self._channel_change(request.channel_role, statement["channel"], statement["base_id"],
                                                  statement["release_id"])
            stored = self.store.promote(statement, signed.manifest, signed.signature, then=channel_change)
        except (StoreError, ManifestError) as error:
            await self._refuse(context, "Promote", error)
        self.metrics.changes.labels("promote", statement["channel"]).inc()
        self.metrics.channel_version.labels(stored.base_id[:12], statement["channel"]).set(stored.version)
        log.info("registry: %s now serves v%d (%s) of base %s, promoted by %s", statement["channel"], stored.version,
                 stored.release_id[:12], stored.base_id[:12], operator.name)
        return pb.PromoteReply(release_id=stored.release_id, channel=statement["channel"], version=stored.version)

    async def Identity(self, request: pb.IdentityRequest, context) -> pb.IdentityReply:
        """The id publish requests must name (not a secret: it only keeps one registry's
        requests from being accepted by another)."""
        return pb.IdentityReply(registry_id=self.store.registry_id)


    @_timed
    async def GetMetadata(self, request: pb.MetadataRequest, context) -> pb.MetadataReply:
        """TUF metadata by role and version (0: the newest); NOT_FOUND when there is none
        (python-tuf's updater reads that as "no newer root")."""
        body = self.tuf.get(request.role[:64], request.version)
        if body is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no {request.role[:64]!r} metadata"
                                                           f"{f' v{request.version}' if request.version else ''}")
        self.metrics.metadata.labels(request.role if request.role in ("root", "targets", "snapshot", "timestamp")
                                     else "channel").inc()
        reply = pb.MetadataReply(metadata=body)
        endorsement = self.tuf.endorsement()
        if request.role == "root" and request.version == 1 and endorsement:
            reply.endorsement.CopyFrom(pb.SignedManifest(manifest=endorsement[0], signature=endorsement[1]))
        return reply

    @_timed
    async def PutMetadata(self, request: pb.PutMetadataRequest, context) -> pb.PutMetadataReply:
        """Operator-signed root, targets or channel metadata (a key rotation, a revocation, a
        channel's re-signing), applied together once they verify (server/registry/tuf_repository.py)."""
        try:
            if not self.tuf.enabled:
                raise StoreError("no-tuf", "this registry keeps no TUF metadata (serve it with --tuf)")
            accepted = self.tuf.apply([(role.role[:64], role.metadata) for role in request.roles])
        except StoreError as error:
            await self._refuse(context, "PutMetadata", error)
        for role, _ in accepted:
            self.metrics.changes.labels("metadata", role if role not in ("root", "targets") else "-").inc()
        log.info("registry: metadata %s from %s", ", ".join(f"{r} v{v}" for r, v in accepted), context.peer())
        return pb.PutMetadataReply(roles=[pb.RoleMetadata(role=role) for role, _ in accepted])

    @_timed
    async def Report(self, request: pb.DeviceReport, context) -> pb.ReportReply:
        """A device's signed health report (server/registry/health.py); it may settle a canary decision."""
        try:
            if self.reports is None:
                raise StoreError("no-reports", "this registry enrolls no devices (serve it with --devices)")
            report = self.reports.accept(request.report, request.signature)
        except (StoreError, ManifestError) as error:
            await self._refuse(context, "Report", error)
        try:  # the report is stored; a decision that cannot be made now is tried again on the next report
            decision = self.canary.after(report) if self.canary else None
        except (StoreError, ManifestError) as error:
            log.error("registry: canary decision for %s failed: %s", report.release_id[:12], error)
            self.metrics.refusals.labels("Canary", error.reason).inc()
            decision = None
        known = report.channel in self.tuf.channels() or report.channel in (self.canary.policies if self.canary else ())
        self.metrics.reports.labels(report.channel if known else "other").inc()  # labels stay bounded
        if report.drift is not None and report.drift > self.reports.drift_threshold:
            self.metrics.drifting.labels(report.channel if known else "other").inc()
        if decision is None:
            return pb.ReportReply()
        self.metrics.decisions.labels(decision.channel, decision.action).inc()
        if decision.moved is not None:
            stored = self.store.release(decision.moved[1])
            self.metrics.changes.labels("canary", decision.moved[0]).inc()
            self.metrics.channel_version.labels(stored.base_id[:12], decision.moved[0]).set(stored.version)
        return pb.ReportReply(decision=decision.action)

    @_timed
    async def Status(self, request: pb.StatusRequest, context) -> pb.StatusReply:
        """Each channel's releases per base, every reported release's aggregates and the canary
        decisions with their evidence (what `fedpeft registry status` prints)."""
        channels = {}
        for name in self.tuf.channels():
            role = self.tuf.current(name)
            channels[name] = {path.split("/")[1]: target.hashes.get("sha256", "") for path, target
                              in role.signed.targets.items() if path.endswith("/release.json")}
        reported = [row[0] for row in self.store.db.execute(  # the most recently reported releases, oldest first
            "SELECT release_id FROM reports GROUP BY release_id ORDER BY MAX(created) DESC LIMIT ?", (STATUS_ROWS,))][::-1]
        status = {"channels": channels, "health": [self.reports.health(r).as_dict() for r in reported] if self.reports else [],
                  "decisions": self.canary.decisions() if self.canary else []}
        return pb.StatusReply(status=json.dumps(status).encode())
