"""The published adapter folder: PEFT files, a signed release, and a model card.

PEFT's `save_pretrained` records the base as the absolute path it was loaded from and
repeats `modules_to_save` (it extends that list in place on every injection); the folder
we publish names its base by a portable name and by `base_id` instead, and lists each
module once. The model card replaces PEFT's empty template with the run's figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedpeft.core.adapters.state import Arrays, set_adapter_arrays
from fedpeft.core.adapters.template import AdapterTemplate
from fedpeft.core.base.model import Base
from fedpeft.core.config import ModelSection
from fedpeft.core.trust.release import Release, sign_release

CARD_NAME = "README.md"


def write_adapter(folder: Path, base: Base, template: AdapterTemplate, arrays: Arrays, key: Ed25519PrivateKey, *,
                  version: int, model: ModelSection, stats: dict[str, Any], valid_days: float,
                  privacy: dict[str, Any] | None = None) -> Release:
    peft_model = template.attach(base.model)
    set_adapter_arrays(peft_model, arrays)
    config = peft_model.peft_config["default"]
    config.base_model_name_or_path = model.portable_name()
    if config.modules_to_save:
        config.modules_to_save = list(dict.fromkeys(config.modules_to_save))
    # No adapter trains embeddings; PEFT's "auto" would look the base's name up on the Hub to decide.
    peft_model.save_pretrained(str(folder), save_embedding_layers=False)
    release = sign_release(folder, key, version=version, base_id=base.base_id, template_id=template.template_id,
                           method=template.method, labels=template.labels, parent=None,
                           metrics=release_metrics(stats, privacy), valid_days=valid_days)
    (Path(folder) / CARD_NAME).write_text(model_card(release, template, model, stats, privacy))
    return release


def release_metrics(stats: dict[str, Any], privacy: dict[str, Any] | None) -> dict[str, float]:
    """What the signed release states about the adapter: its accuracy and, with DP, its (epsilon, delta)."""
    metrics = {"global_accuracy": stats["global"]["weighted_mean"]}
    if privacy and privacy["mode"] != "off":
        metrics |= {"epsilon": privacy["epsilon"], "delta": privacy["delta"]}
    return metrics


def privacy_line(privacy: dict[str, Any] | None) -> str:
    if not privacy or privacy["mode"] == "off":
        return "Privacy: no differential privacy (clients' deltas are averaged as sent)."
    return (f"Privacy: client-level differential privacy, epsilon {privacy['epsilon']:.3g} at delta "
            f"{privacy['delta']:g} over {privacy['rounds']} rounds ({privacy['mode']} noise: deltas clipped to "
            f"{privacy['clip']:g}, noise multiplier {privacy['noise_multiplier']:g}; opacus RDP accountant).")


def model_card(release: Release, template: AdapterTemplate, model: ModelSection, stats: dict[str, Any],
               privacy: dict[str, Any] | None = None) -> str:
    rows = "\n".join(f"| {arm} | {s['weighted_mean']:.3f} | {s['mean']:.3f} | {s['worst_decile']:.3f} |"
                     for arm, s in stats.items())
    labels = ", ".join(template.labels) or "(none: a causal LM)"
    return f"""---
base_model: {model.portable_name()}
library_name: peft
tags: [fedpeft, federated-learning, {template.method}]
---

# fedpeft adapter, release v{release.version}

A {template.method} adapter trained by federated averaging of signed client deltas over the
frozen, {model.quantization}-quantized base `{model.portable_name()}`.

- base_id: `{release.base_id}` (SHA-256 of the base manifest; the adapter fits only this base)
- template_id: `{release.template_id}`
- release: `{release.release_id}`, expires {release.manifest['expires']}
- labels: {labels}

{"Next-word top-3 accuracy (words as a keyboard suggests them)" if not template.labels else "Test accuracy"} over the clients' own test splits (weighted mean, plain mean, worst decile):

| adapter | weighted | mean | worst 10% |
|---|---|---|---|
{rows}

{privacy_line(privacy)}

Verify before use: `fedpeft verify FOLDER --key operator.pub --base-id {release.base_id[:12]}...`;
load with `fedpeft.load_adapter(FOLDER, key=operator.pub)`. This card is not signed;
`release.json` and `release.sig` are.
"""
