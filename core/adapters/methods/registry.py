"""The method interface and the registry of methods by name."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from peft import PeftConfig, PeftModel

from fedpeft.core.errors import ConfigError

if TYPE_CHECKING:
    from fedpeft.core.adapters.template import TemplateSpec
    from fedpeft.core.base.tasks import Task

_METHODS: dict[str, AdapterMethod] = {}


class AdapterMethod:
    """One adapter method: its PEFT config, and which of its tensors clients train."""

    name: ClassVar[str]

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


def register(cls: type[AdapterMethod]) -> type[AdapterMethod]:
    _METHODS[cls.name] = cls()
    return cls


def method_names() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> AdapterMethod:
    if name not in _METHODS:
        raise ConfigError(f"unknown adapter method {name!r}; choose one of {method_names()}")
    return _METHODS[name]
