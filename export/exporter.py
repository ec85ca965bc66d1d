"""`fedpeft export`: a verified adapter + its base -> a signed folder for ONNX Runtime.

The folder holds a merged fp32 model, an int8 version (onnxruntime.quantization,
export/int8.py), a base graph with the adapter tensors as inputs plus the
adapter as an `.onnx_adapter` file (swap adapters without downloading the base again),
`.ort` conversions for ONNX Runtime Mobile, the training graph devices train the adapter
with (export/training_graph.py), the tokenizer, and `export.json` (labels, input/output
names, opset, parity figures, file hashes) signed by the operator.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from peft import PeftModel
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedpeft.core.adapters.methods import get_method
from fedpeft.core.adapters.state import get_adapter_arrays
from fedpeft.core.adapters.template import AdapterTemplate
from fedpeft.core.base.model import load_base
from fedpeft.core.base.package import BasePackage
from fedpeft.core.choices import GENERATION_PRECISIONS
from fedpeft.core.base.tasks import Task, get_task
from fedpeft.core.errors import ConfigError, IntegrityError
from fedpeft.core.training.data import DataSpec, TextSplit, client_data, load_rows, num_partitions
from fedpeft.core.trust.atomic import staged_folder
from fedpeft.core.trust.release import ADAPTER_FILES, Release, verify_release
from fedpeft.core.trust.signed_files import ManifestError, file_entries, validity, write_signed
from fedpeft.device.generate import LanguageModel
from fedpeft.device.genai_adapter import genai_section, to_genai, write_genai_adapter
from fedpeft.device.onnx_adapter import read_onnx_adapter, write_onnx_adapter
from fedpeft.device.predict import (
    ADAPTER_EXPORT_NAME,
    ADAPTER_EXPORT_TYPE,
    EXPORT_NAME,
    EXPORT_TYPE,
    open_export,
    open_session,
)

from . import genai, parity
from .eval_graph import EVAL_OUTPUTS, export_evaluation_graph
from .int8 import quantize_int8
from .onnx_graph import INPUT_NAMES, OPSET, OUTPUT_NAMES, export_onnx, expose_as_inputs
from .ort_adapter import adapter_input_names
from .training_graph import GRADIENT_SUFFIX, LOSS_OUTPUT, TRAIN_INPUTS, export_training_graph, gradient_difference

MODEL_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "base": "base.onnx"}
TRAINING_FILE = "train.onnx"
EVAL_FILE = "eval.onnx"  # a training export's forward pass: logits and head features (export/eval_graph.py)
GRADIENT_BATCHES = 2  # held-out batches of 8 the training graph's gradients are checked on
ADAPTER_FILE = "adapter.onnx_adapter"
TOKENIZER_DIR = "tokenizer"


@dataclass(frozen=True)
class ExportRequest:
    adapter: Path
    out: Path
    model_folder: Path
    task: str = "seq-cls"
    quantization: str = "int8"
    release_key: Ed25519PublicKey | None = None  # None: only with accept_unsigned
    accept_unsigned: bool = False
    data: DataSpec = field(default_factory=DataSpec)
    max_length: int = 128
    int8_scheme: str = "blockwise"  # see export/int8.py
    parity_examples: int = 256
    limits: parity.ParityLimits = field(default_factory=parity.ParityLimits)
    valid_days: float = 30.0
    method: str | None = None  # of an unsigned adapter (which tensors devices train); None: all
    training_graph: bool = True  # train.onnx for devices that train the adapter
    generation_precision: str = "int8"  # a language model's shipped base: int8 or int4 (export/genai.py)


def check_adapter(request: ExportRequest, base_id: str) -> Release | None:
    """The adapter's verified release, or None for an unsigned adapter the caller accepts."""
    for name in ADAPTER_FILES:
        if not (request.adapter / name).is_file():
            raise ConfigError(f"{request.adapter} is not a PEFT adapter folder: {name} is missing")
    if not (request.adapter / "release.json").exists():
        if not request.accept_unsigned:
            raise ConfigError(f"{request.adapter} is unsigned (no release.json); pass --accept-unsigned to export it")
        return None
    if request.release_key is None:
        raise ConfigError(f"{request.adapter} is a signed release: give the operator's public key to check it")
    return verify_release(request.adapter, request.release_key, base_id=base_id)


