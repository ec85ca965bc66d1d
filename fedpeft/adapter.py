"""`fedpeft.load_adapter`: a published adapter folder and its base, ready to run in PyTorch.

The folder may come from anyone. With a key, the release is verified (signature, expiry,
file hashes) before a byte of it is parsed; without one, every file is still read as
untrusted: no link is followed, JSON goes through the guarded reader, the label list is
bounded and must fit the head the adapter's weights carry before it sizes anything, and
whatever PEFT cannot load is one ManifestError with a reason, never the library's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft import PeftModel
from safetensors import SafetensorError, safe_open
from transformers import PreTrainedTokenizerBase

from fedpeft.console import printable
from fedpeft.core.base.model import load_base
from fedpeft.core.base.package import BasePackage
from fedpeft.core.base.tasks import get_task
from fedpeft.core.config import BUNDLED_LM, BUNDLED_MODEL, ModelSection
from fedpeft.core.errors import ConfigError
from fedpeft.core.trust.files import UnreadableFile, read_small, regular_file_size
from fedpeft.core.trust.json_reader import JSONRefused, parse_json_object
from fedpeft.core.trust.keys import load_public_key
from fedpeft.core.trust.release import ADAPTER_FILES, RELEASE_NAME, Release, check_labels, verify_release
from fedpeft.core.trust.signed_files import ManifestError

CONFIG, WEIGHTS = ADAPTER_FILES  # adapter_config.json, adapter_model.safetensors
BUNDLED_BASES = (BUNDLED_MODEL, BUNDLED_LM)  # bases load_adapter finds by the name the adapter gives
TASK_TYPES = {"SEQ_CLS": "seq-cls", "CAUSAL_LM": "causal-lm"}  # PEFT's task_type -> fedpeft's task


@dataclass
class LoadedAdapter:
    model: PeftModel                    # the frozen, quantized base with the adapter applied, in eval mode
    tokenizer: PreTrainedTokenizerBase
    labels: list[str]                   # class names by output index (empty for a causal LM)
    release: Release | None             # the verified release; None when no key was given


def load_adapter(folder: str | Path, key: str | Path | None = None, model: str | Path | None = None,
                 quantization: str = "int8", task: str | None = None) -> LoadedAdapter:
    """Load `folder` (a PEFT adapter published by fedpeft) onto the base it was trained on.

    With `key` (the operator's .pub), the release is verified first (signature, expiry,
    file hashes) and the base built from `model`/`quantization` must be the release's
    `base_id`. `model` defaults to the base the adapter names when that is a bundled one
    (`bundled:all-minilm-l6-v2`, `bundled:smollm2-135m-instruct`); it may also be `smollm2`
    or a `.gguf` file. `task` (`seq-cls` or `causal-lm`) defaults to the one the adapter's
    PEFT `task_type` states, and to `seq-cls` when it states none. A causal LM comes back
    with no labels, ready for `model.generate`.
    """
    folder = Path(folder)
    release = verify_release(folder, load_public_key(Path(key))) if key is not None else None
    peft_config = _read_object(folder, CONFIG)
    named_base = _named_base(peft_config)
    task = task or _task_of(peft_config)
    if model is None and named_base not in BUNDLED_BASES:
        raise ConfigError(f"the adapter names base {named_base!r}: give its transformers folder as model=")
    package = BasePackage.from_pretrained(ModelSection(path=str(model or named_base)).folder(), get_task(task),
                                          quantization)
    if release is not None and release.base_id != package.base_id:
        raise ConfigError(f"the release was made for base {release.base_id[:12]}; {model or named_base} with "
                          f"{quantization} quantization is base {package.base_id[:12]}")
    labels = _labels(folder, release, get_task(task).head_modules)
    base = load_base(package, num_labels=len(labels))
    try:
        loaded = PeftModel.from_pretrained(base.model, str(folder)).eval()
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, RuntimeError, OSError) as exc:
        raise ManifestError("malformed", f"{folder} does not load as a PEFT adapter of this base: "
                                         f"{type(exc).__name__}: {str(exc)[:200]}") from None
    return LoadedAdapter(loaded, base.tokenizer, labels, release)


def _read_object(folder: Path, name: str) -> dict[str, Any]:
    """A JSON object file of the folder, read as untrusted: regular, not a link, guarded parse."""
    path = folder / name
    try:
        return parse_json_object(read_small(path, follow_links=False), str(path))
    except UnreadableFile as exc:
        if exc.reason == "missing-file" and name == CONFIG:
            raise ConfigError(f"{folder} is not a PEFT adapter folder (no {CONFIG})") from exc
        raise ManifestError(exc.reason, str(exc)) from exc
    except JSONRefused as exc:
        raise ManifestError(exc.reason, str(exc)) from exc


def _named_base(config: dict[str, Any]) -> str:
    named = config.get("base_model_name_or_path")
    if named is not None and not isinstance(named, str):
        raise ManifestError("malformed", f"{CONFIG}: base_model_name_or_path must be a string")
    return named or ""


def _task_of(config: dict[str, Any]) -> str:
    """fedpeft's task for the adapter's PEFT `task_type` (absent: seq-cls, as before it was read)."""
    task_type = config.get("task_type")
    if task_type is None:
        return "seq-cls"
    if not isinstance(task_type, str):
        raise ManifestError("malformed", f"{CONFIG}: task_type must be a string")
    if task_type not in TASK_TYPES:
        raise ConfigError(f"{CONFIG} states task_type {printable(task_type)!r}: fedpeft loads "
                          f"{' or '.join(TASK_TYPES)} adapters (or pass task=)")
    return TASK_TYPES[task_type]


def _head_rows(folder: Path, head_modules: tuple[str, ...]) -> set[int]:
    """The first dimension of each head tensor in the weights (read from the header only)."""
    path = folder / WEIGHTS
    try:
        regular_file_size(path, follow_links=False)
        with safe_open(str(path), "np") as weights:
            return {weights.get_slice(name).get_shape()[0] for name in weights.keys()
                    if set(name.split(".")) & set(head_modules) and weights.get_slice(name).get_shape()}
    except UnreadableFile as exc:
        raise ManifestError(exc.reason, str(exc)) from exc
    except (SafetensorError, OSError, ValueError) as exc:
        raise ManifestError("tensor-mismatch", f"{WEIGHTS} does not load: {exc}") from exc


def _labels(folder: Path, release: Release | None, head_modules: tuple[str, ...]) -> list[str]:
    """The class names: the verified release's, else the unverified release.json's; bounded
    and, where the adapter carries a head, as many as its rows."""
    if release is not None:
        raw = release.labels
    elif (folder / f"{RELEASE_NAME}.json").exists() or (folder / f"{RELEASE_NAME}.json").is_symlink():
        raw = _read_object(folder, f"{RELEASE_NAME}.json").get("labels")
    else:
        raw = []
    labels = check_labels(raw)
    rows = _head_rows(folder, head_modules)
    if rows and len(labels) not in rows:
        raise ManifestError("label-mismatch", f"{len(labels)} labels, but the head in {WEIGHTS} has "
                                              f"{sorted(rows)[:4]} rows")
    return labels
