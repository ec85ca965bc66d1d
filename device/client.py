"""A device in the federation: the export's trainer, verified and loaded once per process.

The ClientApp (client/client_app.py) trains, scores and personalizes with it as it does
with a PyTorch session (core/training/personalization.py's `Learner`), and signs the delta
in the same envelope a PyTorch client uses (core/wire/envelope.py `delta_content`).
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .trainer import DeviceTrainer

_TRAINERS: dict[Path, DeviceTrainer] = {}


def trainer(export: Path, operator_key: Ed25519PublicKey) -> DeviceTrainer:
    """The export's trainer, verified and loaded once per process."""
    export = Path(export).resolve()
    if export not in _TRAINERS:
        _TRAINERS[export] = DeviceTrainer(export, operator_key, threads=1)
    return _TRAINERS[export]
