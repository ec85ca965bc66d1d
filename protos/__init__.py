"""Protobuf wire formats: signed deltas (delta.proto) and the adapter registry service
(registry.proto)."""

REGISTRY_CHUNK_BYTES = 256 * 1024  # blobs travel in chunks of this size
REGISTRY_MAX_MESSAGE_BYTES = 4 * REGISTRY_CHUNK_BYTES  # a chunk plus its envelope; below gRPC's 4 MiB default
