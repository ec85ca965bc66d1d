"""What counts as a word for next-word suggestions, on decoded token strings: shared by the
PyTorch metrics (core/training/next_word.py) and the torch-free device suggestions
(device/generate.py), so both bars suggest the same kind of word.

Words are `WORD` matches: runs of Unicode letters and digits with inner apostrophes kept
(`don't` is one word; punctuation is never a word). A token starts a word when it decodes
to a space and a word character (byte-level BPE tokenizers such as SmolLM2's and GPT-2's
mark word starts with a leading space); it continues one when it decodes to a word
character first.
"""

from __future__ import annotations

import re

import numpy as np

WORD = re.compile(r"\w+(?:['’]\w+)*")
CONTINUES_WORD = re.compile(r"[\w'’]")
TOP_K = 3  # the suggestions a keyboard shows


def starts_word(decoded: str) -> bool:
    return len(decoded) > 1 and decoded[0] == " " and bool(CONTINUES_WORD.match(decoded[1])) and decoded[1] not in "'’"


def continues_word(decoded: str) -> bool:
    return bool(CONTINUES_WORD.match(decoded))


def fit_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A vocabulary mask sized to a model's logits (embedding rows past the tokenizer: never words)."""
    return mask[:size] if len(mask) >= size else np.concatenate([mask, np.zeros(size - len(mask), bool)])