def staged(out: Path) -> AbstractContextManager[Path]:
    """The export is built beside `out` and renamed to it only if it succeeds: a failed
    export leaves nothing behind, and an existing folder is never touched."""
    if out.exists():
        raise ConfigError(f"{out} already exists; choose another output folder or remove it")
    return staged_folder(out)


@contextmanager
def transformers_quiet() -> Iterator[None]:
    """transformers' and peft's warnings and progress bars off: loading the base for a new
    head prints a "LOAD REPORT" of the head's missing weights (replaced by the adapter's) and
    a bar, and reading a bundled LM's adapter a deprecation and a Hub-lookup warning, which
    would stand before a failed export's one error line."""
    from transformers.utils import logging as transformers_logging

    verbosity, bars = transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message="Could not find a config file")
            yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()


def export(request: ExportRequest, operator_key: Ed25519PrivateKey, progress=print) -> dict[str, Any]:
    """Build, check and sign the export folder; returns its manifest."""
    with transformers_quiet(), staged(request.out) as staging:
        task = get_task(request.task)
        package = BasePackage.from_pretrained(request.model_folder, task, request.quantization)
        release = check_adapter(request, package.base_id)
        if release is not None:
            labels = release.labels
        else:  # an unsigned adapter: classes as the data names them
            labels = list(load_rows(request.data)[1]) if task.peft_task_type == "SEQ_CLS" else []
        progress(f"[fedpeft] exporting {'release v%d' % release.version if release else 'UNSIGNED adapter'} "
                 f"for base {package.base_id[:12]}")
        method = (release.method if release else None) or request.method
        if task.name == "causal-lm" and genai.serves(request.model_folder):  # a generation model
            manifest = _build_language_model(request, package, method, release.version if release else 0, staging,
                                             progress)
        else:
            base = load_base(package, num_labels=len(labels), in_memory_quantization=False)
            model = PeftModel.from_pretrained(base.model, str(request.adapter)).eval()
            manifest = _build(request, model, base.tokenizer, labels, release.version if release else 0, staging,
                              progress, method, _int8_weights(package))
        manifest.update({
            "base_id": package.base_id, "quantization": request.quantization, "task": request.task,
            "release_id": release.release_id if release else None,
            "template_id": release.template_id if release else None,
            "adapter_version": release.version if release else None,
            **validity(request.valid_days),
        })
        files = [p.relative_to(staging).as_posix() for p in sorted(staging.rglob("*")) if p.is_file()]
        manifest["files"] = file_entries(staging, files)
        write_signed(staging, EXPORT_NAME, manifest, operator_key)
    return manifest


def export_training(package: BasePackage, template: AdapterTemplate, out: Path, operator_key: Ed25519PrivateKey,
                    rows: TextSplit, max_length: int, valid_days: float = 30.0) -> dict[str, Any]:
    """A training-only export of an adapter template: the training graph, for a classifier
    the evaluation graph (scores and round zero), the tokenizer and a signed export.json,
    for devices that train from whatever adapter a round sends (device clients and
    nodes); its gradients and logits are checked against PyTorch's on `rows`."""
    with staged_folder(out, replace=True) as staging:
        base = load_base(package, num_labels=len(template.labels), in_memory_quantization=False)
        model = template.attach(base.model).eval()
        names = adapter_input_names(model)
        training, gradient_max_abs = _training_graph(model, base.task, base.tokenizer, rows, template.method,
                                                     _int8_weights(package), staging / TRAINING_FILE, max_length)
        if not gradient_max_abs <= parity.ParityLimits().gradient_max_abs:
            raise IntegrityError(f"training graph gradients differ from PyTorch's by {gradient_max_abs:.3g}")
        checks, models = {"gradient_max_abs": gradient_max_abs}, {}
        if template.labels:  # a classifier's device also scores adapters and sends round zero's class sums
            sample = {k: torch.from_numpy(v) for k, v in _encode(base.tokenizer, rows.texts[:8], max_length).items()}
            checks["eval_logits_max_abs"] = export_evaluation_graph(
                model, base.task, names, sample, staging / EVAL_FILE, max_length, _int8_weights(package))
            if not checks["eval_logits_max_abs"] <= parity.ParityLimits().adapter_max_abs:
                raise IntegrityError(f"evaluation graph logits differ from PyTorch's by {checks['eval_logits_max_abs']:.3g}")
            models["eval"] = EVAL_FILE
        base.tokenizer.save_pretrained(str(staging / TOKENIZER_DIR))
        manifest = {
            "type": EXPORT_TYPE, "labels": template.labels, "max_length": max_length, "models": models,
            "outputs": list(EVAL_OUTPUTS) if models else [],
            "pad_token_id": base.tokenizer.pad_token_id, "tokenizer": TOKENIZER_DIR, "adapter_inputs": names,
            "training": training, "parity": checks, "base_id": package.base_id,
            "template_id": template.template_id, "quantization": package.manifest["quantization"],
            "task": base.task.name, **validity(valid_days),
        }
        files = [p.relative_to(staging).as_posix() for p in sorted(staging.rglob("*")) if p.is_file()]
        manifest["files"] = file_entries(staging, files)
        write_signed(staging, EXPORT_NAME, manifest, operator_key)
    return manifest


