"""Training on a device (ONNX Runtime + numpy) against PyTorch eager, side by side, 2 threads.

1. Step time (forward, backward, AdamW) on the same batch and adapter, batch 1 and 8 at
   64 and 128 tokens, interleaved in one process: the ONNX trainer (training graph with
   the int8 base inside, numpy AdamW), PyTorch eager with the torchao int8 base (what
   simulated clients run) and PyTorch eager fp32.
2. Peak memory of each: one child process each, a few steps at batch 8 x 128 (the ONNX
   child never imports torch).
3. Artifact sizes: the training graph, the inference models, an .onnx_adapter.
4. Accuracy of personalization on every default client's own rows (the personalization
   epochs of the default config): the device trainer vs PyTorch, from the same adapter.

    .venv/bin/python bench/device_training.py [--adapter runs/default/adapter --key keys/operator.pub]
                                              [--export EXPORT] [--repeats 10]

Without --export it first exports the adapter (export_latency.py's `build_export`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from fedpeft.core.trust.json_reader import parse_json_object

THREADS = 2
SHAPES = [(1, 64), (8, 64), (1, 128), (8, 128)]
LONG_TEXT = ("the match went to extra time and the striker scored a late goal while the fans sang in the rain "
             "and the coach argued with the referee about the penalty that decided the final ") * 4


def rows(batch: int) -> tuple[list[str], list[int]]:
    """`batch` texts longer than 128 tokens: truncation gives exactly the asked length."""
    return [f"{i} {LONG_TEXT}" for i in range(batch)], [i % 4 for i in range(batch)]


def onnx_stepper(export: Path, key):
    from fedpeft.device.trainer import AdamW, DeviceTrainer

    trainer = DeviceTrainer(export, key, threads=THREADS)
    optimizer = AdamW(1e-2, 0.01)

    def step(texts, labels, length, params):
        _, gradients = trainer.loss_and_gradients(params, texts, labels, length)
        optimizer.step(params, gradients)
    return trainer, step


def torch_stepper(adapter: Path, in_memory_quantization: bool):
    import torch
    from peft import PeftModel

    from fedpeft.core.adapters.methods import get_method
    from fedpeft.core.base.model import load_base
    from fedpeft.core.base.package import BasePackage
    from fedpeft.core.base.tasks import get_task
    from fedpeft.core.config import load_config
    from fedpeft.core.trust.release import Release

    torch.set_num_threads(THREADS)
    release = Release("", parse_json_object((adapter / "release.json").read_text(), "release.json"))
    config = load_config(None)
    package = BasePackage.from_pretrained(config.model.folder(), get_task("seq-cls"), config.model.quantization)
    base = load_base(package, len(release.labels), in_memory_quantization=in_memory_quantization)
    model = PeftModel.from_pretrained(base.model, str(adapter), is_trainable=True).eval()
    get_method(release.method or "lora").freeze(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    def step(texts, labels, length, _params=None):
        batch = base.tokenizer(texts, padding=True, truncation=True, max_length=length, return_tensors="pt")
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=torch.tensor(labels)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return base, model, step


def median_ms(step, texts, labels, length, params, repeats: int) -> float:
    step(texts, labels, length, params)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(texts, labels, length, params)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def memory_child(kind: str, export: Path, adapter: Path, key_path: Path) -> None:
    """Peak resident memory (MB) of a process that loads one trainer and takes 3 steps at 8 x 128."""
    texts, labels = rows(8)
    if kind == "onnx":
        from safetensors.numpy import load_file

        from fedpeft.core.trust.keys import load_public_key

        _, step = onnx_stepper(export, load_public_key(key_path))
        params = dict(load_file(str(adapter / "adapter_model.safetensors")))
    else:
        _, _, step = torch_stepper(adapter, in_memory_quantization=kind == "torch-int8")
        params = None
    for _ in range(3):
        step(texts, labels, 128, params)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec.
    peak_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))
    print(json.dumps({"peak_mb": round(peak_kb / 1024), "torch": "torch" in sys.modules}))


def personalization_accuracy(export: Path, key, adapter: Path, base, model) -> dict[str, float]:
    """Mean test accuracy over the default clients after personalizing on each one's rows."""
    from safetensors.numpy import load_file

    from fedpeft.core.adapters.state import set_adapter_arrays
    from fedpeft.core.config import load_config
    from fedpeft.core.training.data import client_data, load_rows, num_partitions
    from fedpeft.core.training.loop import evaluate, train
    from fedpeft.device.trainer import DeviceTrainer

    config = load_config(None)
    spec = config.data_spec(load_rows(config.data_spec())[1])
    settings = replace(config.train_settings(), epochs=config.personalization.epochs)
    trainer = DeviceTrainer(export, key, threads=THREADS)
    released = dict(load_file(str(adapter / "adapter_model.safetensors")))
    scores = {"release (ONNX)": [], "device-personalized (ONNX)": [],
              "PyTorch-personalized (dropout, as the federation)": [], "PyTorch-personalized (no dropout)": []}
    weights = []
    for partition in range(num_partitions(spec)):
        data = client_data(spec, partition)
        client_settings = replace(settings, seed=config.run.seed + partition)
        weights.append(len(data.test))
        scores["release (ONNX)"].append(trainer.evaluate(released, data.test, settings).accuracy)
        personal, _ = trainer.train(released, data.train, client_settings)
        scores["device-personalized (ONNX)"].append(trainer.evaluate(personal, data.test, settings).accuracy)
        for arm, dropout in (("PyTorch-personalized (dropout, as the federation)", True),
                             ("PyTorch-personalized (no dropout)", False)):
            set_adapter_arrays(model, released)  # the timing steps above moved it
            train(model, base.task, base.tokenizer, data.train, client_settings, dropout=dropout)
            scores[arm].append(evaluate(model, base.task, base.tokenizer, data.test, client_settings).accuracy)
        print(f"  client {partition}: " + ", ".join(f"{v[-1]:.3f}" for v in scores.values()), flush=True)
    return {arm: float(np.average(values, weights=weights)) for arm, values in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", default="runs/default/adapter")
    parser.add_argument("--key", default="keys/operator.pub", help="public key that signed the adapter's release")
    parser.add_argument("--export", help="an existing export folder of that adapter (else one is made)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--memory", help=argparse.SUPPRESS)  # child mode: onnx | torch-int8 | torch-fp32
    args = parser.parse_args()
    if args.memory:
        memory_child(args.memory, Path(args.export), Path(args.adapter), Path(args.key))
        return

    from export_latency import build_export

    from fedpeft.core.trust.keys import load_public_key

    work = Path(tempfile.mkdtemp(prefix="fedpeft-bench-"))
    try:
        if args.export:
            export, key_path, adapter = Path(args.export), Path(args.key), Path(args.adapter)
        else:
            export, key_path, adapter = build_export(work, Path(args.adapter), Path(args.key))
        key = load_public_key(key_path)
        trainer, onnx_step = onnx_stepper(export, key)
        from safetensors.numpy import load_file

        params = dict(load_file(str(adapter / "adapter_model.safetensors")))
        base, int8_model, int8_step = torch_stepper(adapter, in_memory_quantization=True)
        _, _, fp32_step = torch_stepper(adapter, in_memory_quantization=False)

        print(f"\nTraining step (forward + backward + AdamW), median of {args.repeats}, {THREADS} threads:")
        print("| batch x tokens | ONNX trainer (int8 base) ms | PyTorch eager int8 ms | PyTorch eager fp32 ms "
              "| ONNX / eager int8 | ONNX / eager fp32 |")
        print("|---|---|---|---|---|---|")
        for batch, length in SHAPES:
            texts, labels = rows(batch)
            onnx_ms = median_ms(onnx_step, texts, labels, length, params, args.repeats)
            int8_ms = median_ms(int8_step, texts, labels, length, None, args.repeats)
            fp32_ms = median_ms(fp32_step, texts, labels, length, None, args.repeats)
            print(f"| {batch} x {length} | {onnx_ms:.0f} | {int8_ms:.0f} | {fp32_ms:.0f} | {onnx_ms / int8_ms:.2f} "
                  f"| {onnx_ms / fp32_ms:.2f} |", flush=True)

        print("\nPeak memory, one process each (3 steps at 8 x 128):")
        for kind in ("onnx", "torch-int8", "torch-fp32"):
            proc = subprocess.run([sys.executable, __file__, "--memory", kind, "--export", str(export),
                                   "--adapter", str(adapter), "--key", str(key_path)], capture_output=True, text=True)
            result = (parse_json_object(proc.stdout.strip().splitlines()[-1], f"the {kind} child's report")
                      if proc.returncode == 0 else proc.stderr[-500:])
            print(f"  {kind}: {result}")

        manifest = trainer.manifest
        sizes = {"training graph (int8 base)": manifest["training"]["graph"], **manifest["models"],
                 ".onnx_adapter": manifest["adapter"]}
        print("\nArtifacts: " + ", ".join(f"{name} {(export / file).stat().st_size / 1e6:.2f} MB"
                                         for name, file in sizes.items() if isinstance(file, str)))

        print("\nPersonalization on each default client's rows (accuracy on its test rows):")
        for arm, value in personalization_accuracy(export, key, adapter, base, int8_model).items():
            print(f"  {arm}: {value:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
