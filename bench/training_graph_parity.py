"""Training graph vs PyTorch on the bundled MiniLM, for every adapter method.

For ffa-lora, lora and ia3 (seeded templates with perturbed trained tensors): the
training graph's loss and gradients against autograd on held-out batches, then 10 steps
of the numpy AdamW over the graph against 10 steps of torch.optim.AdamW over autograd
on the same batches (dropout off on both, so the curves can be compared step by step).

    .venv/bin/python bench/training_graph_parity.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import fedpeft  # noqa: F401
from fedpeft.core.adapters.spec import TemplateSpec
from fedpeft.core.adapters.state import set_adapter_arrays
from fedpeft.core.adapters.template import create_template
from fedpeft.core.base.model import load_base
from fedpeft.core.base.package import BasePackage
from fedpeft.core.base.tasks import get_task
from fedpeft.core.config import load_config
from fedpeft.core.training.data import client_data, load_rows, training_batches
from fedpeft.device.predict import open_session
from fedpeft.device.trainer import AdamW
from fedpeft.export.exporter import _int8_weights
from fedpeft.export.ort_adapter import adapter_input_names
from fedpeft.export.training_graph import export_training_graph, gradient_difference

MAX_LENGTH, STEPS, BATCH = 48, 10, 8


def encode(tokenizer, texts: list[str], labels: list[int]) -> dict[str, np.ndarray]:
    batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="np")
    return {"input_ids": batch["input_ids"].astype(np.int64), "attention_mask": batch["attention_mask"].astype(np.int64),
            "labels": np.asarray(labels, np.int64)}


def main() -> None:
    torch.set_num_threads(2)
    config = load_config(None)
    labels = load_rows(config.data_spec())[1]
    spec = config.data_spec(labels)
    package = BasePackage.from_pretrained(config.model.folder(), get_task("seq-cls"), config.model.quantization)
    train = client_data(spec, 0).train
    print("| method | trained tensors | graph MB | export s | loss+gradient max abs diff | 10-step loss curve max diff |")
    print("|---|---|---|---|---|---|")
    for method in ("ffa-lora", "lora", "ia3"):
        base = load_base(package, len(labels), in_memory_quantization=False)
        template = create_template(base.model, base.task, TemplateSpec(method=method), list(labels))
        model = template.attach(base.model).eval()
        rng = np.random.default_rng(0)
        start = {n: (v + (rng.normal(scale=0.05, size=v.shape) if n in template.trainable_names else 0)).astype(np.float32)
                 for n, v in template.init.items()}
        set_adapter_arrays(model, start)
        names = adapter_input_names(model)
        steps = list(training_batches(train, BATCH, 1, seed=0))[:STEPS]
        feeds = [encode(base.tokenizer, t, y) for t, y in steps]
        with tempfile.TemporaryDirectory() as tmp:
            began = time.perf_counter()
            trained = export_training_graph(model, names, template.trainable_names,
                                            {k: torch.from_numpy(v) for k, v in feeds[0].items()},
                                            Path(tmp) / "train.onnx", MAX_LENGTH, _int8_weights(package))
            seconds = time.perf_counter() - began
            size = (Path(tmp) / "train.onnx").stat().st_size / 1e6
            session = open_session(Path(tmp) / "train.onnx", 2)
            run = lambda feed: session.run(None, feed)  # noqa: E731
            gradient = gradient_difference(model, names, trained, run, feeds[1:3])
            curve = _curve_difference(model, names, trained, run, feeds)
        print(f"| {method} | {len(trained)} | {size:.1f} | {seconds:.0f} | {gradient:.1e} | {curve:.1e} |", flush=True)
        model.unload()


def _curve_difference(model, names, trained, run, feeds) -> float:
    """Largest per-step loss difference over STEPS AdamW steps: numpy over the graph vs torch.optim."""
    parameters = {"model." + n: p for n, p in model.named_parameters()}
    graph_params = {n: parameters[n].detach().numpy().copy() for n in names.values()}
    optimizer = torch.optim.AdamW([parameters[n] for n in trained], lr=1e-2)
    numpy_optimizer = AdamW(1e-2, 0.01)
    worst = 0.0
    for feed in feeds:
        loss, *gradients = run({**feed, "dropout": np.array(0.0, np.float32), **graph_params})
        numpy_optimizer.step(graph_params, dict(zip(trained, gradients, strict=True)))
        torch_loss = model(input_ids=torch.from_numpy(feed["input_ids"]),
                           attention_mask=torch.from_numpy(feed["attention_mask"]),
                           labels=torch.from_numpy(feed["labels"])).loss
        torch_loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        worst = max(worst, abs(float(loss) - float(torch_loss.detach())))
    return worst


if __name__ == "__main__":
    main()
