"""Training a causal LM's adapter on a device (ONNX Runtime + numpy) against PyTorch eager, side by side.

The bundled SmolLM2-135M (`--model smollm2`; or any causal LM folder) with an int8 base and
the FFA-LoRA template of simulations/next-word.toml (rank 8, q_proj and v_proj), batches of
8 rows x 64 tokens (the synthetic next-word corpus's messages joined, truncated to 64), 2 threads
(`--threads`: a machine where another process holds a core slows torch's OpenMP steps far
more than ONNX Runtime's, so the load average is recorded and 1 thread is the steadier
comparison there):

1. The training-only export of the template (`export_training`: the LM training graph with
   the int8 base inside, signed), its time and the graph's size.
2. Step time (forward, backward, AdamW) on the same batches: the device trainer (training
   graph, numpy AdamW) against PyTorch eager with the torchao int8 base (what simulated
   clients run). Blocks of steps alternate in one process: ONNX Runtime's and torch's
   thread pools spin after work, so single steps interleaved would slow each other.
3. The graph's loss and gradients against autograd (the base holding the int8 values)
   on the bench batches: the largest absolute difference.
4. Peak resident memory (VmHWM) of a device's training: a child process in which torch
   cannot be imported loads the trainer and takes 3 steps at 8 x 64.
5. With `--users N`: next-word top-3 on each of N synthetic users' test rows after
   personalizing from the template on the user's training rows, on the device and with
   PyTorch (same rows, batches, epochs and learning rate), both scored by core's
   next-word evaluation on the same PyTorch model.

Targets (issue 26): the device step no slower than eager; a device's training peak under
1.5 GB; device personalization within 1 point of PyTorch's top-3.

    .venv/bin/python bench/lm_device_training.py [--model smollm2] [--threads 2] [--repeats 5] [--users 0]
                                                 [--work DIR] [--out FILE.json]

`--work DIR` keeps the export (and its key) there and reuses it on the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BATCH, TOKENS = 8, 64
PERSONALIZATION = {"epochs": 2, "batch_size": 8, "learning_rate": 2e-2, "max_length": 48}  # next-word.toml's


def long_rows(count: int) -> list[str]:
    """`count` rows of the synthetic corpus's messages, each a user's messages joined until
    it is longer than TOKENS tokens (truncation then gives exactly TOKENS)."""
    from fedpeft.core.training import synthetic_next_word

    messages = [row["text"] for row in synthetic_next_word.generate(8, 0)]
    # 12 messages: well over 64 tokens; windows 5 messages apart, round the corpus as often as needed
    return [" ".join(messages[(5 * row + i) % len(messages)] for i in range(12)) for row in range(count)]


def memory_child(work: Path, threads: int) -> None:
    """Peak resident memory of a torch-free process that loads the trainer and takes 3 steps."""
    for name in ("torch", "transformers", "peft"):
        sys.modules[name] = None  # type: ignore[assignment]
    from safetensors.numpy import load_file

    from fedpeft.core.trust.keys import load_public_key
    from fedpeft.device.trainer import AdamW, DeviceTrainer

    trainer = DeviceTrainer(work / "export", load_public_key(work / "operator.pub"), threads=threads)
    params = dict(load_file(str(work / "start.safetensors")))
    optimizer = AdamW(1e-3, 0.01)
    rows = long_rows(3 * BATCH)
    for step in range(3):
        _, gradients = trainer.loss_and_gradients(params, rows[step * BATCH:(step + 1) * BATCH], None, TOKENS)
        optimizer.step(params, gradients)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec.
    peak_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))
    print(json.dumps({"peak_mb": round(peak_kb / 1024), "torch_imported": sys.modules.get("torch") is not None}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="smollm2 or a causal LM folder")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    parser.add_argument("--repeats", type=int, default=5, help="steps per arm in each of 2 blocks")
    parser.add_argument("--users", type=int, default=0, help="synthetic users to compare personalization on")
    parser.add_argument("--work", type=Path, help="keep (and reuse) the export here")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--memory", type=Path, help=argparse.SUPPRESS)  # child mode: the work folder
    args = parser.parse_args()
    if args.memory:
        memory_child(args.memory, args.threads)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="fedpeft-lm-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    figures = run(args, work)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1))


def run(args: argparse.Namespace, work: Path) -> dict:
    import torch
    from safetensors.numpy import save_file

    import fedpeft  # noqa: F401  (quiets torchao's optional-kernel warnings)
    from fedpeft.core.adapters.spec import TemplateSpec
    from fedpeft.core.adapters.state import set_adapter_arrays
    from fedpeft.core.adapters.template import create_template
    from fedpeft.core.base.model import load_base
    from fedpeft.core.base.package import BasePackage
    from fedpeft.core.base.tasks import get_task
    from fedpeft.core.config import ModelSection
    from fedpeft.core.training.data import TextSplit
    from fedpeft.core.trust.keys import load_private_key, load_public_key, new_key_pair
    from fedpeft.device.predict import open_export
    from fedpeft.device.trainer import AdamW, DeviceTrainer
    from fedpeft.export.exporter import TRAINING_FILE, export_training
    from fedpeft.export.ort_adapter import adapter_input_names
    from fedpeft.export.training_graph import gradient_difference

    torch.set_num_threads(args.threads)
    task = get_task("causal-lm")
    package = BasePackage.from_pretrained(ModelSection(path=args.model, task=task.name).folder(), task, "int8")
    base = load_base(package, 0, in_memory_quantization=False)  # the int8 values as float: the graph's base
    template = create_template(base.model, task, TemplateSpec(method="ffa-lora", rank=8), [])
    rng = np.random.default_rng(0)  # a trained-looking adapter: B away from its zero start
    start = {n: (v + (rng.normal(scale=0.02, size=v.shape) if n in template.trainable_names else 0)).astype(np.float32)
             for n, v in template.init.items()}
    save_file(start, str(work / "start.safetensors"))
    rows = long_rows(2 * args.repeats * BATCH + 3 * BATCH)
    figures: dict = {"model": args.model, "base_id": package.base_id[:12], "batch": [BATCH, TOKENS],
                     "threads": args.threads, "load_average_start": round(os.getloadavg()[0], 2)}

    if not (work / "operator.key").is_file():
        new_key_pair(work / "operator.key")
    key = load_private_key(work / "operator.key")
    export = work / "export"
    try:
        reusable = open_export(export, load_public_key(work / "operator.pub"))["template_id"] == template.template_id
    except Exception:  # noqa: BLE001  (no export there yet, or another one: make it)
        reusable = False
    if not reusable:
        began = time.perf_counter()
        export_training(package, template, export, key, TextSplit(rows[:3 * BATCH], [0] * 3 * BATCH), TOKENS)
        figures["export_s"] = round(time.perf_counter() - began, 1)
    trainer = DeviceTrainer(export, load_public_key(work / "operator.pub"), threads=args.threads)
    figures["graph_mb"] = round((export / TRAINING_FILE).stat().st_size / 1e6, 1)
    figures["package_mb"] = round(package.download_bytes / 1e6, 1)
    figures["export_gradient_max_abs"] = trainer.manifest["parity"]["gradient_max_abs"]
    print(f"training graph {figures['graph_mb']} MB (int8 package {figures['package_mb']} MB)"
          + (f", exported in {figures['export_s']} s" if "export_s" in figures else ", reused"), flush=True)

    # 3. gradients against autograd on this bench's batches
    model = template.attach(base.model).eval()
    set_adapter_arrays(model, start)
    batches = [{k: v.numpy() for k, v in task.batch(base.tokenizer, rows[i:i + BATCH], [], TOKENS).items()}
               for i in range(0, 2 * BATCH, BATCH)]
    assert all(b["input_ids"].shape == (BATCH, TOKENS) for b in batches)
    figures["gradient_max_abs"] = gradient_difference(model, adapter_input_names(model),
                                                      trainer.manifest["training"]["trained"],
                                                      lambda feed: trainer.session.run(None, feed), batches)
    print(f"loss and gradients vs autograd at {BATCH} x {TOKENS}: max abs difference {figures['gradient_max_abs']:.2e}",
          flush=True)
    model.unload()
    del model, base

    # 2. step time, blocks alternating
    eager = load_base(package, 0)  # torchao int8, as simulated PyTorch clients train
    eager_model = template.attach(eager.model).eval()
    set_adapter_arrays(eager_model, start)
    torch_optimizer = torch.optim.AdamW([p for p in eager_model.parameters() if p.requires_grad], lr=1e-3)
    params = {k: v.copy() for k, v in start.items()}
    device_optimizer = AdamW(1e-3, 0.01)

    def device_step(texts: list[str]) -> None:
        _, gradients = trainer.loss_and_gradients(params, texts, None, TOKENS)
        device_optimizer.step(params, gradients)

    def eager_step(texts: list[str]) -> None:
        batch = task.batch(eager.tokenizer, texts, [], TOKENS)
        eager_model(**batch).loss.backward()
        torch_optimizer.step()
        torch_optimizer.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {"device": [], "eager": []}
    steps = {"device": device_step, "eager": eager_step}
    for name, step in steps.items():  # warm-up
        step(rows[:BATCH])
    for block in range(2):
        for name, step in steps.items():
            time.sleep(0.5)  # the other arm's threads stop spinning
            for i in range(args.repeats):
                texts = rows[(block * args.repeats + i) * BATCH:(block * args.repeats + i + 1) * BATCH]
                began = time.perf_counter()
                step(texts)
                times[name].append(time.perf_counter() - began)
    figures["device_step_s"] = round(statistics.median(times["device"]), 3)
    figures["eager_int8_step_s"] = round(statistics.median(times["eager"]), 3)
    figures["device_over_eager"] = round(figures["device_step_s"] / figures["eager_int8_step_s"], 2)
    print(f"step at {BATCH} x {TOKENS}, median of {2 * args.repeats}: device {figures['device_step_s']} s, "
          f"PyTorch eager int8 {figures['eager_int8_step_s']} s: device / eager {figures['device_over_eager']} "
          f"(target <= 1)", flush=True)

    # 4. peak memory of a torch-free device process
    proc = subprocess.run([sys.executable, __file__, "--memory", str(work), "--threads", str(args.threads)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"memory child failed: {proc.stderr[-2000:]}")
    from fedpeft.core.trust.json_reader import parse_json_object  # read bounded, as every JSON fedpeft reads
    child = parse_json_object(proc.stdout.strip().splitlines()[-1], "child report")
    figures["device_peak_mb"] = child["peak_mb"]
    print(f"device training peak resident memory: {child['peak_mb']} MB (target < 1500; torch imported: "
          f"{child['torch_imported']})", flush=True)

    if args.users:
        figures["personalization"] = personalization(args.users, trainer, eager, eager_model, template, task)
    figures["load_average_end"] = round(os.getloadavg()[0], 2)
    print(f"load average (1 min) {figures['load_average_start']} at the start, {figures['load_average_end']} at the end")
    return figures


def personalization(users: int, trainer, eager, model, template, task) -> dict:
    """Next-word top-3 per user after personalizing on its rows on the device and with PyTorch."""
    from fedpeft.core.adapters.state import get_adapter_arrays, set_adapter_arrays
    from fedpeft.core.training.data import DataSpec, client_data
    from fedpeft.core.training.loop import evaluate_next_word, train
    from fedpeft.core.training.settings import TrainSettings

    spec = DataSpec(task="causal-lm", num_clients=8)
    arms: dict[str, list[float]] = {"template": [], "device": [], "pytorch": []}
    weights = []
    for user in range(users):
        data = client_data(spec, user)
        settings = TrainSettings(seed=user, **PERSONALIZATION)
        start = dict(template.init)
        device_arrays, _ = trainer.train(start, data.train, settings)
        set_adapter_arrays(model, start)
        arms["template"].append(evaluate_next_word(model, eager.tokenizer, data.test, settings.max_length).accuracy)
        train(model, task, eager.tokenizer, data.train, settings)
        arms["pytorch"].append(evaluate_next_word(model, eager.tokenizer, data.test, settings.max_length).accuracy)
        pytorch_arrays = get_adapter_arrays(model)
        set_adapter_arrays(model, device_arrays)
        arms["device"].append(evaluate_next_word(model, eager.tokenizer, data.test, settings.max_length).accuracy)
        weights.append(len(data.test))
        drift = max(float(np.abs(device_arrays[n] - pytorch_arrays[n]).max()) for n in trainer.trained)
        print(f"  user {user}: top-3 template {arms['template'][-1]:.3f}, device {arms['device'][-1]:.3f}, "
              f"PyTorch {arms['pytorch'][-1]:.3f} (adapters differ by at most {drift:.2e})", flush=True)
    result = {arm: round(float(np.average(values, weights=weights)), 4) for arm, values in arms.items()}
    result["device_minus_pytorch_points"] = round(100 * (result["device"] - result["pytorch"]), 2)
    print(f"personalization over {users} users (top-3, test rows): {result} (target: within 1 point)", flush=True)
    return result


if __name__ == "__main__":
    main()
