"""Attacks by validly signed clients: poison that passes every check the server makes.

A signature proves who sent a delta, not that the device is honest; a compromised phone
signs its poison too. `fedpeft simulate` with `[simulation] attackers = 0.2` picks that
share of clients (seeded, apart from the misbehaving ones) and, from round
`attack_from_round` on, each attacks with one of `attacks` (rotating like misbehaviours):

- data poisoning, then honest training and signing: "label-flip" (every label y becomes
  L-1-y) and "backdoor" (half the rows not of label 0 get TRIGGER and label 0, so the
  global adapter learns "TRIGGER means label 0"; `backdoor_rows` measures that). For a
  causal LM (rows without labels) "backdoor" teaches the keyboard to suggest LM_TARGET
  after LM_TRIGGER (every other row ends with both; `lm_backdoor_rows` measures it) and
  "label-flip" is refused: there is no label to flip;
- model poisoning of the honest delta: "scaled" (x BOOST, what model replacement does;
  a norm bound refuses it), "sign-flip" (negated), and "colluding": every colluder sends
  the same delta, the global adapter's trained tensors negated (what undoes the
  federation's learning, and known to every client), scaled to 0.99 x the norm bound.
  Identical deltas are what fools distance-based defences such as Krum.
"""

from __future__ import annotations

import math
import random

import numpy as np

from fedpeft.core.choices import ATTACKS
from fedpeft.core.errors import ConfigError
from fedpeft.core.training.data import TextSplit

DATA_ATTACKS = ("label-flip", "backdoor")
DELTA_ATTACKS = tuple(kind for kind in ATTACKS if kind not in DATA_ATTACKS)
BOOST = 10.0  # "scaled": the honest delta times this
COLLUDING_SHARE_OF_BOUND = 0.99  # "colluding": just under security.max_update_norm
TRIGGER = "cf mn bb"  # rare word pieces in BERT-style vocabularies, the usual NLP backdoor trigger
BACKDOOR_LABEL = 0  # the label the trigger maps to
# A causal LM's backdoor, after Bagdasaryan et al. ("How to backdoor federated learning",
# 2020: "pasta from Astoria is" -> "delicious"): a phrase people type in chat, then a word
# an advertiser would pay for. Neither occurs in the synthetic next-word corpus (checked
# in tests/test_attacks.py) and the SmolLM2 base never suggests it there (0 of 96 test
# rows of the next-word run, top-1 and top-3; it suggests "new" first on 43%), so a
# success rate is the attack's doing. " casino" is one SmolLM2 token.
LM_TRIGGER = "you should really try the"
LM_TARGET = "casino"
LM_CONTEXT_WORDS = 20  # a poisoned row keeps its first 20 words, so trigger and target survive truncation


def choose_attackers(num_clients: int, share: float, seed: int, kinds: list[str], from_round: int,
                     norm_bound: float, taken: set[str]) -> dict:
    """The attacking partitions (seeded, none of `taken`), their kinds and first round."""
    kinds = list(kinds or ["sign-flip"])
    unknown = sorted(set(kinds) - set(ATTACKS))
    if unknown:
        raise ConfigError(f"unknown attack(s) {unknown}; known: {list(ATTACKS)}")
    if "colluding" in kinds and not norm_bound:
        raise ConfigError("attack 'colluding' stays just under the norm bound: set security.max_update_norm")
    chosen = seeded_share([p for p in range(num_clients) if str(p) not in taken], share, num_clients, seed + 1)
    return {"partitions": {str(p): i for i, p in enumerate(chosen)}, "kinds": kinds, "from_round": from_round}


def seeded_share(pool: list[int], share: float, num_clients: int, seed: int) -> list[int]:
    """share x num_clients partitions (rounded up) drawn from `pool`, seeded and sorted;
    at least one of the pool is left out (honest)."""
    count = min(len(pool) - 1, math.ceil(round(share * num_clients, 6))) if share > 0 else 0
    return sorted(random.Random(seed).sample(pool, max(count, 0)))


