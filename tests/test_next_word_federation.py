"""A real next-word federation: `fedpeft simulate` of a causal LM in its own process, on
Flower's engine, with a tiny Llama that has SmolLM2's vocabulary, on a user's CSV of
messages (text and client_id, no label). Three users share a grammar and differ in a name,
a place and a sign-off. (The synthetic corpus's vocabulary is too wide for a 64-wide
model over frozen random embeddings to learn in seconds; the bundled SmolLM2 run on it is
`simulations/next-word.toml`, README.)"""

import csv
import json
import math
import os
import random
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedpeft.server.report import ARMS

FIGURES = ("top1", "top3", "perplexity")
USERS = [("ana", "the park", "cheers"), ("ben", "the cafe", "later"), ("cleo", "the station", "love")]


def write_messages(path, rows: int = 40) -> None:
    rng = random.Random(0)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "client_id"])
        for name, place, sign_off in USERS:
            for _ in range(rows):
                hour = rng.choice(["six", "seven", "eight", "nine"])
                writer.writerow([f"hi {name} see you at {place} at {hour} {sign_off}", f"user-{name}"])
CONFIG = """
[model]
task = "causal-lm"
quantization = "int8"

[train]
epochs = 2
batch_size = 8
learning_rate = 5e-2
max_length = 48

[personalization]
epochs = 2
local_only_epochs = 3
best_epoch = true

[security]
operator_key = "keys/operator.key"
max_update_norm = 1000.0
"""


@pytest.fixture(scope="module")
def run(tiny_llama_dir, tmp_path_factory):
    return simulate(tiny_llama_dir, tmp_path_factory.mktemp("lm-run"), CONFIG)


def simulate(model, out, config: str, *arguments: str):
    """`fedpeft simulate` of `config` on the users' messages for 3 rounds, in its own
    process in `out`; (the run folder, its console output)."""
    (out / "run.toml").write_text(config)
    write_messages(out / "messages.csv")
    cmd = [sys.executable, "-m", "fedpeft.cli", "simulate", "--config", "run.toml", "--model", str(model),
           "--data", "messages.csv", "--rounds", "3", *arguments, "--out", "result"]
    env = {**os.environ, "FEDPEFT_CACHE": str(out / "cache")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out / "result", proc.stdout


def test_the_summary_names_every_next_word_figure(run):
    out, _ = run
    summary = json.loads((out / "summary.json").read_text())
    for arm in (*ARMS, "centralized"):
        for figure in FIGURES:
            value = summary[f"{arm}_{figure}"]
            assert math.isfinite(value) and (value >= 1 if figure == "perplexity" else 0 <= value <= 1), (arm, figure)
    assert summary["global_top3"] == summary["global_accuracy"]  # top-3 is the arm's accuracy
    for figure in FIGURES:
        stats = summary["next_word"][figure]["global"]
        assert set(stats) == {"weighted_mean", "mean", "std", "worst_decile"}
    assert summary["next_word"]["perplexity"]["global"]["worst_decile"] >= summary["next_word"]["perplexity"]["global"]["mean"]
    clients = json.loads((out / "clients.json").read_text())
    assert len(clients) == 3 and all(f"{arm}_perplexity" in c and f"{arm}_top1" in c for c in clients for arm in ARMS)


def test_the_language_model_learns(run):
    """The tiny Llama starts near uniform over 49k tokens; the federation must cut its
    held-out perplexity by a clear margin, and personalization (epoch chosen on each
    user's validation rows) must learn what only a user's own rows say."""
    summary = json.loads((run[0] / "summary.json").read_text())
    assert summary["global_perplexity"] < summary["initial_perplexity"] / 5
    assert summary["personalized_perplexity"] < summary["global_perplexity"]
    assert summary["initial_top3"] < summary["global_top3"] <= summary["personalized_top3"]


def test_progress_shows_validation_perplexity_and_the_plots_are_written(run):
    out, stdout = run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert rows[-1]["val_perplexity"] < rows[0]["val_perplexity"]
    assert stdout.count("val ppl") == 3 and "next-word top-3 / perplexity" in stdout
    assert "perplexity" in stdout.split("personalization:")[1]  # the table
    for plot in ("curves.png", "clients.png"):
        assert (out / plot).stat().st_size > 10_000
    assert "Next-word top-3" in (out / "adapter" / "README.md").read_text()


def test_the_published_adapter_loads_with_peft_and_generates(run, tiny_llama_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = PeftModel.from_pretrained(base, str(run[0] / "adapter")).eval()
    prompt = tokenizer("see you at", return_tensors="pt")
    with torch.no_grad():
        tuned = model.generate(**prompt, max_new_tokens=6, do_sample=False)
        with model.disable_adapter():
            plain = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert tuned.shape[1] > prompt["input_ids"].shape[1]
    assert not torch.equal(tuned, plain)  # the adapter changes what the model writes


def test_a_private_language_model_run_resumes_where_it_stopped(tiny_llama_dir, tmp_path):
    """Client-level DP and resume work for a causal LM as for a classifier: a 2-round run
    with central noise, then the same run.out asked for 3 rounds goes on from round 2's
    checkpoint, and the accountant carries on (epsilon grows, the release states it)."""
    (tmp_path / "run.toml").write_text(CONFIG)
    write_messages(tmp_path / "messages.csv", rows=20)
    env = {**os.environ, "FEDPEFT_CACHE": str(tmp_path / "cache")}
    base = [sys.executable, "-m", "fedpeft.cli", "simulate", "--config", "run.toml", "--model", str(tiny_llama_dir),
            "--data", "messages.csv", "--privacy", "central", "--clip", "5", "--noise-multiplier", "0.5",
            "--no-centralized-baseline", "--out", "result"]
    for rounds in (2, 3):
        proc = subprocess.run([*base, "--rounds", str(rounds)], capture_output=True, text=True, timeout=600, env=env,
                              cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        summary = json.loads((tmp_path / "result" / "summary.json").read_text())
        if rounds == 2:
            first = summary["privacy"]["epsilon"]
    rows = [json.loads(line) for line in (tmp_path / "result" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3] and summary["resumed_after_round"] == 2
    assert summary["privacy"]["epsilon"] > first > 0 and math.isfinite(summary["global_perplexity"])
    release = json.loads((tmp_path / "result" / "adapter" / "release.json").read_text())
    assert release["metrics"]["epsilon"] == summary["privacy"]["epsilon"]
