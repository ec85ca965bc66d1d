"""Next-word metrics (core/training/next_word.py) on a tiny Llama with SmolLM2's real vocabulary.

The teacher-forced score must equal what a keyboard does (suggest the 3 likeliest word
starts, complete each greedily), which is written out here the slow way, independently."""

import pytest
import torch
from conftest import train_tiny_lm

from fedpeft.core.training.data import TextSplit
from fedpeft.core.training.loop import evaluate_next_word
from fedpeft.core.training.next_word import TOP_K, WORD, score_rows, vocabulary_masks, word_spans

STEPS = 15
ROWS = [
    "see you at the station tomorrow morning",
    "the station is closed on sunday, sorry!",
    "don't forget the tickets for the concert",
    "we're meeting at the cafe near the station",
    "tomorrow morning works for me, see you there",
    "call me when you're at the cafe",
]


@pytest.fixture(scope="module")
def tiny_lm(tiny_llama_dir):
    """The tiny Llama after STEPS full-parameter steps on ROWS[:4]: sure of some words of ROWS, not all."""
    return train_tiny_lm(tiny_llama_dir, ROWS[:4], STEPS)


def keyboard(model, tokenizer, context: torch.Tensor, steps: int = 8) -> list[str]:
    """The suggestion bar: the TOP_K likeliest word-start tokens, each completed greedily
    while the likeliest next token continues the word."""
    starts, continues = vocabulary_masks(tokenizer)
    vocab = model.config.vocab_size
    starts = torch.cat([starts, torch.zeros(vocab - len(starts), dtype=torch.bool)])[:vocab]
    with torch.no_grad():
        first = model(input_ids=context[None]).logits[0, -1].masked_fill(~starts, float("-inf")).topk(TOP_K).indices
        words = []
        for token in first.tolist():
            word = [token]
            for _ in range(steps):
                following = int(model(input_ids=torch.cat([context, torch.tensor(word)])[None]).logits[0, -1].argmax())
                if following >= len(continues) or not continues[following]:
                    break
                word.append(following)
            words.append(tokenizer.decode(word).strip())
    return words


def test_teacher_forced_scores_equal_the_keyboard_procedure(tiny_lm):
    model, tokenizer = tiny_lm
    top1 = top3 = words = 0
    for text in ROWS:
        enc = tokenizer(text, return_offsets_mapping=True)
        ids = torch.tensor(enc["input_ids"])
        spans = word_spans(text, enc["offset_mapping"])
        for first, last in spans:
            word = tokenizer.decode(ids[first:last + 1]).strip()
            suggestions = keyboard(model, tokenizer, ids[:first])
            top1 += suggestions[0] == word
            top3 += word in suggestions
            words += 1
    with torch.no_grad():
        score = score_rows(model, tokenizer, ROWS, max_length=64)
    assert (score.words, score.top1, score.top3) == (words, top1, top3)
    assert 0 < score.top1 < score.top3 < score.words, score  # hits and misses: the comparison says something


def test_words_are_split_as_documented(tiny_lm):
    _, tokenizer = tiny_lm
    text = "hi, don't go to 'the' station... ok? café 42"
    assert WORD.findall(text) == ["hi", "don't", "go", "to", "the", "station", "ok", "café", "42"]
    enc = tokenizer(text, return_offsets_mapping=True)
    scored = [tokenizer.decode(enc["input_ids"][f:l + 1]).strip() for f, l in word_spans(text, enc["offset_mapping"])]
    # not the first word (no context), not 'the' (a quote, not a space, before it)
    assert scored == ["don't", "go", "to", "station", "ok", "café", "42"]


def test_truncated_words_are_not_scored(tiny_lm):
    _, tokenizer = tiny_lm
    text = ROWS[0]
    whole = len(word_spans(text, tokenizer(text, return_offsets_mapping=True)["offset_mapping"]))
    cut = tokenizer(text, truncation=True, max_length=4, return_offsets_mapping=True)["offset_mapping"]
    assert 0 < len(word_spans(text, cut)) < whole


def test_perplexity_is_the_models_own_token_loss(tiny_lm):
    """Batched, padded scoring gives the loss the model computes row by row."""
    model, tokenizer = tiny_lm
    result = evaluate_next_word(model, tokenizer, TextSplit(ROWS, [0] * len(ROWS)), max_length=64)
    losses, tokens = 0.0, 0
    with torch.no_grad():
        for text in ROWS:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            losses += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
            tokens += ids.shape[1] - 1
    assert result.loss == pytest.approx(losses / tokens, rel=1e-4)
    assert result.examples == len(ROWS) and 0 < result.top1 <= result.accuracy < 1
