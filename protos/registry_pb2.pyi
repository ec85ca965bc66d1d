from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignedManifest(_message.Message):
    __slots__ = ("manifest", "signature")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    manifest: bytes
    signature: bytes
    def __init__(self, manifest: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class BlobChunk(_message.Message):
    __slots__ = ("sha256", "offset", "data")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    offset: int
    data: bytes
    def __init__(self, sha256: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class PublishStart(_message.Message):
    __slots__ = ("request", "release", "channel_role")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_ROLE_FIELD_NUMBER: _ClassVar[int]
    request: SignedManifest
    release: SignedManifest
    channel_role: RoleMetadata
    def __init__(self, request: _Optional[_Union[SignedManifest, _Mapping]] = ..., release: _Optional[_Union[SignedManifest, _Mapping]] = ..., channel_role: _Optional[_Union[RoleMetadata, _Mapping]] = ...) -> None: ...

class RoleMetadata(_message.Message):
    __slots__ = ("role", "metadata")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    role: str
    metadata: bytes
    def __init__(self, role: _Optional[str] = ..., metadata: _Optional[bytes] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("start", "chunk")
    START_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    start: PublishStart
    chunk: BlobChunk
    def __init__(self, start: _Optional[_Union[PublishStart, _Mapping]] = ..., chunk: _Optional[_Union[BlobChunk, _Mapping]] = ...) -> None: ...

class PublishReply(_message.Message):
    __slots__ = ("release_id", "version", "bytes_received")
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    release_id: str
    version: int
    bytes_received: int
    def __init__(self, release_id: _Optional[str] = ..., version: _Optional[int] = ..., bytes_received: _Optional[int] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("base_id", "page_token")
    BASE_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    base_id: str
    page_token: str
    def __init__(self, base_id: _Optional[str] = ..., page_token: _Optional[str] = ...) -> None: ...

class ReleaseEntry(_message.Message):
    __slots__ = ("release", "channels")
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    release: SignedManifest
    channels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, release: _Optional[_Union[SignedManifest, _Mapping]] = ..., channels: _Optional[_Iterable[str]] = ...) -> None: ...

class ListReply(_message.Message):
    __slots__ = ("releases", "next_page_token")
    RELEASES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    releases: _containers.RepeatedCompositeFieldContainer[ReleaseEntry]
    next_page_token: str
    def __init__(self, releases: _Optional[_Iterable[_Union[ReleaseEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class LatestRequest(_message.Message):
    __slots__ = ("base_id", "channel", "installed_version")
    BASE_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    INSTALLED_VERSION_FIELD_NUMBER: _ClassVar[int]
    base_id: str
    channel: str
    installed_version: int
    def __init__(self, base_id: _Optional[str] = ..., channel: _Optional[str] = ..., installed_version: _Optional[int] = ...) -> None: ...

class LatestReply(_message.Message):
    __slots__ = ("not_modified", "release", "tuf")
    NOT_MODIFIED_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    TUF_FIELD_NUMBER: _ClassVar[int]
    not_modified: bool
    release: SignedManifest
    tuf: bool
    def __init__(self, not_modified: _Optional[bool] = ..., release: _Optional[_Union[SignedManifest, _Mapping]] = ..., tuf: _Optional[bool] = ...) -> None: ...

class IdentityRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IdentityReply(_message.Message):
    __slots__ = ("registry_id",)
    REGISTRY_ID_FIELD_NUMBER: _ClassVar[int]
    registry_id: str
    def __init__(self, registry_id: _Optional[str] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("sha256", "offset")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    offset: int
    def __init__(self, sha256: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("promotion", "channel_role")
    PROMOTION_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_ROLE_FIELD_NUMBER: _ClassVar[int]
    promotion: SignedManifest
    channel_role: RoleMetadata
    def __init__(self, promotion: _Optional[_Union[SignedManifest, _Mapping]] = ..., channel_role: _Optional[_Union[RoleMetadata, _Mapping]] = ...) -> None: ...

class MetadataRequest(_message.Message):
    __slots__ = ("role", "version")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    role: str
    version: int
    def __init__(self, role: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class MetadataReply(_message.Message):
    __slots__ = ("metadata", "endorsement")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ENDORSEMENT_FIELD_NUMBER: _ClassVar[int]
    metadata: bytes
    endorsement: SignedManifest
    def __init__(self, metadata: _Optional[bytes] = ..., endorsement: _Optional[_Union[SignedManifest, _Mapping]] = ...) -> None: ...

class PutMetadataRequest(_message.Message):
    __slots__ = ("roles",)
    ROLES_FIELD_NUMBER: _ClassVar[int]
    roles: _containers.RepeatedCompositeFieldContainer[RoleMetadata]
    def __init__(self, roles: _Optional[_Iterable[_Union[RoleMetadata, _Mapping]]] = ...) -> None: ...

class PutMetadataReply(_message.Message):
    __slots__ = ("roles",)
    ROLES_FIELD_NUMBER: _ClassVar[int]
    roles: _containers.RepeatedCompositeFieldContainer[RoleMetadata]
    def __init__(self, roles: _Optional[_Iterable[_Union[RoleMetadata, _Mapping]]] = ...) -> None: ...

class PromoteReply(_message.Message):
    __slots__ = ("release_id", "channel", "version")
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    release_id: str
    channel: str
    version: int
    def __init__(self, release_id: _Optional[str] = ..., channel: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class DeviceReport(_message.Message):
    __slots__ = ("report", "signature")
    REPORT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    report: bytes
    signature: bytes
    def __init__(self, report: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ReportReply(_message.Message):
    __slots__ = ("decision",)
    DECISION_FIELD_NUMBER: _ClassVar[int]
    decision: str
    def __init__(self, decision: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: bytes
    def __init__(self, status: _Optional[bytes] = ...) -> None: ...
