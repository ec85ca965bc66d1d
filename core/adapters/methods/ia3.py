"""`ia3`: PEFT IA3 scaling vectors."""

from __future__ import annotations

from peft import IA3Config

from ._base import AdapterMethod


class IA3(AdapterMethod):
    def peft_config(self, spec, task) -> IA3Config:
        return IA3Config(task_type=task.peft_task_type, target_modules=spec.target_modules)


METHOD = IA3()
