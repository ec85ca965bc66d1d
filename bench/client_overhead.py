"""Overhead of fedpeft's client path over a bare PyTorch + PEFT training loop.

Both sides run the same local epoch (same base, same int8 quantization, same LoRA,
same batches) in one process, alternating, and the script prints the time ratio.
The fedpeft side also loads the global adapter and computes the delta, as a client does.

    .venv/bin/python bench/client_overhead.py [--repeats 3] [--epochs 1]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time

import torch
from peft import get_peft_model

import fedpeft  # noqa: F401
from fedpeft.client.runtime import Session
from fedpeft.client.task import local_update
from fedpeft.core.adapters.template import create_template
from fedpeft.core.base.cache import NodeCache
from fedpeft.core.base.model import load_base
from fedpeft.core.base.package import BasePackage
from fedpeft.core.base.quantize import quantize_in_memory
from fedpeft.core.base.tasks import get_task
from fedpeft.core.config import load_config
from fedpeft.core.training.data import client_data
from fedpeft.core.training.job import Job
from fedpeft.core.training.synthetic_data import LABELS


def bare_epoch(model, tokenizer, split, settings, seed: int, causal_lm: bool = False) -> int:
    """The loop a PEFT user writes by hand; a causal LM's labels are its own tokens (padding masked)."""
    if causal_lm and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate)
    order = list(range(len(split)))
    random.Random(seed).shuffle(order)
    model.train()
    steps = 0
    for start in range(0, len(order), settings.batch_size):
        idx = order[start:start + settings.batch_size]
        batch = tokenizer([split.texts[i] for i in idx], padding=True, truncation=True,
                          max_length=settings.max_length, return_tensors="pt")
        labels = (batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100) if causal_lm
                  else torch.tensor([split.labels[i] for i in idx]))
        out = model(**batch, labels=labels)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps += 1
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--method", default="lora")
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = load_config(None).with_overrides(**{"adapter.method": args.method})
    task = get_task("seq-cls")
    package = BasePackage.from_pretrained(config.model.folder(), task, "int8")
    with tempfile.TemporaryDirectory() as tmp:
        cache = NodeCache(tmp)
        cache.put(package, package.base_id)
        base = load_base(cache.load(package.base_id), len(LABELS))
    template = create_template(base.model, task, config.template_spec(), list(LABELS))
    session = Session(base, template, template.attach(base.model))
    job = Job(package.base_id, template.template_id, config.data_spec(tuple(LABELS)), config.train_settings())
    data = client_data(job.data, 0)

    bare_model = task.from_pretrained(str(config.model.folder()), num_labels=len(LABELS))
    quantize_in_memory(bare_model, "int8", skip=task.head_modules)
    torch.manual_seed(0)
    bare = get_peft_model(bare_model, config.template_spec().peft_config(task))

    fed_times, bare_times = [], []
    for repeat in range(args.repeats + 1):  # the first pair warms up
        t0 = time.perf_counter()
        _, result = local_update(session, job, data.train, dict(template.init), seed=repeat)
        t1 = time.perf_counter()
        steps = bare_epoch(bare, base.tokenizer, data.train, job.train, seed=repeat)
        t2 = time.perf_counter()
        assert steps == result.steps
        if repeat:
            fed_times.append(t1 - t0)
            bare_times.append(t2 - t1)
        print(f"repeat {repeat}: fedpeft {t1 - t0:.2f} s, bare {t2 - t1:.2f} s ({steps} steps)", flush=True)
    fed, plain = statistics.median(fed_times), statistics.median(bare_times)
    print(f"\nlocal epoch of {result.steps} steps, {len(data.train)} examples, {args.method}, int8 base, 2 threads")
    print(f"fedpeft client  {fed:.3f} s")
    print(f"bare PEFT loop  {plain:.3f} s")
    print(f"overhead ratio  {fed / plain:.3f}")


if __name__ == "__main__":
    main()
