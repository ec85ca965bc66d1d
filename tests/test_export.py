"""`fedpeft export` on tiny transformers: files, parity, swappable adapters, refusals,
and device-side prediction without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA, TINY_LIMITS, registry_trusting, release_adapter
from peft import PeftModel

from fedpeft.core.adapters.spec import TemplateSpec
from fedpeft.core.adapters.state import get_adapter_arrays, set_adapter_arrays
from fedpeft.core.adapters.template import create_template
from fedpeft.core.base.model import load_base
from fedpeft.core.base.package import BasePackage
from fedpeft.core.base.tasks import get_task
from fedpeft.core.errors import ConfigError, IntegrityError
from fedpeft.core.training.data import DataSpec
from fedpeft.core.training.synthetic_data import LABELS
from fedpeft.core.trust.keys import load_private_key, load_public_key, new_key_pair
from fedpeft.core.trust.release import sign_release
from fedpeft.core.trust.signed_files import ManifestError
from fedpeft.device.predict import Predictor
from fedpeft.device.registry_client import RegistryClient
from fedpeft.export.exporter import ExportRequest, check_adapter, export, export_adapter_only
from fedpeft.export.parity import ParityLimits
from fedpeft.server.registry import operator as registry_operator


def _adapter(folder: Path, base, template, seed: int, key, version: int = 1) -> Path:
    """A trained-looking adapter (random non-zero B and head) saved and released."""
    rng = np.random.default_rng(seed)
    arrays = {n: (v + rng.normal(scale=0.5, size=v.shape)).astype(np.float32) for n, v in template.init.items()}
    return release_adapter(folder, base, template, arrays, key, version)


@pytest.fixture(scope="module")
def setup(tiny_bert_dir, tiny_package, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    new_key_pair(root / "operator.key")
    key = load_private_key(root / "operator.key")
    base = load_base(tiny_package, len(LABELS), in_memory_quantization=False)
    template = create_template(base.model, get_task("seq-cls"), TemplateSpec(method="lora", rank=4), list(LABELS))
    first = _adapter(root / "adapter-1", base, template, seed=1, key=key)
    second = _adapter(root / "adapter-2", base, template, seed=2, key=key, version=2)
    request = ExportRequest(first, root / "out", tiny_bert_dir, release_key=key.public_key(), data=DATA,
                            max_length=32, limits=TINY_LIMITS, training_graph=False)  # test_device_training has one
    manifest = export(request, key, progress=lambda _: None)
    return {"root": root, "key": key, "base": base, "first": first, "second": second, "request": request,
            "manifest": manifest, "out": root / "out", "package": tiny_package}


def _torch_logits(setup, adapter: Path, texts: list[str]) -> np.ndarray:
    base = load_base(setup["package"], len(LABELS), in_memory_quantization=False)
    model = PeftModel.from_pretrained(base.model, str(adapter)).eval()
    batch = base.tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.numpy()


def test_export_folder_holds_every_promised_file(setup):
    out, manifest = setup["out"], setup["manifest"]
    for name in ("model.onnx", "model.int8.onnx", "base.onnx", "adapter.onnx_adapter", "model.int8.ort",
                 "base.ort", "export.json", "export.sig", "tokenizer/tokenizer.json"):
        assert (out / name).is_file(), name
    assert manifest["labels"] == list(LABELS)
    assert manifest["training"] is None and not (out / "train.onnx").exists()  # exported with training_graph=False
    assert manifest["inputs"] == ["input_ids", "attention_mask"] and manifest["outputs"] == ["logits"]
    assert manifest["opset"] >= 17 and manifest["base_id"] == setup["package"].base_id
    assert (out / "model.int8.onnx").stat().st_size < 0.5 * (out / "model.onnx").stat().st_size
    parity = manifest["parity"]
    assert parity["fp32_max_abs"] <= 1e-4 and parity["adapter_max_abs"] <= 1e-4
    assert parity["examples"] > 0


def test_exported_models_match_pytorch_on_batches_and_lengths_not_seen_at_export(setup):
    texts = ["a", "the pasta was good and the wine better " * 3, "my python script crashed", "cats"]
    reference = _torch_logits(setup, setup["first"], texts)
    key = setup["key"].public_key()
    for model in ("fp32", "base"):
        logits = Predictor(setup["out"], key, model).logits(texts)
        np.testing.assert_allclose(logits, reference, atol=1e-4)
    single = Predictor(setup["out"], key, "fp32").logits(texts[:1])
    np.testing.assert_allclose(single, reference[:1], atol=1e-4)


def test_a_second_adapter_swaps_onto_the_base_graph(setup):
    root, key = setup["root"], setup["key"]
    request = ExportRequest(setup["second"], root / "second", setup["request"].model_folder,
                            release_key=key.public_key(), data=DATA)
    export_adapter_only(request, setup["out"], key.public_key(), key)
    texts = ["the soup was too salty", "my laptop keeps crashing"]
    swapped = Predictor(setup["out"], key.public_key(), "base", adapter=root / "second").logits(texts)
    np.testing.assert_allclose(swapped, _torch_logits(setup, setup["second"], texts), atol=1e-4)
    assert not np.allclose(swapped, Predictor(setup["out"], key.public_key(), "base").logits(texts), atol=1e-3)


def test_prediction_on_a_device_needs_no_torch(setup):
    code = (
        "import sys; from pathlib import Path\n"
        "from fedpeft.core.trust.keys import load_public_key\n"
        "from fedpeft.device.predict import Predictor\n"
        f"p = Predictor(Path({str(setup['out'])!r}), load_public_key(Path({str(setup['root'] / 'operator.pub')!r})))\n"
        "print([x.label for x in p.predict(['the soup was too salty', 'cats'])])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(label in LABELS for label in json.loads(proc.stdout.strip().replace("'", '"')))
    cli = subprocess.run([sys.executable, "-m", "fedpeft.cli", "predict", str(setup["out"]), "cats",
                          "--key", str(setup["root"] / "operator.pub")], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and cli.stdout.split("\t")[0] in LABELS


def test_a_device_pulls_an_onnx_adapter_from_the_registry_and_applies_it_without_torch(setup, tmp_path):
    root, key = setup["root"], setup["key"]
    onnx_adapter = tmp_path / "onnx-adapter"
    export_adapter_only(ExportRequest(setup["second"], onnx_adapter, setup["request"].model_folder,
                                      release_key=key.public_key(), data=DATA), setup["out"], key.public_key(), key)
    with registry_trusting(tmp_path, key) as (address, ca):
        with RegistryClient(address, ca) as client:
            release = registry_operator.publish(client, key, setup["second"], "stable", onnx_adapter=onnx_adapter)
        assert "adapter.onnx_adapter" in release.files
        texts = ["the soup was too salty", "my laptop keeps crashing"]
        code = (
            "import json, sys; from pathlib import Path\n"
            "from fedpeft.device.slot import Device\n"
            "from fedpeft.device.registry_client import RegistryClient\n"
            "from fedpeft.core.trust.keys import load_public_key\n"
            "from fedpeft.device.predict import Predictor\n"
            f"key = load_public_key(Path({str(root / 'operator.pub')!r}))\n"
            f"device = Device(Path({str(tmp_path / 'device')!r}), key, {release.base_id!r})\n"
            f"with RegistryClient({address!r}, Path({str(ca)!r})) as client:\n"
            "    device.pull(client)\n"
            f"logits = Predictor(Path({str(setup['out'])!r}), key, 'base', adapter=device.current).logits({texts!r})\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "print(json.dumps(logits.tolist()))\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_allclose(np.array(json.loads(proc.stdout)), _torch_logits(setup, setup["second"], texts), atol=1e-4)


def test_devices_refuse_a_tampered_or_foreign_export(setup, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(setup["out"], copy)
    data = bytearray((copy / "model.int8.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.int8.onnx").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="file-mismatch: model.int8.onnx"):
        Predictor(copy, setup["key"].public_key())
    new_key_pair(tmp_path / "other.key")
    with pytest.raises(ManifestError, match="wrong-key"):
        Predictor(setup["out"], load_public_key(tmp_path / "other.pub"))


def test_export_refuses_bad_adapters(setup, tmp_path, tiny_bert_dir):
    key = setup["key"]
    request = setup["request"]

    def check(adapter: Path, **changes):
        fields = {**request.__dict__, "adapter": adapter, **changes}
        return check_adapter(ExportRequest(**fields), setup["package"].base_id)

    assert check(setup["first"]).version == 1
    tampered = tmp_path / "tampered"
    shutil.copytree(setup["first"], tampered)
    manifest = json.loads((tampered / "release.json").read_bytes())
    manifest["version"] = 7
    (tampered / "release.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="bad-signature"):
        check(tampered)
    unsigned = tmp_path / "unsigned"
    shutil.copytree(setup["first"], unsigned)
    (unsigned / "release.json").unlink()
    with pytest.raises(ConfigError, match="accept-unsigned"):
        check(unsigned)
    assert check(unsigned, accept_unsigned=True) is None
    missing = tmp_path / "missing"
    shutil.copytree(setup["first"], missing)
    (missing / "adapter_model.safetensors").unlink()
    with pytest.raises(ConfigError, match="adapter_model.safetensors is missing"):
        check(missing)
    with pytest.raises(ConfigError, match="public key"):
        check(setup["first"], release_key=None)
    other_base = BasePackage.from_pretrained(tiny_bert_dir, get_task("seq-cls"), "int4")
    with pytest.raises(ManifestError, match="wrong-base"):
        check_adapter(request, other_base.base_id)
    # through the whole export: a model folder that gives another base is refused, and
    # an existing output folder is never overwritten
    with pytest.raises(ManifestError, match="wrong-base"):
        export(ExportRequest(**{**request.__dict__, "quantization": "int4", "out": tmp_path / "x"}), key)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="already exists"):
        export(request, key)
    assert (setup["out"] / "export.json").is_file()


def test_parity_limits_are_enforced(setup, tmp_path):
    strict = ParityLimits(fp32_max_abs=0.0)
    request = ExportRequest(**{**setup["request"].__dict__, "out": tmp_path / "strict", "limits": strict})
    with pytest.raises(IntegrityError, match="fp32 max abs diff"):
        export(request, setup["key"], progress=lambda _: None)
    assert not (tmp_path / "strict").exists()


def test_causal_lm_exports_without_kv_cache(tmp_path, tiny_gpt2_dir):
    new_key_pair(tmp_path / "op.key")
    key = load_private_key(tmp_path / "op.key")
    package = BasePackage.from_pretrained(tiny_gpt2_dir, get_task("causal-lm"), "int8")
    base = load_base(package, 0, in_memory_quantization=False)
    template = create_template(base.model, get_task("causal-lm"), TemplateSpec(method="lora", rank=2), [])
    model = template.attach(base.model)
    arrays = get_adapter_arrays(model)
    set_adapter_arrays(model, {n: v + 0.1 for n, v in arrays.items()})
    model.save_pretrained(str(tmp_path / "adapter"))
    sign_release(tmp_path / "adapter", key, version=1, base_id=package.base_id, template_id=template.template_id,
                 labels=[], parent=None, metrics={}, valid_days=1)
    request = ExportRequest(tmp_path / "adapter", tmp_path / "out", tiny_gpt2_dir, task="causal-lm",
                            release_key=key.public_key(), data=DataSpec(num_clients=2), max_length=32,
                            parity_examples=16, limits=TINY_LIMITS)
    manifest = export(request, key, progress=lambda _: None)
    assert manifest["parity"]["fp32_max_abs"] <= 1e-4 and manifest["parity"]["torch_accuracy"] is None
    logits = Predictor(tmp_path / "out", key.public_key(), "fp32").logits(["the cat", "my python code is slow"])
    assert logits.ndim == 3 and logits.shape[0] == 2


@pytest.mark.parametrize("scheme", ["blockwise", "per-tensor"])
def test_int8_schemes_shrink_the_model_and_stay_close(setup, tmp_path, scheme):
    import onnxruntime as ort

    from fedpeft.export.int8 import quantize_int8

    fp32 = setup["out"] / "model.onnx"
    quantize_int8(fp32, tmp_path / "q.onnx", scheme)
    assert (tmp_path / "q.onnx").stat().st_size < 0.5 * fp32.stat().st_size
    ids = np.random.default_rng(0).integers(5, 60, size=(4, 12)).astype(np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    reference = ort.InferenceSession(str(fp32)).run(None, feed)[0]
    quantized = ort.InferenceSession(str(tmp_path / "q.onnx")).run(None, feed)[0]
    assert np.abs(quantized - reference).max() < 0.1 * np.abs(reference).max()
    with pytest.raises(ConfigError, match="int4"):
        quantize_int8(fp32, tmp_path / "x.onnx", "int4")


def test_an_accepted_unsigned_adapter_exports_with_the_datas_labels(setup, tmp_path):
    unsigned = tmp_path / "unsigned"
    shutil.copytree(setup["first"], unsigned)
    (unsigned / "release.json").unlink()
    (unsigned / "release.sig").unlink()
    out = tmp_path / "nested" / "folders" / "out"
    request = ExportRequest(**{**setup["request"].__dict__, "adapter": unsigned, "out": out, "release_key": None,
                               "accept_unsigned": True})
    manifest = export(request, setup["key"], progress=lambda _: None)
    assert manifest["release_id"] is None and manifest["labels"] == list(LABELS)
    assert Predictor(out, setup["key"].public_key()).labels == list(LABELS)
    assert [p.name for p in out.parent.iterdir()] == ["out"]  # no staging folder left behind
