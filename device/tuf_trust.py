"""A device's view of a TUF registry: python-tuf's `Updater` over the registry's gRPC service.

The transport is the registry's own gRPC service (a fetcher, below), not HTTPS: the device
already holds that channel (TLS, its CA, resumable blob downloads), the registry needs no
second server, and TUF does not trust the transport anyway. python-tuf makes every check of
the metadata (threshold signatures, versions, expiry, hashes, delegations); this module
only carries bytes and gives each of its errors the name of the attack it stopped:

- unsigned-metadata: not signed by a threshold of the keys its delegator names (a revoked
  key, one root key of two, a channel signed with another channel's key);
- expired-metadata: a frozen registry (its timestamp not re-signed in time);
- rollback: a timestamp, snapshot or root older than one the device has seen;
- mix-and-match: metadata that is not the version or bytes snapshot or timestamp names;
- file-mismatch: a target file whose bytes are not the ones its role lists;
- oversized / unreachable: a download longer than allowed, or no answer.

Imports no torch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import grpc
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface

from fedpeft.core.trust.files import UnreadableFile, plain_folder, read_small, regular_file_size
from fedpeft.core.trust.signed_files import ManifestError
from fedpeft.core.trust.tuf_roles import RELEASE_FILES, check_endorsement, operator_keys, release_path

from .registry_client import RegistryClient, RegistryError

METADATA_URL = "fedpeft-registry:/metadata/"
TARGETS_URL = "fedpeft-registry:/targets/"
ROOT_HISTORY = "root_history"
ROOT_LINK = re.compile(r"root_history/[1-9][0-9]{0,9}\.root\.json")
MAX_CACHED_BYTES = 5_000_000  # python-tuf's own largest limit (targets metadata)


class RegistryFetcher(FetcherInterface):
    """TUF downloads as registry calls: `N.role.json` / `timestamp.json` -> GetMetadata,
    `<dir>/<sha256>.<name>` -> FetchBlob. The updater bounds every download's length."""

    def __init__(self, client: RegistryClient) -> None:
        self.client = client

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            if url.startswith(METADATA_URL):
                name = unquote(url[len(METADATA_URL):]).removesuffix(".json")
                version, _, role = name.partition(".")
                if not role:
                    version, role = "0", name
                if not version.isdigit():
                    raise tuf_errors.DownloadHTTPError(f"not a metadata name: {name[:80]!r}", 404)
                return iter([self.client.metadata(role, int(version))])
            if url.startswith(TARGETS_URL):
                return self._chunks(url.rsplit("/", 1)[-1].split(".", 1)[0])
        except RegistryError as error:
            raise _download_error(error) from error
        raise tuf_errors.DownloadHTTPError(f"not a registry URL: {url[:80]!r}", 404)

    def _chunks(self, sha256: str) -> Iterator[bytes]:
        try:
            yield from self.client.blob(sha256)
        except RegistryError as error:
            raise _download_error(error) from error


def _download_error(error: RegistryError) -> tuf_errors.DownloadError:
    """NOT_FOUND is a 404 to the updater (for root: "no newer version")."""
    if error.code == grpc.StatusCode.NOT_FOUND:
        return tuf_errors.DownloadHTTPError(str(error), 404)
    return tuf_errors.DownloadError(str(error))


def refusal(error: Exception, downloading_target: bool = False) -> ManifestError:
    """python-tuf's error as a named refusal."""
    text = str(error)[:300]
    if isinstance(error, tuf_errors.UnsignedMetadataError):
        return ManifestError("unsigned-metadata", f"not signed by a threshold of the keys trusted for it: {text}")
    if isinstance(error, tuf_errors.ExpiredMetadataError):
        return ManifestError("expired-metadata", f"{text} (a registry that stopped re-signing: freeze)")
    if isinstance(error, tuf_errors.BadVersionNumberError):
        if "must be >=" in text or "root version" in text or ".json version" in text:  # a role older than seen
            return ManifestError("rollback", f"older metadata than this device has seen: {text}")
        return ManifestError("mix-and-match", f"metadata of another version than snapshot names: {text}")
    if isinstance(error, tuf_errors.LengthOrHashMismatchError):
        if downloading_target:
            return ManifestError("file-mismatch", f"a target's bytes differ from what its role lists: {text}")
        return ManifestError("mix-and-match", f"metadata that is not the one snapshot or timestamp names: {text}")
    if isinstance(error, tuf_errors.DownloadLengthMismatchError):
        return ManifestError("oversized", f"a download longer than TUF allows: {text}")
    if isinstance(error, tuf_errors.DownloadError):
        return ManifestError("unreachable", f"TUF metadata could not be fetched: {text}")
    return ManifestError("bad-metadata", f"{type(error).__name__}: {text}")