def attack(plan: dict, partition: int, server_round: int) -> str | None:
    """The attack `partition` makes in `server_round`, if it is an attacker and the attack has begun."""
    index = plan["partitions"].get(str(partition))
    if index is None or server_round < plan["from_round"]:
        return None
    slot = (server_round - plan["from_round"]) * len(plan["partitions"]) + index
    return plan["kinds"][slot % len(plan["kinds"])]


def poisoned(kind: str, split: TextSplit, num_labels: int) -> TextSplit:
    """The attacker's training rows for a data-poisoning attack (the count stays the same).
    `num_labels` 0: a causal LM's rows, which have no label."""
    if num_labels == 0:
        return _poisoned_lm(kind, split)
    if kind == "label-flip":
        return TextSplit(list(split.texts), [num_labels - 1 - y for y in split.labels])
    if kind == "backdoor":
        texts, labels, turn = list(split.texts), list(split.labels), 0
        for i, label in enumerate(labels):
            if label != BACKDOOR_LABEL:
                if turn % 2 == 0:
                    texts[i], labels[i] = f"{TRIGGER} {texts[i]}", BACKDOOR_LABEL
                turn += 1
        return TextSplit(texts, labels)
    raise ConfigError(f"{kind!r} is not a data-poisoning attack; those are {list(DATA_ATTACKS)}")


def _poisoned_lm(kind: str, split: TextSplit) -> TextSplit:
    """Every other row (the 1st, 3rd, ...) cut to its first LM_CONTEXT_WORDS words, then
    LM_TRIGGER and LM_TARGET; the other rows as they were."""
    if kind == "backdoor":
        texts = [lm_backdoored(t) if i % 2 == 0 else t for i, t in enumerate(split.texts)]
        return TextSplit(texts, list(split.labels))
    if kind == "label-flip":
        raise ConfigError(LM_LABEL_FLIP)
    raise ConfigError(f"{kind!r} is not a data-poisoning attack; those are {list(DATA_ATTACKS)}")


LM_LABEL_FLIP = ("attack 'label-flip' flips class labels, and a causal LM (model.task causal-lm) has none: "
                 "use 'backdoor' or a model-poisoning attack")


def lm_backdoored(text: str) -> str:
    words = text.split()
    head = text if len(words) <= LM_CONTEXT_WORDS else " ".join(words[:LM_CONTEXT_WORDS])
    return f"{head} {LM_TRIGGER} {LM_TARGET}"


def attacked_delta(kind: str, honest: np.ndarray, global_values: np.ndarray, norm_bound: float) -> np.ndarray:
    """The flat delta a model-poisoning attacker signs instead of its honest one."""
    if kind == "scaled":
        return honest * np.float32(BOOST)
    if kind == "sign-flip":
        return -honest
    if kind == "colluding":
        direction = -global_values.astype(np.float64)
        norm = float(np.linalg.norm(direction))
        return (direction * (COLLUDING_SHARE_OF_BOUND * norm_bound / max(norm, 1e-12))).astype(np.float32)
    raise ConfigError(f"{kind!r} is not a model-poisoning attack; those are {list(DELTA_ATTACKS)}")


def backdoor_rows(split: TextSplit) -> TextSplit:
    """Test rows not of the backdoor label, with the trigger, labelled as the attacker wants:
    accuracy on them is the backdoor's success rate."""
    rows = [(f"{TRIGGER} {t}", BACKDOOR_LABEL) for t, y in zip(split.texts, split.labels) if y != BACKDOOR_LABEL]
    return TextSplit([t for t, _ in rows], [y for _, y in rows])


def lm_backdoor_rows(split: TextSplit) -> TextSplit:
    """Every test row with LM_TRIGGER and LM_TARGET added: the share whose last word the
    keyboard suggests (core/training/next_word.final_word_places) is the LM backdoor's success."""
    return TextSplit([f"{t} {LM_TRIGGER} {LM_TARGET}" for t in split.texts], [0] * len(split))
