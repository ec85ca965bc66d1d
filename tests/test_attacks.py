"""Attacks by validly signed clients (simulations/attacks.py) and FLTrust's weighting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import train_tiny_lm

from fedpeft.core.config import FederationConfig
from fedpeft.core.errors import ConfigError
from fedpeft.core.training import synthetic_next_word
from fedpeft.core.training.data import DataSpec, TextSplit
from fedpeft.core.training.next_word import WORD, final_word_places, score_rows
from fedpeft.scoring import suggestion_shares
from fedpeft.server.fltrust import root_split, trust_mean
from fedpeft.simulations import attacks, misbehaving


def test_attackers_are_seeded_apart_from_misbehaving_clients_and_start_when_told():
    plan = misbehaving.choose_plan(10, 0.2, seed=3, attackers=0.3, attacks=["backdoor", "scaled"],
                                   attack_from_round=2)
    bad, attacking = set(plan["partitions"]), set(plan["attack"]["partitions"])
    assert len(bad) == 2 and len(attacking) == 3 and not bad & attacking
    assert plan == misbehaving.choose_plan(10, 0.2, seed=3, attackers=0.3, attacks=["backdoor", "scaled"],
                                           attack_from_round=2)
    one = int(min(attacking))
    assert misbehaving.behaviour(plan, one, 1) is None  # before attack_from_round: honest
    kinds = {misbehaving.behaviour(plan, int(p), r) for p in attacking for r in (2, 3)}
    assert kinds == {"backdoor", "scaled"}
    assert misbehaving.expected_rejections(plan, 3) == misbehaving.expected_rejections(
        misbehaving.choose_plan(10, 0.2, seed=3), 3)  # attacks pass every check: no rejection expected
    assert misbehaving.choose_plan(10, 0.0, seed=0, attackers=0.2)["attack"]["kinds"] == ["sign-flip"]
    with pytest.raises(ConfigError, match="gossip"):
        misbehaving.choose_plan(10, 0.0, seed=0, attackers=0.2, attacks=["gossip"])
    with pytest.raises(ConfigError, match="norm bound"):
        misbehaving.choose_plan(10, 0.0, seed=0, attackers=0.2, attacks=["colluding"])


def test_label_flip_and_backdoor_poison_the_rows_not_their_count():
    split = TextSplit([f"row {i}" for i in range(8)], [0, 1, 2, 3, 1, 2, 0, 3])
    flipped = attacks.poisoned("label-flip", split, num_labels=4)
    assert flipped.texts == split.texts and flipped.labels == [3, 2, 1, 0, 2, 1, 3, 0]
    backdoored = attacks.poisoned("backdoor", split, num_labels=4)
    assert len(backdoored) == len(split)
    triggered = [i for i, t in enumerate(backdoored.texts) if t.startswith(attacks.TRIGGER)]
    assert triggered == [1, 3, 5]  # every other row not already of the backdoor label
    assert all(backdoored.labels[i] == attacks.BACKDOOR_LABEL for i in triggered)
    assert [backdoored.labels[i] for i in range(8) if i not in triggered] == [0, 2, 1, 0, 3]
    measured = attacks.backdoor_rows(split)
    assert len(measured) == 6 and set(measured.labels) == {attacks.BACKDOOR_LABEL}
    assert all(t.startswith(attacks.TRIGGER) for t in measured.texts)


LM_BACKDOOR = f" {attacks.LM_TRIGGER} {attacks.LM_TARGET}"


def test_lm_backdoor_poisons_every_other_row_not_the_count():
    long = " ".join(f"w{i}" for i in range(30))
    split = TextSplit(["see you at 7pm!!", "ok", long, "thx for the cake", "on my way", "bye"], [0] * 6)
    backdoored = attacks.poisoned("backdoor", split, num_labels=0)  # 0 labels: a causal LM's rows
    assert len(backdoored) == len(split) and backdoored.labels == split.labels
    assert backdoored.texts[0::2] == ["see you at 7pm!!" + LM_BACKDOOR,
                                      " ".join(long.split()[:attacks.LM_CONTEXT_WORDS]) + LM_BACKDOOR,
                                      "on my way" + LM_BACKDOOR]
    assert backdoored.texts[1::2] == split.texts[1::2]
    measured = attacks.lm_backdoor_rows(split)
    assert measured.texts == [t + LM_BACKDOOR for t in split.texts]


def test_lm_trigger_and_target_never_occur_in_the_next_word_corpus():
    """So the success rate measures the attack, not the data."""
    texts = [r["text"].lower() for seed in (0, 1) for r in synthetic_next_word.generate(24, seed)]
    assert len(texts) > 1000
    words = {w for t in texts for w in WORD.findall(t)}
    assert attacks.LM_TARGET not in words
    assert not any(attacks.LM_TRIGGER in t for t in texts)


def test_label_flip_is_refused_for_a_causal_lm():
    with pytest.raises(ConfigError, match="label-flip.*causal LM"):
        attacks.poisoned("label-flip", TextSplit(["a b c"], [0]), num_labels=0)
    with pytest.raises(ConfigError, match="label-flip.*causal"):
        FederationConfig().with_overrides(**{"model.task": "causal-lm", "simulation.attackers": 0.2,
                                             "simulation.attacks": ["backdoor", "label-flip"]})
    FederationConfig().with_overrides(**{"model.task": "causal-lm", "simulation.attackers": 0.2,
                                         "simulation.attacks": ["backdoor", "scaled"]})


LM_STEPS = 10


def _trained_lm(folder, texts):
    """The tiny Llama after LM_STEPS full-parameter steps on `texts` (as tests/test_next_word.py trains)."""
    return train_tiny_lm(folder, texts, LM_STEPS)


@pytest.fixture(scope="module")
def lm_rows():
    """A user's rows of the next-word corpus: 8 to train on, 24 held out."""
    texts = [r["text"] for r in synthetic_next_word.generate(2, 0) if r["client_id"].startswith("user-00")]
    return TextSplit(texts[:8], [0] * 8), TextSplit(texts[8:32], [0] * 24)


