"""`ffa-lora`: FFA-LoRA (Sun et al., ICLR 2024).

A stays frozen at the template's seeded random init on every client, so averaging B
alone is averaging the products B x A exactly, and the upload halves. PEFT has no switch
for this; freezing A is ours.
"""

from __future__ import annotations

from .lora import LoRA


class FFALoRA(LoRA):
    def trains(self, tensor_name: str) -> bool:
        return ".lora_A." not in tensor_name


METHOD = FFALoRA()
