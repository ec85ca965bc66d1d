"""`lora`: PEFT LoRA; clients train and send both A and B."""

from __future__ import annotations

from peft import LoraConfig

from fedpeft.core.errors import ConfigError

from ._base import AdapterMethod


class LoRA(AdapterMethod):
    def peft_config(self, spec, task) -> LoraConfig:
        if spec.rank < 1:
            raise ConfigError(f"adapter rank must be at least 1, got {spec.rank}")
        return LoraConfig(task_type=task.peft_task_type, r=spec.rank, lora_alpha=spec.alpha,
                          lora_dropout=spec.dropout, target_modules=spec.target_modules)


METHOD = LoRA()
