"""What a template is made from (`[adapter]`): method, rank, targets, seed. Light to
import: the config is checked against it before torch or peft load."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .methods import get_method

if TYPE_CHECKING:
    from peft import PeftConfig

    from fedpeft.core.base.tasks import Task


@dataclass(frozen=True)
class TemplateSpec:
    method: str = "ffa-lora"
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | None = None  # None: PEFT's default for the architecture
    seed: int = 0

    def peft_config(self, task: Task) -> PeftConfig:
        return get_method(self.method).peft_config(self, task)
