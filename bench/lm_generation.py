"""Generation on a device (onnxruntime-genai, quantized base + .onnx_adapter) against PyTorch eager, side by side.

1. Tokens per second, greedy, on the same prompts (keyboard-style messages), interleaved in
   one process: the generation runtime on the export's quantized model with the release's
   adapter active, and PyTorch `generate` with the fp32 base and the PEFT adapter (2 threads).
2. Peak resident memory of each in its own process: load, then generate for every prompt
   (the runtime's child blocks torch, transformers and peft from importing).
3. File sizes of what a device downloads: the generation model and the adapter.

    .venv/bin/python bench/lm_generation.py --export runs/export-lm --adapter runs/next-word/adapter \\
        --key keys/operator.pub [--model smollm2] [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

THREADS = 2
PROMPTS = ["hey are we still on for", "can you pick up some milk on the way", "running late, be there in",
           "what time does the", "thanks so much for the", "did you see the game last",
           "i cant make it tonight, can we", "happy birthday! hope you have a", "where did you leave the",
           "let me know when you get"]
BLOCK_TORCH = ("torch", "transformers", "peft")


def runtime_tokens(export: Path, key: Path, prompt: str, tokens: int) -> tuple[list[int], float]:
    """(token ids, seconds) of the device runtime's greedy continuation, prompt processing included."""
    model = _device_model(export, key)
    start = time.perf_counter()
    ids = list(model.model.generate(model.model.encode(prompt), tokens, model.adapter))
    return ids, time.perf_counter() - start


_models: dict = {}


def _device_model(export: Path, key: Path):
    if "device" not in _models:
        from fedpeft.core.trust.keys import load_public_key
        from fedpeft.device.generate import DeviceLanguageModel

        _models["device"] = DeviceLanguageModel(export, load_public_key(key))
    return _models["device"]


def _torch_model(model_folder: Path, adapter: Path):
    if "torch" not in _models:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(THREADS)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_folder), str(adapter)).eval()
        _models["torch"] = (model, AutoTokenizer.from_pretrained(model_folder))
    return _models["torch"]


def torch_tokens(model_folder: Path, adapter: Path, prompt: str, tokens: int) -> tuple[list[int], float]:
    import torch
    from transformers import GenerationConfig

    model, tokenizer = _torch_model(model_folder, adapter)
    inputs = tokenizer(prompt, return_tensors="pt")
    search = GenerationConfig(max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id,
                              eos_token_id=tokenizer.eos_token_id)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, generation_config=search)
    return out[0, inputs["input_ids"].shape[1]:].tolist(), time.perf_counter() - start


def memory_child(kind: str, args: argparse.Namespace) -> None:
    """Peak resident memory (MB) of a process that loads one generator and continues every prompt."""
    if kind == "runtime":
        for name in BLOCK_TORCH:
            sys.modules[name] = None  # the device side must run without them
        for prompt in PROMPTS:
            runtime_tokens(Path(args.export), Path(args.key), prompt, args.tokens)
    else:
        for prompt in PROMPTS:
            torch_tokens(_model_folder(args.model), Path(args.adapter), prompt, args.tokens)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec.
    peak_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))
    print(json.dumps({"peak_mb": round(peak_kb / 1024), "torch": sys.modules.get("torch") is not None}))


def _model_folder(model: str) -> Path:
    from fedpeft.core.config import load_config

    return load_config(None).with_overrides(**{"model.path": model}).model.folder()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", required=True, help="a language-model export folder (fedpeft export)")
    parser.add_argument("--adapter", required=True, help="the adapter folder it was exported from")
    parser.add_argument("--key", default="keys/operator.pub")
    parser.add_argument("--model", default="smollm2", help="the base (as `model.path`)")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--memory", help=argparse.SUPPRESS)  # child mode: runtime | torch
    args = parser.parse_args()
    if args.memory:
        memory_child(args.memory, args)
        return
    export, key, adapter, folder = Path(args.export), Path(args.key), Path(args.adapter), _model_folder(args.model)

    runtime_tokens(export, key, PROMPTS[0], 4)  # warm-up: sessions built, first run's allocations done
    torch_tokens(folder, adapter, PROMPTS[0], 4)
    totals = {"runtime": [0, 0.0], "torch": [0, 0.0]}
    agree = compared = 0
    for prompt in PROMPTS:  # interleaved, so both see the same machine load
        ours, ours_s = runtime_tokens(export, key, prompt, args.tokens)
        theirs, theirs_s = torch_tokens(folder, adapter, prompt, args.tokens)
        totals["runtime"][0] += len(ours)
        totals["runtime"][1] += ours_s
        totals["torch"][0] += len(theirs)
        totals["torch"][1] += theirs_s
        agree += sum(a == b for a, b in zip(ours[:16], theirs[:16]))
        compared += min(16, len(theirs))
    rates = {name: count / seconds for name, (count, seconds) in totals.items()}
    precision = _device_model(export, key).manifest["genai"]["precision"]
    print(f"\nGreedy generation, {len(PROMPTS)} prompts x up to {args.tokens} tokens, {THREADS} threads "
          "(prompt processing included):")
    print("| | tokens/s | ms/token |")
    print("|---|---|---|")
    for name, label in (("runtime", f"onnxruntime-genai, {precision} base + .onnx_adapter"),
                        ("torch", "PyTorch eager generate, fp32 base + PEFT adapter")):
        print(f"| {label} | {rates[name]:.1f} | {1000 / rates[name]:.1f} |")
    print(f"runtime / PyTorch tokens per second: {rates['runtime'] / rates['torch']:.2f}x; "
          f"{precision} agrees with PyTorch on {agree / max(compared, 1):.3f} of the first 16 tokens")

    print("\nPeak resident memory, one process each (load + every prompt):")
    from fedpeft.core.trust.json_reader import parse_json_object  # a child's output: bounded before use

    for kind in ("runtime", "torch"):
        proc = subprocess.run([sys.executable, __file__, "--memory", kind, *sys.argv[1:]], capture_output=True, text=True)
        result = (parse_json_object(proc.stdout.strip().splitlines()[-1], "child report") if proc.returncode == 0
                  else proc.stderr[-500:])
        print(f"  {kind}: {result}")

    manifest = _device_model(export, key).manifest  # verified
    genai_mb = sum(entry["size"] for name, entry in manifest["files"].items() if name.startswith("genai/")) / 1e6
    print(f"\nFiles: generation model (genai/) {genai_mb:.1f} MB, .onnx_adapter "
          f"{manifest['files'][manifest['adapter']]['size'] / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