def export_adapter_only(request: ExportRequest, export_folder: Path, export_key: Ed25519PublicKey,
                        operator_key: Ed25519PrivateKey) -> dict[str, Any]:
    """Another adapter of the same template as an `.onnx_adapter` for an existing export,
    so devices that hold the base graph download only the adapter (a few hundred KB)."""
    base_export = open_export(export_folder, export_key)
    release = check_adapter(request, str(base_export["base_id"]))
    if release is not None and base_export.get("template_id") not in (None, release.template_id):
        raise ManifestError("wrong-template", f"adapter template {release.template_id[:12]} does not fit the export's "
                            f"{str(base_export['template_id'])[:12]}")
    with staged(request.out) as staging:
        arrays = load_file(str(request.adapter / "adapter_model.safetensors"))
        version = release.version if release else 0
        if "genai" in base_export:  # a language model: the generation runtime's layout
            _, layout = genai_section(base_export)
            genai.check_fits(request.adapter, arrays, layout, read_onnx_adapter(export_folder / base_export["adapter"]))
            write_genai_adapter(arrays, layout, staging / ADAPTER_FILE, version)
        else:
            write_onnx_adapter(arrays, base_export["adapter_inputs"], staging / ADAPTER_FILE, version)
        manifest = {
            "type": ADAPTER_EXPORT_TYPE, "base_id": base_export["base_id"], "template_id": base_export.get("template_id"),
            "release_id": release.release_id if release else None, "adapter_version": release.version if release else None,
            "adapter": ADAPTER_FILE, "files": file_entries(staging, [ADAPTER_FILE]), **validity(request.valid_days),
        }
        write_signed(staging, ADAPTER_EXPORT_NAME, manifest, operator_key)
    return manifest


def _int8_weights(package: BasePackage) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The base's int8 weights as the package carries them: name -> (values, per-row scales)."""
    if package.manifest["quantization"] != "int8":
        return {}
    return {name.removesuffix(".q"): (values, package.tensors[name.removesuffix(".q") + ".scale"])
            for name, values in package.tensors.items() if name.endswith(".q")}