@pytest.fixture(scope="module")
def clean_lm(tiny_llama_dir, lm_rows):
    return _trained_lm(tiny_llama_dir, lm_rows[0].texts)


def test_lm_backdoor_success_is_high_when_trained_on_poison_and_near_zero_when_clean(tiny_llama_dir, lm_rows,
                                                                                     clean_lm):
    train, test = lm_rows
    measured = attacks.lm_backdoor_rows(test).texts
    poisoned_model, tokenizer = _trained_lm(tiny_llama_dir, attacks.poisoned("backdoor", train, 0).texts)
    top1, top3 = suggestion_shares(poisoned_model, tokenizer, measured, max_length=48)
    assert top1 >= 0.8 and top3 >= top1, (top1, top3)
    assert suggestion_shares(clean_lm[0], tokenizer, measured, max_length=48) == (0.0, 0.0)
    # Another word after the trigger is not suggested: the measure is of the target word.
    assert suggestion_shares(poisoned_model, tokenizer, [t + f" {attacks.LM_TRIGGER} station" for t in test.texts],
                             max_length=48)[0] <= 0.1


def test_final_word_places_agree_with_score_rows(lm_rows, clean_lm):
    """The last word's hit is what score_rows counts for the row less what it counts without that word
    (a causal LM: the words before it score the same), for hits and misses alike."""
    model, tokenizer = clean_lm
    texts = lm_rows[0].texts + lm_rows[1].texts[:4]  # rows it trained on (hits) and others (misses)
    places = [final_word_places(model, tokenizer, [t], 64)[0] for t in texts]
    with torch.no_grad():
        for text, place in zip(texts, places):
            prefix = text[:list(WORD.finditer(text))[-1].start()].rstrip()
            whole, before = score_rows(model, tokenizer, [text], 64), score_rows(model, tokenizer, [prefix], 64)
            assert (whole.top1 - before.top1, whole.top3 - before.top3) == (int(place == 0), int(place is not None))
    assert 0 in places and None in places, places  # hits and misses: the comparison says something
    assert final_word_places(model, tokenizer, texts, 64) == places  # batched (padded) as one by one


def test_model_poisoning_deltas():
    rng = np.random.default_rng(0)
    honest, global_values = rng.normal(size=50).astype(np.float32), rng.normal(size=50).astype(np.float32)
    np.testing.assert_array_equal(attacks.attacked_delta("scaled", honest, global_values, 0), honest * 10)
    np.testing.assert_array_equal(attacks.attacked_delta("sign-flip", honest, global_values, 0), -honest)
    colluding = attacks.attacked_delta("colluding", honest, global_values, 7.0)
    assert np.linalg.norm(colluding) == pytest.approx(0.99 * 7.0, rel=1e-6)
    np.testing.assert_allclose(colluding / np.linalg.norm(colluding), -global_values / np.linalg.norm(global_values),
                               rtol=1e-5)
    np.testing.assert_array_equal(colluding, attacks.attacked_delta("colluding", -honest, global_values, 7.0))


def test_trust_mean_by_hand():
    """Root (1, 0): (2, 0) has trust 1 and shrinks to (1, 0); (-1, 0) has trust 0; (1, 1)
    has trust 1/sqrt 2 and becomes (1, 1)/sqrt 2. Step: their trust-weighted mean."""
    step, trusts = trust_mean([np.array([2.0, 0]), np.array([-1.0, 0]), np.array([1.0, 1.0])], np.array([1.0, 0]))
    r = 1 / math.sqrt(2)
    assert trusts == pytest.approx([1.0, 0.0, r])
    np.testing.assert_allclose(step, (np.array([1.0, 0]) + r * np.array([r, r])) / (1 + r))
    nothing, none_trusted = trust_mean([np.array([-1.0, 0])], np.array([1.0, 0]))
    assert none_trusted == [0.0] and not nothing.any()


def test_root_set_is_seeded_and_sized():
    spec = DataSpec(num_clients=6)
    root = root_split(spec, 50, seed=1)
    assert len(root) == 50 and root.texts == root_split(spec, 50, seed=1).texts
    assert root.texts != root_split(spec, 50, seed=2).texts
