"""`fedpeft.load_adapter`: a published adapter folder and its base, ready to run in PyTorch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from fedpeft.core.base.model import load_base
from fedpeft.core.base.package import BasePackage
from fedpeft.core.base.tasks import get_task
from fedpeft.core.config import BUNDLED_MODEL, ModelSection
from fedpeft.core.errors import ConfigError
from fedpeft.core.trust.keys import load_public_key
from fedpeft.core.trust.release import RELEASE_NAME, Release, verify_release


@dataclass
class LoadedAdapter:
    model: PeftModel                    # the frozen, quantized base with the adapter applied, in eval mode
    tokenizer: PreTrainedTokenizerBase
    labels: list[str]                   # class names by output index (empty for a causal LM)
    release: Release | None             # the verified release; None when no key was given


def load_adapter(folder: str | Path, key: str | Path | None = None, model: str | Path | None = None,
                 quantization: str = "int8", task: str = "seq-cls") -> LoadedAdapter:
    """Load `folder` (a PEFT adapter published by fedpeft) onto the base it was trained on.

    With `key` (the operator's .pub), the release is verified first (signature, expiry,
    file hashes) and the base built from `model`/`quantization` must be the release's
    `base_id`. `model` defaults to the base the adapter names when that is the bundled one.
    """
    folder = Path(folder)
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        raise ConfigError(f"{folder} is not a PEFT adapter folder (no adapter_config.json)")
    named_base = str(json.loads(config_path.read_text()).get("base_model_name_or_path") or "")
    if model is None and named_base != BUNDLED_MODEL:
        raise ConfigError(f"the adapter names base {named_base!r}: give its transformers folder as model=")
    release = verify_release(folder, load_public_key(Path(key))) if key is not None else None
    package = BasePackage.from_pretrained(ModelSection(path=str(model or BUNDLED_MODEL)).folder(), get_task(task),
                                          quantization)
    if release is not None and release.base_id != package.base_id:
        raise ConfigError(f"the release was made for base {release.base_id[:12]}; {model or named_base} with "
                          f"{quantization} quantization is base {package.base_id[:12]}")
    labels = release.labels if release else _unverified_labels(folder)
    base = load_base(package, num_labels=len(labels))
    return LoadedAdapter(PeftModel.from_pretrained(base.model, str(folder)).eval(), base.tokenizer, labels, release)


def _unverified_labels(folder: Path) -> list[str]:
    manifest = folder / f"{RELEASE_NAME}.json"
    return [str(label) for label in json.loads(manifest.read_text())["labels"]] if manifest.is_file() else []
