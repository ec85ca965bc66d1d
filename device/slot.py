"""A device's adapter slot: pull the channel's release from the registry, check it,
install it atomically, keep the previous one for a local rollback.

Nothing the registry says is trusted. Before anything is downloaded the release must be
signed by the operator key the device was provisioned with, unexpired, made for the
device's base, and newer than every release the device ever installed (a local rollback
does not lower that floor, so a replayed old release is refused after one too). Every
downloaded file must match its signed size and SHA-256. Until all of that holds,
nothing the device uses changes. Imports no torch: ONNX devices apply the release's
`.onnx_adapter` with export/predict.py; PyTorch ones load the PEFT folder.

On a TUF registry (device/tuf_trust.py) the channel's release comes from the channel
role's signed metadata instead of the registry's word, and "the operator key" is whichever
key the newest trusted root names for targets (rotations and revocations followed); every
check above still applies to what TUF hands over.

The slot's folder is writable by others too, so nothing in it is followed out of it:
state.json's folder names are checked (device/slot_state.py), and every file and folder
the slot reads or writes under it must be a regular file or a real folder, never a link
(core/trust/files.py `follow_links=False`, `plain_folder`); a planted link is refused by
name (UnreadableFile, reason `link`), and the installed release must be the one
state.json names.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedpeft.core.errors import IntegrityError
from fedpeft.core.trust.atomic import staged_folder, write_atomic
from fedpeft.core.trust.files import file_sha256, plain_files, plain_folder, regular_file_size
from fedpeft.core.trust.release import RELEASE_NAME, Release, check_channel, check_release, verify_release
from fedpeft.core.trust.signed_files import ManifestError, read_file, signer_of

from .registry_client import RegistryClient
from .slot_state import STATE_FILE, load_state, release_folder_name, state_bytes
from .tuf_trust import TufChannel

TUF_FOLDER = "tuf"  # python-tuf's trusted metadata (root history, timestamp, snapshot, targets, channels)


@dataclass(frozen=True)
class PullResult:
    status: str              # "installed" or "not-modified"
    version: int             # the version in use after the pull
    release_id: str | None
    bytes_received: int = 0
    resumed_bytes: int = 0   # bytes an interrupted earlier pull had already stored


class Device:
    """The adapter slot of one device in `folder`:
    state.json, releases/v<version>-<id>/ (current and previous), downloads/ (partial)."""

    def __init__(self, folder: Path, operator_key: Ed25519PublicKey, base_id: str, channel: str = "stable",
                 trusted_root: bytes | None = None) -> None:
        """`trusted_root`: the TUF root.json this device is provisioned with; without it the
        device trusts `operator_key` alone until a registry offers TUF metadata the operator
        key endorses, and keeps TUF from then on (tuf/)."""
        self.folder, self.operator_key, self.base_id = Path(folder), operator_key, base_id
        self.channel = check_channel(channel)
        self.releases, self.downloads = self.folder / "releases", self.folder / "downloads"
        self.tuf, self.trusted_root = self.folder / TUF_FOLDER, trusted_root
        self.state = load_state(self.folder, base_id)
        # on TUF: the keys the trusted root names for targets (the cached root's until a pull refreshes it)
        self._operator_keys: dict[str, Ed25519PublicKey] | None = (
            TufChannel.cached_operator_keys(self.tuf) if TufChannel.provisioned(self.tuf) else None)

    def _signing_key(self, signature: bytes) -> Ed25519PublicKey:
        """The key release.sig must verify with: the operator key, or on TUF the targets key
        of the newest trusted root it names (a revoked or unknown key is refused)."""
        if self._operator_keys is None:
            return self.operator_key
        signer, _ = signer_of(signature, RELEASE_NAME)
        key = self._operator_keys.get(signer)
        if key is None:
            raise ManifestError("revoked-key", f"release.sig is signed by key {signer[:12]}, which the trusted TUF "
                                               "root does not name for targets (revoked, or never an operator key)")
        return key

    def _offer(self, client: RegistryClient, now: datetime | None) -> tuple[bytes, bytes] | None:
        """(release.json, release.sig) of the channel's release if it is newer than the
        installed one; None: not modified. On TUF (provisioned, or moved there now because
        the registry says it serves TUF and its root v1 carries the operator key's
        endorsement) python-tuf verifies the channel's metadata first; otherwise the
        registry's answer is all there is."""
        if TufChannel.provisioned(self.tuf) or self.trusted_root is not None:
            trust = TufChannel(self.tuf, client, None if TufChannel.provisioned(self.tuf) else self.trusted_root)
        else:
            reply = client.latest_reply(self.base_id, self.channel, self.version)
            if not reply.tuf:
                return None if reply.not_modified else (reply.release.manifest, reply.release.signature)
            trust = TufChannel.migrate(self.tuf, client, self.operator_key)
        self._operator_keys = trust.operator_keys()
        offered = trust.release(self.base_id, self.channel)
        if offered is None:
            raise ManifestError("not-listed", f"the {self.channel} channel lists no release of base {self.base_id[:12]}")
        release = check_release(*offered, self._signing_key(offered[1]), base_id=self.base_id, now=now)
        return offered if release.version > self.version else None

    def _release_folder(self, entry: dict) -> Path:
        """An installed release's folder once it and everything in it is plain: a real
        folder under a real releases/, holding regular files only."""
        folder = plain_folder(self.releases) / entry["folder"]
        plain_files(folder)
        return folder

    def _part(self, sha256: str) -> Path:
        """Where a download of `sha256` goes: absent, or a regular file an earlier pull left."""
        part = plain_folder(self.downloads, create=True) / f"{sha256}.part"
        if os.path.lexists(part):
            regular_file_size(part, follow_links=False)
        return part

    @property
    def version(self) -> int:
        return self.state["current"]["version"] if self.state["current"] else 0

    @property
    def current(self) -> Path | None:
        """The folder of the adapter in use: a PEFT folder (`PeftModel.from_pretrained`),
        with `adapter.onnx_adapter` too when the release carries one."""
        return self.releases / self.state["current"]["folder"] if self.state["current"] else None

    def check(self, manifest: bytes, signature: bytes, now: datetime | None = None) -> Release:
        """The release if this device may install it; ManifestError names the refusal."""
        release = check_release(manifest, signature, self._signing_key(signature), base_id=self.base_id, now=now)
        if release.release_id in self.state["seen"]:
            raise ManifestError("replayed", f"release v{release.version} ({release.release_id[:12]}) was installed "
                                            "before; a registry offering it again is replaying it")
        if release.version <= self.state["floor"]:
            raise ManifestError("older-version", f"release v{release.version} is not newer than v{self.state['floor']}, "
                                                 "the newest this device has installed")
        return release

    def current_release(self, now: datetime | None = None) -> Release | None:
        """The installed release, verified again now (signature, expiry, files): a device
        runs nothing that has expired since it was installed (TUF's freeze attack: a
        registry that keeps answering "not modified" cannot keep it on stale weights)."""
        entry = self.state["current"]
        if entry is None:
            return None
        try:
            folder = self._release_folder(entry)
            key = self._signing_key(read_file(folder, f"{RELEASE_NAME}.sig"))
            release = verify_release(folder, key, base_id=self.base_id, now=now)
        except ManifestError as error:
            if error.reason != "expired":
                raise
            raise ManifestError("expired", f"the installed release v{self.version} has expired and the registry "
                                           f"offers nothing newer: {error.detail}") from error
        if release.release_id != entry["release_id"]:
            raise ManifestError("state-mismatch", f"{entry['folder']} holds release {release.release_id[:12]}, "
                                                  f"not {entry['release_id'][:12]} as state.json says")
        return release

    def previous_release(self) -> Path | None:
        """The folder of the release before the current one, its signature and files checked
        (expired or not: it is only compared against), or None."""
        entry = self.state["previous"]
        if entry is None:
            return None
        folder = self._release_folder(entry)
        verify_release(folder, self._signing_key(read_file(folder, f"{RELEASE_NAME}.sig")), base_id=self.base_id,
                       now=datetime(1970, 1, 1, tzinfo=UTC))
        return folder

    def pull(self, client: RegistryClient, progress: Callable[[int, int], None] | None = None,
             now: datetime | None = None) -> PullResult:
        """Install the channel's release if it is newer and checks out; ManifestError names a refusal,
        including an installed release that has expired while the registry offers nothing newer."""
        offered = self._offer(client, now)
        if offered is None:
            self.current_release(now)
            return PullResult("not-modified", self.version, self.state["current"] and self.state["current"]["release_id"])
        manifest, signature = offered
        release = self.check(manifest, signature, now)
        received = resumed = 0
        for name, entry in release.files.items():
            part = self._part(entry["sha256"])
            self._reuse_local(name, entry["sha256"], part)
            download = client.fetch_blob(entry["sha256"], entry["size"], part, progress)
            received, resumed = received + download.received, resumed + download.resumed_from
            if download.size < entry["size"]:
                raise ManifestError("truncated", f"{name}: the registry's stream ended after {download.size} of "
                                                 f"{entry['size']} bytes (kept; the next pull resumes)")
            if file_sha256(part, follow_links=False) != entry["sha256"]:
                part.unlink()
                raise ManifestError("file-mismatch", f"{name}: downloaded bytes differ from the signed SHA-256")
        self._install(release, manifest, signature)
        return PullResult("installed", release.version, release.release_id, received, resumed)

    def _reuse_local(self, name: str, sha256: str, part: Path) -> None:
        """Start from the installed copy of a file the new release shares (a registry
        rollback republishes earlier weights): nothing to download, the hash still checked."""
        for entry in (self.state["current"], self.state["previous"]):
            if os.path.lexists(part) or entry is None or not os.path.lexists(self.releases / entry["folder"]):
                continue
            local = self._release_folder(entry) / name
            if local.exists() and file_sha256(local, follow_links=False) == sha256:
                shutil.copyfile(local, part)

    def _install(self, release: Release, manifest: bytes, signature: bytes) -> None:
        """Assemble the release in a staging folder, verify it as a whole, rename it into
        place, then switch state.json (one atomic write) to it."""
        name = release_folder_name(release.version, release.release_id)
        target = plain_folder(self.releases, create=True) / name
        if os.path.lexists(target):  # replaced below: a folder of this name can only be left by a crash
            plain_folder(target)     # before the state switch; a link is refused, not followed
        with staged_folder(target, replace=True) as staging:
            for file_name, entry in release.files.items():
                shutil.copyfile(self._part(entry["sha256"]), staging / file_name)
            (staging / f"{RELEASE_NAME}.json").write_bytes(manifest)
            (staging / f"{RELEASE_NAME}.sig").write_bytes(signature)
            verify_release(staging, self._signing_key(signature), base_id=self.base_id)  # files and tensors, assembled
        entry = {"version": release.version, "release_id": release.release_id, "folder": name}
        self._save({**self.state, "current": entry, "previous": self.state["current"],
                    "floor": max(self.state["floor"], release.version),
                    "seen": sorted(set(self.state["seen"]) | {release.release_id})})
        for file_entry in release.files.values():
            (self.downloads / f"{file_entry['sha256']}.part").unlink(missing_ok=True)
        self._prune()

    def rollback(self) -> dict:
        """Go back to the previous adapter (one step). The anti-rollback floor stays: the
        registry cannot push the abandoned version, or anything older, again."""
        if not self.state["previous"]:
            raise IntegrityError(f"{self.folder}: no previous adapter to roll back to")
        self._save({**self.state, "current": self.state["previous"], "previous": None})
        self._prune()
        return self.state["current"]

    def _save(self, state: dict) -> None:
        write_atomic(self.folder / STATE_FILE, state_bytes(state))
        self.state = state

    def _prune(self) -> None:
        keep = {e["folder"] for e in (self.state["current"], self.state["previous"]) if e}
        if not os.path.lexists(self.releases):
            return
        for path in plain_folder(self.releases).iterdir():
            if path.name in keep:
                continue
            if path.is_dir() and not path.is_symlink():  # older releases, staging folders an interrupted install left
                shutil.rmtree(path)
            else:  # anything else planted here: a link is removed itself, its target untouched
                path.unlink()