def check_cache(folder: Path) -> None:
    """python-tuf's cache in the slot holds regular files of bounded size, and `root.json` is
    the updater's own link into `root_history/`: the slot's folder may be writable by others,
    and nothing planted there is followed out of it or read without bound (UnreadableFile
    names a refusal)."""
    folder = plain_folder(Path(folder), create=True)
    for path in folder.iterdir():
        if path.name == "root.json" and path.is_symlink():
            if not ROOT_LINK.fullmatch(os.readlink(path)):
                raise UnreadableFile("link", path, "links outside the trusted root history")
        elif path.name == ROOT_HISTORY:
            for entry in plain_folder(path).iterdir():
                regular_file_size(entry, MAX_CACHED_BYTES, follow_links=False)
        else:
            regular_file_size(path, MAX_CACHED_BYTES, follow_links=False)


class TufChannel:
    """The TUF metadata a device keeps in `folder` (python-tuf's cache: trusted root history,
    timestamp, snapshot, targets, channels) and what it says a channel serves."""

    def __init__(self, folder: Path, client: RegistryClient, bootstrap: bytes | None = None) -> None:
        self.folder, self.fetcher = Path(folder), RegistryFetcher(client)
        check_cache(self.folder)
        try:
            self.updater = Updater(str(self.folder), METADATA_URL,
                                   target_base_url=TARGETS_URL, fetcher=self.fetcher, bootstrap=bootstrap)
            self.updater.refresh()
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as error:
            raise refusal(error) from error
        except (OSError, ValueError) as error:
            raise ManifestError("bad-metadata", f"the trusted TUF metadata in {self.folder} is unusable: {error}") from error

    @staticmethod
    def provisioned(folder: Path) -> bool:
        return os.path.lexists(Path(folder) / ROOT_HISTORY)

    @classmethod
    def migrate(cls, folder: Path, client: RegistryClient, operator_key) -> TufChannel:
        """Move a device that trusts only the operator key onto TUF: it takes the registry's
        root v1 only if the operator key endorsed exactly those bytes."""
        reply = client.metadata_reply(Root.type, 1)
        if not reply.HasField("endorsement"):
            raise ManifestError("no-endorsement", "the registry's TUF root comes without the operator's endorsement")
        check_endorsement(reply.endorsement.manifest, reply.endorsement.signature, operator_key, reply.metadata)
        return cls(folder, client, bootstrap=reply.metadata)

    def operator_keys(self) -> dict:
        """The keys the root the updater trusts after this refresh names for targets: the
        keys release.json may be signed with. python-tuf has no public accessor for its
        trusted root; reading a file back from the cache would trust whatever lies there."""
        return operator_keys(self.updater._trusted_set.root)  # noqa: SLF001

    @staticmethod
    def cached_operator_keys(folder: Path) -> dict:
        """The same keys from the root this device last trusted, without the registry (a
        device predicting or training offline after a rotation uses the rotated key)."""
        check_cache(Path(folder))
        try:
            root = Metadata[Root].from_bytes(read_small(Path(folder) / "root.json", limit=MAX_CACHED_BYTES))
        except (UnreadableFile, ValueError, TypeError) as error:
            raise ManifestError("bad-metadata", f"the trusted TUF root in {folder} is unusable: {error}") from error
        return operator_keys(root.signed)

    def release(self, base_id: str, channel: str) -> tuple[bytes, bytes] | None:
        """(release.json, release.sig) bytes the channel's role lists for `base_id`, or None."""
        files = []
        for name in RELEASE_FILES:
            try:
                info = self.updater.get_targetinfo(release_path(channel, base_id, name))
            except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as error:
                raise refusal(error) from error
            if info is None:
                return None
            directory, _, file_name = info.path.rpartition("/")
            url = f"{TARGETS_URL}{directory}/{info.hashes.get('sha256', 'none')}.{file_name}"
            try:
                data = self.fetcher.download_bytes(url, info.length)  # bounded by the signed length
                info.verify_length_and_hashes(data)
            except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as error:
                raise refusal(error, downloading_target=True) from error
            files.append(data)
        return files[0], files[1]