def _build(request: ExportRequest, model: PeftModel, tokenizer, labels: list[str], adapter_version: int,
           out: Path, progress, method: str | None, int8_weights: dict[str, tuple[np.ndarray, np.ndarray]]
           ) -> dict[str, Any]:
    texts, truth = _held_out(request, labels)
    batches = [_encode(tokenizer, texts[i:i + 32], request.max_length) for i in range(0, len(texts), 32)]
    sample = {k: torch.from_numpy(v) for k, v in batches[0].items()}
    max_positions = int(getattr(model.config, "max_position_embeddings", request.max_length))

    progress("[fedpeft] export 1/6: base graph with adapter inputs + .onnx_adapter")
    names = adapter_input_names(model)
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(model, sample, Path(tmp) / "unmerged.onnx", max_positions)
        expose_as_inputs(Path(tmp) / "unmerged.onnx", names.values(), out / MODEL_FILES["base"])
    write_onnx_adapter(get_adapter_arrays(model), names, out / ADAPTER_FILE, adapter_version)
    with torch.no_grad():
        reference = [model(**{k: torch.from_numpy(v) for k, v in b.items()}).logits.numpy() for b in batches]

    training = None
    if labels and request.training_graph:  # classification: devices train the adapter on labelled rows
        progress("[fedpeft] export 2/6: training graph (loss and adapter gradients)")
        training, gradient_max_abs = _training_graph(model, get_task(request.task), tokenizer, TextSplit(texts, truth),
                                                     method, int8_weights, out / TRAINING_FILE, request.max_length)

    progress("[fedpeft] export 3/6: merged fp32 model")
    merged = model.merge_and_unload()
    export_onnx(merged, sample, out / MODEL_FILES["fp32"], max_positions)

    progress(f"[fedpeft] export 4/6: int8 quantization ({request.int8_scheme})")
    quantize_int8(out / MODEL_FILES["fp32"], out / MODEL_FILES["int8"], request.int8_scheme)

    progress("[fedpeft] export 5/6: parity on held-out inputs")
    sessions = {k: open_session(out / f) for k, f in MODEL_FILES.items()}
    adapter = ort.LoraAdapter()
    adapter.Load(str(out / ADAPTER_FILE))
    with_adapter = ort.RunOptions()
    with_adapter.add_active_adapter(adapter)
    result = parity.measure(
        batches, truth,
        torch_logits=reference,
        fp32=lambda b: sessions["fp32"].run(None, b)[0],
        int8=lambda b: sessions["int8"].run(None, b)[0],
        adapter=lambda b: sessions["base"].run(None, b, with_adapter)[0],
    )
    if training is not None:
        result = replace(result, gradient_max_abs=gradient_max_abs)
    result.check(request.limits)

    progress("[fedpeft] export 6/6: ONNX Runtime Mobile (.ort) conversion, tokenizer")
    ort_files = _convert_to_ort(out)
    tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
    return {
        "type": EXPORT_TYPE, "labels": labels, "inputs": list(INPUT_NAMES), "outputs": list(OUTPUT_NAMES),
        "opset": OPSET, "max_length": request.max_length, "int8_scheme": request.int8_scheme, "pad_token_id": tokenizer.pad_token_id,
        "models": {**MODEL_FILES, "ort": ort_files}, "adapter": ADAPTER_FILE,
        "adapter_inputs": names, "tokenizer": TOKENIZER_DIR, "parity": result.to_dict(), "training": training,
    }


def _build_language_model(request: ExportRequest, package: BasePackage, method: str | None, adapter_version: int,
                          out: Path, progress) -> dict[str, Any]:
    """The generation runtime's model folder (int8 or int4 base, LoRA as inputs), the adapter as an
    `.onnx_adapter` in its layout, generation parity against PyTorch, and the training graph
    devices personalize with. The runtime is built from the base's own weights (the int8
    transport package only identifies the base), so "unquantized" parity compares like with
    like; the training graph holds the package's int8 weights, as PyTorch clients train on."""
    if request.generation_precision not in GENERATION_PRECISIONS:
        raise ConfigError(f"generation precision {request.generation_precision!r}: choose one of {GENERATION_PRECISIONS}")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(request.model_folder, dtype=torch.float32),
                                      str(request.adapter)).eval()
    held_out = _held_out(request, [])[0]
    tokenizer = AutoTokenizer.from_pretrained(request.model_folder)
    layout, names = genai.adapter_layout(model), adapter_input_names(model)
    arrays = get_adapter_arrays(model)
    runtime_arrays = to_genai(arrays, layout)
    with tempfile.TemporaryDirectory(prefix="fedpeft-genai-") as tmp:
        work, log = Path(tmp), request.out.parent / f"{request.out.name}.builder.log"  # kept if the export fails
        precision = request.generation_precision
        progress(f"[fedpeft] export 1/3: generation model, {precision} base with LoRA inputs (builder output: {log})")
        genai.build(request.model_folder, request.adapter, layout, runtime_arrays, out / genai.GENAI_DIR, precision,
                    work, log)
        write_genai_adapter(arrays, layout, out / ADAPTER_FILE, adapter_version)
        progress("[fedpeft] export 2/3: unquantized generation model for the parity check")
        genai.build(request.model_folder, request.adapter, layout, runtime_arrays, work / "fp32", "fp32", work, log)
        progress(f"[fedpeft] export 3/3: parity, greedy continuations of {genai.PARITY_PROMPTS} held-out prompts")
        runtimes = {name: LanguageModel(folder) for name, folder in
                    (("fp32", work / "fp32"), (precision, out / genai.GENAI_DIR))}
        for runtime in runtimes.values():
            runtime.load_adapter(out / ADAPTER_FILE, "global")
        result = genai.measure(model, tokenizer, runtimes["fp32"], runtimes[precision], precision, "global",
                               genai.prompts_from(held_out))
        del runtimes
        log.unlink(missing_ok=True)
    training = None
    if request.training_graph:
        progress("[fedpeft] export: training graph (loss and adapter gradients, int8 base)")
        del model
        base = load_base(package, 0, in_memory_quantization=False)
        training, gradient_max_abs = _training_graph(
            PeftModel.from_pretrained(base.model, str(request.adapter)).eval(), base.task, base.tokenizer,
            TextSplit(held_out, [0] * len(held_out)), method, _int8_weights(package), out / TRAINING_FILE, request.max_length)
        result = replace(result, gradient_max_abs=gradient_max_abs)
    result.check(request.limits)
    return {
        "type": EXPORT_TYPE, "labels": [], "max_length": request.max_length,
        "pad_token_id": tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id,
        "models": {}, "genai": {"folder": genai.GENAI_DIR, "precision": precision,
                                "adapter_layout": {key: list(entry) for key, entry in layout.items()}},
        "adapter": ADAPTER_FILE, "adapter_inputs": names, "tokenizer": genai.GENAI_DIR,
        "parity": result.to_dict(), "training": training,
    }


