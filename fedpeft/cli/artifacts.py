"""`fedpeft verify`, `export`, `predict` and `generate`: what a run publishes, checked,
turned into ONNX for devices, and used there."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fedpeft.core.choices import GENERATION_PRECISIONS
from fedpeft.core.config import RANGES, Range
from fedpeft.core.errors import ConfigError

from .common import SHARE, channel, command, device_slot

MAX_TOKENS = Range(int, 1, 4096)
TEMPERATURE = Range(float, 0, 10)
SEED = Range(int, 0, 2**31 - 1)

if TYPE_CHECKING:  # the device modules are imported where used
    from fedpeft.device.personal import CheckedPersonal
    from fedpeft.device.predict import SlotRelease


def add_commands(commands) -> None:
    verify = command(commands, "verify", "check a published adapter folder's signed release",
                     "fedpeft verify runs/default/adapter --key keys/operator.pub")
    verify.add_argument("folder", help="adapter folder with release.json and release.sig")
    verify.add_argument("--key", required=True, help="the operator's public key (.pub)")
    verify.add_argument("--base-id", help="also require the release to be made for this base")
    verify.set_defaults(run=_verify)

    exp = command(commands, "export", "ONNX models of a base with an adapter, signed, for ONNX Runtime",
                  "fedpeft export runs/default/adapter --key keys/operator.pub --out runs/export")
    exp.add_argument("adapter", help="adapter folder (PEFT format, with release.json/.sig)")
    exp.add_argument("--out", required=True, help="export folder to create")
    exp.add_argument("--key", help="operator public key that signed the adapter's release")
    exp.add_argument("--accept-unsigned", action="store_true", help="export an adapter without a release")
    exp.add_argument("--operator-key", help="private key that signs the export (default: security.operator_key)")
    exp.add_argument("--config", help="TOML file naming the base model and the held-out data")
    exp.add_argument("--model", help="transformers model folder of the base (default: bundled MiniLM)")
    exp.add_argument("--quantization", help="how the base was quantized for transport (identifies the base)")
    exp.add_argument("--data", help="data for the parity check (default: the config's)")
    exp.add_argument("--max-length", type=RANGES["train.max_length"], default=128,
                     help="tokenizer truncation on devices")
    exp.add_argument("--min-int8-agreement", type=SHARE,
                     help="refuse the export if int8 and PyTorch predictions agree less often (default 0.99)")
    exp.add_argument("--max-int8-accuracy-drop", type=SHARE, help="default 0.01")
    exp.add_argument("--int8-scheme", choices=["blockwise", "per-tensor"], default="blockwise",
                     help="how finely activations are quantized (export/int8.py)")
    exp.add_argument("--training-graph", action=argparse.BooleanOptionalAction, default=True,
                     help="write train.onnx for devices that train the adapter (default: on)")
    exp.add_argument("--generation-precision", choices=GENERATION_PRECISIONS, default="int8",
                     help="a language model: the generation model's base weights (default int8; int4 is half the "
                          "size and agrees with PyTorch less often)")
    exp.add_argument("--min-generation-agreement", type=SHARE,
                     help="a language model: refuse the export if its greedy continuations agree with PyTorch's on "
                          "fewer of the first 16 tokens (default 0.5)")
    exp.add_argument("--onto", metavar="EXPORT", help="write only an .onnx_adapter for this existing export folder")
    exp.set_defaults(run=_export)

    pred = command(commands, "predict", "classify texts, or suggest a language model's next 3 words, with an "
                   "export folder (ONNX Runtime, no torch)",
                   'fedpeft predict runs/export "the battery on my phone died" --key keys/operator.pub')
    pred.add_argument("folder", help="export folder")
    pred.add_argument("texts", nargs="+", help="texts to classify (a language model: texts to suggest the next word for)")
    pred.add_argument("--model", default="int8", choices=["fp32", "int8", "base"],
                      help="which exported classifier runs (base: the base graph with an .onnx_adapter)")
    _adapter_arguments(pred)
    pred.set_defaults(run=_predict)

    gen = command(commands, "generate", "continue a prompt with a language-model export (onnxruntime-genai, no torch)",
                  'fedpeft generate runs/export-lm "see you at the" --key keys/operator.pub')
    gen.add_argument("folder", help="export folder of a causal-LM release")
    gen.add_argument("prompt", help="text to continue")
    gen.add_argument("--max-tokens", type=MAX_TOKENS, default=64, help="tokens to generate at most (default 64)")
    gen.add_argument("--temperature", type=TEMPERATURE, default=0.0,
                     help="0 (the default): greedy; above 0: sampling from the 50 most likely tokens")
    gen.add_argument("--seed", type=SEED, default=0, help="sampling seed")
    _adapter_arguments(gen)
    gen.set_defaults(run=_generate)


def _adapter_arguments(sub: argparse.ArgumentParser) -> None:
    """Which export, checked how, and which adapter onto its base: shared by predict and generate."""
    sub.add_argument("--key", help="operator public key that signed the export")
    sub.add_argument("--no-verify", action="store_true", help="skip the signature check")
    sub.add_argument("--adapter", help="a folder from `fedpeft export --onto` to apply to the base model")
    sub.add_argument("--state", help="a device slot: its personal adapter, else its release's .onnx_adapter")
    sub.add_argument("--base-id", help="the device's base (with --state)")
    sub.add_argument("--no-adapter", action="store_true", help="a language model: the plain base, no adapter")
    sub.add_argument("--channel", type=channel, default="stable", help=argparse.SUPPRESS)


def _verify(args: argparse.Namespace) -> None:
    from fedpeft.core.trust.keys import load_public_key
    from fedpeft.core.trust.release import verify_release

    release = verify_release(Path(args.folder), load_public_key(Path(args.key)), base_id=args.base_id)
    m = release.manifest
    print(f"OK: {args.folder} is release v{release.version} ({release.release_id[:12]}) of base "
          f"{m['base_id'][:12]}, template {m['template_id'][:12]}; {len(m['tensors'])} tensors; "
          f"created {m['created']}, expires {m['expires']}")


def _export(args: argparse.Namespace) -> None:
    from fedpeft.core.config import load_config
    from fedpeft.core.trust.keys import load_operator_key, load_public_key
    from fedpeft.export.exporter import ExportRequest, export, export_adapter_only
    from fedpeft.export.parity import ParityLimits

    config = load_config(args.config).with_overrides(**{
        "model.path": args.model, "model.quantization": args.quantization, "data.source": args.data,
    })
    operator = Path(args.operator_key or config.security.operator_key)
    request = ExportRequest(
        adapter=Path(args.adapter), out=Path(args.out), model_folder=config.model.folder(), task=config.model.task,
        quantization=config.model.quantization,
        release_key=load_public_key(Path(args.key)) if args.key else None, accept_unsigned=args.accept_unsigned,
        data=config.data_spec(), max_length=args.max_length, int8_scheme=args.int8_scheme,
        training_graph=args.training_graph, generation_precision=args.generation_precision,
        limits=ParityLimits(**{k: v for k, v in {"int8_min_agreement": args.min_int8_agreement,
                                                  "int8_max_accuracy_drop": args.max_int8_accuracy_drop,
                                                  "generation_min_agreement": args.min_generation_agreement}.items()
                               if v is not None}),
    )
    operator_key = load_operator_key(operator)
    if args.onto:
        if not args.key:
            raise ConfigError("--onto needs --key: the operator key that signed the export")
        manifest = export_adapter_only(request, Path(args.onto), load_public_key(Path(args.key)), operator_key)
        print(f"[fedpeft] adapter for export {args.onto} written to {args.out} "
              f"({manifest['files']['adapter.onnx_adapter']['size'] / 1e3:.0f} KB), signed adapter.json")
        return
    manifest = export(request, operator_key)
    p = manifest["parity"]
    if "genai" in manifest:
        print(f"[fedpeft] export written to {args.out}: greedy continuations of {p['prompts']} held-out prompts equal "
              f"PyTorch's on {p['fp32_exact']:.2f} of them unquantized (next-token logits within "
              f"{p['fp32_logits_max_abs']:.2g}); the {p['precision']} model agrees on {p['agreement']:.3f} of the "
              f"first 16 tokens; the adapter changes {p['adapter_effect']:.2f} of continuations"
              + (f"; training graph gradients within {p['gradient_max_abs']:.2g} of PyTorch"
                 if p.get("gradient_max_abs") is not None else "") + "; signed export.json")
        return
    print(f"[fedpeft] export written to {args.out}: fp32 max abs diff {p['fp32_max_abs']:.2g}, adapter-input graph "
          f"{p['adapter_max_abs']:.2g}, int8 agreement {p['int8_agreement']:.3f}"
          + (f", accuracy torch {p['torch_accuracy']:.3f} / int8 {p['int8_accuracy']:.3f}" if p["torch_accuracy"] is not None else "")
          + f" on {p['examples']} held-out examples"
          + (f"; training graph gradients within {p['gradient_max_abs']:.2g} of PyTorch" if p.get("gradient_max_abs") is not None else "")
          + "; signed export.json")


def _predict(args: argparse.Namespace) -> None:
    from fedpeft.core.trust.keys import load_public_key
    from fedpeft.device.predict import Predictor, open_export

    if args.key is None and not args.no_verify:
        raise ConfigError("give the operator's public key (--key) or pass --no-verify")
    if "genai" in open_export(Path(args.folder), None):  # which kind of export, read to choose; verified below
        language_model = _language_model(args)
        for text in args.texts:
            print(" | ".join(language_model.next_words(text)) + f"\t{text}")
        return
    if args.no_adapter:
        raise ConfigError("--no-adapter is for a language-model export; a classifier's head is its adapter")
    model, adapter = args.model, Path(args.adapter) if args.adapter else None
    if args.state:
        model, adapter = "base", _slot_adapter(args)
    predictor = Predictor(Path(args.folder), load_public_key(Path(args.key)) if args.key else None, model, adapter)
    for text, prediction in zip(args.texts, predictor.predict(args.texts)):
        print(f"{prediction.label}\t{prediction.score:.3f}\t{text}")


def _generate(args: argparse.Namespace) -> None:
    if args.key is None and not args.no_verify:
        raise ConfigError("give the operator's public key (--key) or pass --no-verify")
    language_model = _language_model(args)
    language_model.generate(args.prompt, args.max_tokens, args.temperature, args.seed,
                            on_text=lambda piece: print(piece, end="", flush=True))
    print()


def _language_model(args: argparse.Namespace):
    """The export's generation model with the adapter the arguments choose active."""
    from fedpeft.core.trust.keys import load_public_key
    from fedpeft.device.generate import DeviceLanguageModel

    if args.no_adapter and (args.adapter or args.state):
        raise ConfigError("--no-adapter runs the plain base: give no --adapter or --state with it")
    adapter = _slot_adapter(args) if args.state else Path(args.adapter) if args.adapter else None
    return DeviceLanguageModel(Path(args.folder), load_public_key(Path(args.key)) if args.key else None, adapter,
                               with_adapter=not args.no_adapter, base_id=args.base_id)


def _slot_adapter(args: argparse.Namespace) -> SlotRelease | CheckedPersonal:
    """What a device slot predicts with: its personal adapter while it was trained from the
    installed release, else the release's own `.onnx_adapter` (saying why)."""
    from fedpeft.core.trust.release import ONNX_ADAPTER_FILES
    from fedpeft.device.personal import personal_adapter
    from fedpeft.device.predict import SlotRelease

    if not (args.key and args.base_id):
        raise ConfigError("--state needs the operator key (--key) and the device's base (--base-id)")
    device = device_slot(args)
    device.current_release()  # verified again now
    personal, why = personal_adapter(device)
    if personal is not None:
        return personal
    print(f"fedpeft: note: {why}", file=sys.stderr)
    if device.current is None or not (device.current / ONNX_ADAPTER_FILES[0]).exists():
        raise ConfigError(f"{args.state} has no personal adapter and its release carries no .onnx_adapter")
    return SlotRelease(device.current)
