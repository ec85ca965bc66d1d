"""Device-side costs of an export, side by side in one process on 2 threads.

Latency at batch 1 for 16 and 128 tokens: PyTorch eager (the fp32 model with the
adapter merged) vs ONNX Runtime fp32 vs int8 (the exported blockwise scheme, and the
per-tensor one beside it) vs the base graph with an .onnx_adapter applied; file sizes; and the cost of switching adapters: loading an .onnx_adapter onto
a running session vs loading a second merged model.

    .venv/bin/python bench/export_latency.py [--adapter runs/default/adapter --key keys/operator.pub] [--repeats 50]

It first exports the bundled MiniLM with the given released adapter (after
`fedpeft simulate`, the default paths), or else with a seeded untrained template
adapter, whose near-random predictions make int8 parity meaningless (limits relaxed).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from peft import PeftModel
from safetensors.numpy import load_file

import fedpeft  # noqa: F401
from fedpeft.core.adapters.spec import TemplateSpec
from fedpeft.core.adapters.template import create_template
from fedpeft.core.base.cache import NodeCache
from fedpeft.core.base.model import load_base
from fedpeft.core.base.package import BasePackage
from fedpeft.core.base.tasks import get_task
from fedpeft.core.config import load_config
from fedpeft.core.training.synthetic_data import LABELS
from fedpeft.core.trust.keys import load_private_key, load_public_key, new_key_pair
from fedpeft.core.trust.release import sign_release
from fedpeft.device.onnx_adapter import write_onnx_adapter
from fedpeft.device.predict import open_export, open_session
from fedpeft.export.exporter import ExportRequest, export
from fedpeft.export.int8 import quantize_int8
from fedpeft.export.parity import ParityLimits

THREADS = 2


def build_export(work: Path, adapter: Path, release_key: Path) -> tuple[Path, Path, Path]:
    """Export the bundled MiniLM with `adapter`, or with the default template when absent."""
    config = load_config(None)
    new_key_pair(work / "operator.key")
    key = load_private_key(work / "operator.key")
    limits = ParityLimits()
    if adapter.is_dir() and release_key.is_file():
        public = load_public_key(release_key)
    else:
        print(f"no released adapter at {adapter}: exporting an untrained template (int8 parity not checked)")
        task = get_task("seq-cls")
        package = BasePackage.from_pretrained(config.model.folder(), task, config.model.quantization)
        cache = NodeCache(work / "cache")
        cache.put(package, package.base_id)
        base = load_base(cache.load(package.base_id), len(LABELS), in_memory_quantization=False)
        template = create_template(base.model, task, TemplateSpec(method="lora"), list(LABELS))
        adapter = work / "adapter"
        template.attach(base.model).save_pretrained(str(adapter))
        sign_release(adapter, key, version=1, base_id=package.base_id, template_id=template.template_id,
                     labels=list(LABELS), parent=None, metrics={}, valid_days=1)
        public, limits = key.public_key(), ParityLimits(int8_min_agreement=0, int8_max_accuracy_drop=1)
    manifest = export(ExportRequest(adapter, work / "export", config.model.folder(), release_key=public,
                                    data=config.data_spec(), limits=limits), key)
    print("parity:", {k: round(v, 6) if isinstance(v, float) else v for k, v in manifest["parity"].items()})
    return work / "export", work / "operator.pub", adapter


def median_ms(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adapter", default="runs/default/adapter")
    parser.add_argument("--key", default="keys/operator.pub", help="public key that signed the adapter's release")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    work = Path(tempfile.mkdtemp(prefix="fedpeft-bench-"))
    try:
        folder, key, adapter_dir = build_export(work, Path(args.adapter), Path(args.key))
        manifest = open_export(folder, load_public_key(key))
        models = manifest["models"]
        config = load_config(None)
        package = BasePackage.from_pretrained(config.model.folder(), get_task("seq-cls"), manifest["quantization"])
        cache = NodeCache(work / "torch-cache")
        cache.put(package, package.base_id)
        base = load_base(cache.load(package.base_id), len(manifest["labels"]), in_memory_quantization=False)
        torch_model = PeftModel.from_pretrained(base.model, str(adapter_dir)).merge_and_unload().eval()

        fp32, int8, base_graph = open_session(folder / models["fp32"], THREADS), open_session(folder / models["int8"], THREADS), open_session(folder / models["base"], THREADS)
        quantize_int8(folder / models["fp32"], work / "per-tensor.onnx", "per-tensor")
        per_tensor = open_session(work / "per-tensor.onnx", THREADS)
        adapter = ort.LoraAdapter()
        adapter.Load(str(folder / manifest["adapter"]))
        with_adapter = ort.RunOptions()
        with_adapter.add_active_adapter(adapter)

        print(f"batch 1, {THREADS} threads, median of {args.repeats} (ms)")
        print(f"{'tokens':>6} {'torch eager':>12} {'ORT fp32':>9} {'int8 blockwise':>15} {'int8 per-tensor':>16} "
              f"{'ORT base+adapter':>17}   speed-ups over torch: fp32 / blockwise / per-tensor")
        rng = np.random.default_rng(0)
        for tokens in (16, 128):
            ids = rng.integers(1000, 20000, size=(1, tokens)).astype(np.int64)
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            torch_feed = {k: torch.from_numpy(v) for k, v in feed.items()}

            def eager() -> None:
                with torch.no_grad():
                    torch_model(**torch_feed)

            t = median_ms(eager, args.repeats)
            f = median_ms(lambda: fp32.run(None, feed), args.repeats)
            q = median_ms(lambda: int8.run(None, feed), args.repeats)
            pt = median_ms(lambda: per_tensor.run(None, feed), args.repeats)
            b = median_ms(lambda: base_graph.run(None, feed, with_adapter), args.repeats)
            print(f"{tokens:>6} {t:12.2f} {f:9.2f} {q:15.2f} {pt:16.2f} {b:17.2f}   "
                  f"{t / f:.2f}x / {t / q:.2f}x / {t / pt:.2f}x")

        print("\nfile sizes (MB):", ", ".join(f"{name} {(folder / path).stat().st_size / 1e6:.1f}" for name, path in
                                          [("fp32", models["fp32"]), ("int8 blockwise", models["int8"]),
                                           ("int8 per-tensor", "../per-tensor.onnx"), ("base", models["base"]),
                                           ("int8 .ort", models["ort"]["int8"]), (".onnx_adapter", manifest["adapter"])]))

        # Switching adapters: a second adapter arrives.
        second = work / "second.onnx_adapter"
        arrays = {k: v + np.float32(0.01) for k, v in load_file(str(adapter_dir / "adapter_model.safetensors")).items()}
        write_onnx_adapter(arrays, manifest["adapter_inputs"], second, 2)
        second_model = work / "second.onnx"
        shutil.copy(folder / models["fp32"], second_model)
        ids = rng.integers(1000, 20000, size=(1, 16)).astype(np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}

        def swap_adapter() -> None:
            loaded = ort.LoraAdapter()
            loaded.Load(str(second))
            options = ort.RunOptions()
            options.add_active_adapter(loaded)
            base_graph.run(None, feed, options)

        def load_merged() -> None:
            open_session(second_model, THREADS).run(None, feed)

        swap = median_ms(swap_adapter, 10)
        merged = median_ms(load_merged, 5)
        print(f"\nswitch adapter and run once: .onnx_adapter {swap:.1f} ms ({second.stat().st_size / 1e3:.0f} KB) vs "
              f"second merged model {merged:.1f} ms ({second_model.stat().st_size / 1e6:.0f} MB): {merged / swap:.0f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
