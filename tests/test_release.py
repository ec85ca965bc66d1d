"""Signed releases of published adapters, and `fedpeft verify` on good and bad folders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from peft import PeftModel

from fedpeft.core.adapters.spec import TemplateSpec
from fedpeft.core.adapters.template import create_template
from fedpeft.core.base.tasks import get_task
from fedpeft.core.training.synthetic_data import LABELS
from fedpeft.core.trust.keys import load_private_key, load_public_key, new_key_pair
from fedpeft.core.trust.release import sign_release, verify_release
from fedpeft.core.trust.signed_files import ManifestError

NOW = datetime.now(UTC)


@pytest.fixture
def release(tmp_path, tiny_base):
    new_key_pair(tmp_path / "operator.key")
    new_key_pair(tmp_path / "other.key")
    template = create_template(tiny_base.model, get_task("seq-cls"), TemplateSpec("lora", 4, 8), list(LABELS))
    folder = tmp_path / "adapter"
    template.attach(tiny_base.model).save_pretrained(str(folder))
    signed = sign_release(folder, load_private_key(tmp_path / "operator.key"), version=3, base_id="b" * 64,
                          template_id=template.template_id, labels=list(LABELS), parent=None, metrics={"global_accuracy": 0.5},
                          valid_days=30, now=NOW)
    return folder, signed


def _verify(folder, tmp_path, **kwargs):
    return verify_release(folder, load_public_key(tmp_path / "operator.pub"), now=NOW + timedelta(days=1), **kwargs)


def test_a_signed_release_verifies_and_peft_still_loads_the_folder(release, tmp_path, tiny_base):
    folder, signed = release
    verified = _verify(folder, tmp_path, base_id="b" * 64)
    assert verified.release_id == signed.release_id and verified.version == 3
    assert set(verified.manifest["files"]) == {"adapter_config.json", "adapter_model.safetensors"}
    assert verified.manifest["tensors"]
    PeftModel.from_pretrained(tiny_base.model, str(folder))


def _rewrite_manifest(folder, **changes):
    manifest = json.loads((folder / "release.json").read_bytes())
    manifest.update(changes)
    (folder / "release.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage, reason", [
    (lambda f, t: (f / "adapter_model.safetensors").write_bytes(
        (f / "adapter_model.safetensors").read_bytes()[:-4] + b"\0\0\0\1"), "file-mismatch"),
    (lambda f, t: (f / "adapter_config.json").write_text("{}"), "file-mismatch"),
    (lambda f, t: _rewrite_manifest(f, version=99), "bad-signature"),
    (lambda f, t: (f / "release.json").write_bytes((f / "release.json").read_bytes() + b" "), "bad-signature"),
    (lambda f, t: shutil.copy(t / "other.pub", t / "operator.pub"), "wrong-key"),
    (lambda f, t: (f / "release.sig").unlink(), "missing-file"),
    (lambda f, t: (f / "adapter_model.safetensors").unlink(), "missing-file"),
    (lambda f, t: (f / "release.sig").write_text("[1, 2]"), "malformed"),
])
def test_damaged_releases_fail_with_their_reason(release, tmp_path, damage, reason):
    folder, _ = release
    damage(folder, tmp_path)
    with pytest.raises(ManifestError) as failure:
        _verify(folder, tmp_path)
    assert failure.value.reason == reason


def test_expired_or_foreign_base_releases_are_refused(release, tmp_path):
    folder, _ = release
    key = load_public_key(tmp_path / "operator.pub")
    with pytest.raises(ManifestError, match="expired"):
        verify_release(folder, key, now=NOW + timedelta(days=31))
    with pytest.raises(ManifestError, match="wrong-base"):
        verify_release(folder, key, base_id="c" * 64, now=NOW)


def test_verify_cli_says_ok_or_exactly_what_fails(release, tmp_path):
    folder, _ = release
    cmd = [sys.executable, "-m", "fedpeft.cli", "verify", str(folder), "--key", str(tmp_path / "operator.pub")]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "release v3" in ok.stdout
    (folder / "adapter_config.json").write_text("{}")
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert "file-mismatch: adapter_config.json" in bad.stderr
