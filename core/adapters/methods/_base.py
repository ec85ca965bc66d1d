"""What every adapter method provides."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from peft import PeftConfig, PeftModel

    from fedpeft.core.adapters.spec import TemplateSpec
    from fedpeft.core.base.tasks import Task


class AdapterMethod:
    """One adapter method: its PEFT config, and which of its tensors clients train."""

    def peft_config(self, spec: TemplateSpec, task: Task) -> PeftConfig:
        raise NotImplementedError

    def trains(self, tensor_name: str) -> bool:
        """Whether clients train (and send) this adapter tensor; by default all of them."""
        return True

    def freeze(self, peft_model: PeftModel) -> None:
        """Stop gradients into the adapter tensors this method keeps frozen."""
        for name, param in peft_model.named_parameters():
            if param.requires_grad and not self.trains(name):
                param.requires_grad_(False)
