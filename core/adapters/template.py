"""Adapter templates: a PEFT config plus its initial weights, identified by a hash.

The method (`methods/`: lora, ffa-lora, ia3, ...) decides the PEFT config and which
tensors clients train. For classification the new head (PEFT `modules_to_save`) is part
of the template, trained and sent too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fedpeft.core.trust.hashing import manifest_id, plain_json, tensor_manifest

from .methods import get_method
from .spec import TemplateSpec

if TYPE_CHECKING:
    import torch
    from peft import PeftModel

    from fedpeft.core.base.tasks import Task


@dataclass
class AdapterTemplate:
    method: str
    peft_config: dict[str, Any]
    labels: list[str]
    init: dict[str, np.ndarray] = field(repr=False)

    def description(self) -> dict[str, Any]:
        """Everything but the tensors: JSON that travels beside them."""
        return {"method": self.method, "peft_config": self.peft_config, "labels": self.labels}

    @classmethod
    def from_description(cls, description: dict[str, Any], init: dict[str, np.ndarray]) -> AdapterTemplate:
        return cls(description["method"], description["peft_config"], list(description["labels"]), dict(init))

    @property
    def manifest(self) -> dict[str, Any]:
        return {**self.description(), "tensors": tensor_manifest(self.init)}

    @property
    def template_id(self) -> str:
        return manifest_id(self.manifest)

    @property
    def trainable_names(self) -> list[str]:
        """Tensors clients train and send; under FFA-LoRA the A matrices stay home."""
        method = get_method(self.method)
        return [n for n in sorted(self.init) if method.trains(n)]

    def attach(self, model: torch.nn.Module) -> PeftModel:
        """Inject this adapter into a frozen base and load the template's initial weights."""
        # A deep copy: PEFT extends lists such as modules_to_save in place, which would
        # change this template's id.
        from peft import get_peft_config, get_peft_model

        from .state import set_adapter_arrays

        peft_model = get_peft_model(model, get_peft_config(copy.deepcopy(self.peft_config)))
        set_adapter_arrays(peft_model, self.init)
        get_method(self.method).freeze(peft_model)
        return peft_model


def create_template(model: torch.nn.Module, task: Task, spec: TemplateSpec, labels: list[str]) -> AdapterTemplate:
    """Inject `spec` into `model` with a fixed seed and record the initial adapter weights."""
    import torch
    from peft import get_peft_model

    from .state import get_adapter_arrays

    config = spec.peft_config(task)
    torch.manual_seed(spec.seed)
    for name in task.head_modules:  # the new head is part of the template: seed it too
        if hasattr(model, name):
            for module in getattr(model, name).modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    peft_model = get_peft_model(model, config)
    init = get_adapter_arrays(peft_model)
    peft_model.unload()  # give the caller its base back, without adapter layers
    return AdapterTemplate(method=spec.method, peft_config=_jsonable(config.to_dict()), labels=list(labels), init=init)


def _jsonable(config: dict[str, Any]) -> dict[str, Any]:
    def default(value: Any) -> Any:
        return sorted(value) if isinstance(value, (set, frozenset)) else str(value)

    return plain_json(config, default)
