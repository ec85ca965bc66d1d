import numpy as np
import pytest

from fedpeft.core.base.cache import NodeCache
from fedpeft.core.base.package import BasePackage
from fedpeft.core.base.tasks import get_task
from fedpeft.core.errors import IntegrityError


def _copy(package: BasePackage) -> BasePackage:
    return BasePackage(
        {**package.manifest}, dict(package.files), {k: v.copy() for k, v in package.tensors.items()}
    )


def test_package_is_deterministic_and_leaves_the_head_out(tiny_bert_dir, tiny_package):
    again = BasePackage.from_pretrained(tiny_bert_dir, get_task("seq-cls"), "int8")
    assert again.base_id == tiny_package.base_id
    assert not any(name.startswith("classifier") for name in tiny_package.tensors)
    assert "vocab.txt" in tiny_package.files
    assert tiny_package.download_bytes < 0.4 * tiny_package.fp32_bytes


def test_base_id_does_not_depend_on_where_the_folder_lies(tiny_bert_dir, tiny_package, tmp_path):
    import shutil

    moved = shutil.copytree(tiny_bert_dir, tmp_path / "elsewhere")
    assert BasePackage.from_pretrained(moved, get_task("seq-cls"), "int8").base_id == tiny_package.base_id


def test_quantization_changes_the_base_id(tiny_bert_dir, tiny_package):
    plain = BasePackage.from_pretrained(tiny_bert_dir, get_task("seq-cls"), "none")
    assert plain.base_id != tiny_package.base_id
    def tensor_bytes(package):
        return sum(a.nbytes for a in package.tensors.values())

    assert tensor_bytes(plain) > 3 * tensor_bytes(tiny_package)


def test_verify_accepts_the_announced_package(tiny_package):
    tiny_package.verify(tiny_package.base_id)


def test_verify_rejects_a_flipped_byte(tiny_package):
    bad = _copy(tiny_package)
    name = next(n for n in bad.tensors if n.endswith(".q"))
    bad.tensors[name].reshape(-1)[0] ^= 1
    with pytest.raises(IntegrityError, match=name):
        bad.verify(tiny_package.base_id)


def test_verify_rejects_an_edited_manifest(tiny_package):
    bad = _copy(tiny_package)
    bad.manifest["quantization"] = "none"
    with pytest.raises(IntegrityError, match="expected"):
        bad.verify(tiny_package.base_id)


def test_verify_rejects_a_changed_tokenizer_file(tiny_package):
    bad = _copy(tiny_package)
    bad.files["vocab.txt"] = bad.files["vocab.txt"] + b"extra\n"
    with pytest.raises(IntegrityError, match="vocab.txt"):
        bad.verify(tiny_package.base_id)


def test_verify_rejects_a_missing_tensor(tiny_package):
    bad = _copy(tiny_package)
    bad.tensors.pop(sorted(bad.tensors)[0])
    with pytest.raises(IntegrityError, match="missing"):
        bad.verify(tiny_package.base_id)


def test_cache_stores_once_and_reloads_verified(tmp_path, tiny_package):
    cache = NodeCache(tmp_path)
    assert not cache.has(tiny_package.base_id)
    cache.put(tiny_package, tiny_package.base_id)
    cache.put(tiny_package, tiny_package.base_id)
    loaded = cache.load(tiny_package.base_id)
    assert loaded.base_id == tiny_package.base_id
    assert [p.name for p in (tmp_path / "bases").iterdir()] == [tiny_package.base_id]


def test_cache_refuses_a_package_under_another_id(tmp_path, tiny_package):
    cache = NodeCache(tmp_path)
    with pytest.raises(IntegrityError):
        cache.put(tiny_package, "0" * 64)
    assert not (tmp_path / "bases" / ("0" * 64)).exists()


def test_cache_detects_corruption_on_disk(tmp_path, tiny_package):
    cache = NodeCache(tmp_path)
    folder = cache.put(tiny_package, tiny_package.base_id)
    (folder / "files" / "vocab.txt").write_text("tampered")
    with pytest.raises(IntegrityError, match="vocab.txt"):
        cache.load(tiny_package.base_id)


def test_cache_rejects_path_tricks(tmp_path):
    with pytest.raises(IntegrityError, match="not a base id"):
        NodeCache(tmp_path).path("../../etc")


def test_loaded_base_is_frozen_and_quantized(tiny_base):
    assert not any(p.requires_grad for p in tiny_base.model.parameters())
    query = tiny_base.model.bert.encoder.layer[0].attention.self.query.weight
    assert type(query).__name__ == "Int8Tensor"
    assert np.isfinite(tiny_base.fp32_bytes)