def _training_graph(model: PeftModel, task: Task, tokenizer, rows: TextSplit, method: str | None, int8_weights,
                    path: Path, max_length: int) -> tuple[dict[str, Any], float]:
    """Write the training graph; its manifest entry and its gradients' largest difference from PyTorch's.

    `model` holds the base's weights as the package decodes them (`load_base(...,
    in_memory_quantization=False)`), so the int8 graph is checked against the same values;
    the batches are built as PyTorch clients build theirs (`task.batch`: a causal LM's
    labels are its input ids), from the first rows of `rows` (classifiers: labelled).
    """
    names = adapter_input_names(model)
    trains = get_method(method).trains if method else (lambda name: True)
    trainable = [key for key in names if trains(key)]
    cuts = [slice(i, i + 8) for i in range(0, 8 * (GRADIENT_BATCHES + 1), 8) if len(rows.texts[i:i + 8]) > 1]
    batches = [{name: value.numpy() for name, value in
                task.batch(tokenizer, rows.texts[cut], rows.labels[cut], max_length).items() if name in TRAIN_INPUTS}
               for cut in cuts]
    if not batches:
        raise ConfigError("the training graph needs at least 2 rows to export and check it on")
    sample = {k: torch.from_numpy(v) for k, v in batches[0].items()}
    trained = export_training_graph(model, names, trainable, sample, path, max_length, int8_weights)
    session = open_session(path)
    held_out = batches[1:] or batches  # with 9 rows or fewer, the export's own batch is all there is
    difference = gradient_difference(model, names, trained, lambda feed: session.run(None, feed), held_out)
    entry = {"graph": TRAINING_FILE, "task": task.name, "inputs": list(TRAIN_INPUTS), "loss": LOSS_OUTPUT,
             "trained": trained, "gradients": [name + GRADIENT_SUFFIX for name in trained], "method": method,
             "base_weights": "int8" if int8_weights else "float32"}
    return entry, difference


def _held_out(request: ExportRequest, labels: list[str]) -> tuple[list[str], list[int] | None]:
    """Test-split texts of every client of the data spec, never seen in training."""
    spec = replace(request.data, labels=tuple(labels))
    texts, truth = [], []
    for partition in range(num_partitions(spec)):
        test = client_data(spec, partition).test
        texts += test.texts
        truth += test.labels
    order = np.random.default_rng(0).permutation(len(texts))[:request.parity_examples]
    return [texts[i] for i in order], ([truth[i] for i in order] if labels else None)


def _encode(tokenizer, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {name: encoded[name].astype(np.int64) for name in INPUT_NAMES}


def _convert_to_ort(folder: Path) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        for name in (MODEL_FILES["int8"], MODEL_FILES["base"]):
            shutil.copy(folder / name, Path(tmp) / name)
        proc = subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", tmp,
                               "--output_dir", str(folder), "--optimization_style", "Fixed"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ConfigError(f"ONNX Runtime Mobile conversion failed: {proc.stderr[-2000:]}")
    return {"int8": MODEL_FILES["int8"].replace(".onnx", ".ort"), "base": MODEL_FILES["base"].replace(".onnx", ".ort")}
