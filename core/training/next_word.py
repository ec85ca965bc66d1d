"""Next-word metrics of a causal LM: what a keyboard's suggestion bar would get right.

Words are core/training/words.py `WORD` matches. A word is scored when a space comes
before it and it is not the row's first word (with no BOS token the first word has no
context). The keyboard procedure is: take the k most likely tokens that start a word,
complete each greedily while the most likely next token continues the word, show the k
words. Teacher forcing gives the same answer from the one forward pass that perplexity
needs (measured: 605/605 words agreed with explicit generation, 16-28x cheaper, in
docs/development.md): a word is a top-k hit iff its first token is among the k most
likely word-start tokens, each later token is the argmax at its position, and the argmax
after its last token does not continue it.

Written here because no library scores word-level suggestions of a subword LM.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from .words import TOP_K, WORD, continues_word, fit_mask, starts_word


@dataclass
class NextWordScore:
    """Sums over rows, so scores of batches and clients add up."""

    loss_sum: float = 0.0  # cross-entropy summed over predicted tokens
    tokens: int = 0
    words: int = 0         # scored words
    top1: int = 0
    top3: int = 0

    def add(self, other: NextWordScore) -> None:
        for name in ("loss_sum", "tokens", "words", "top1", "top3"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@lru_cache(maxsize=4)
def vocabulary_masks(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(word-start, word-continuation) masks over the tokenizer's ids, built once per tokenizer."""
    size = len(tokenizer)
    decoded = [tokenizer.convert_tokens_to_string([t]) for t in tokenizer.convert_ids_to_tokens(list(range(size)))]
    starts = torch.tensor([starts_word(d) for d in decoded])
    continues = torch.tensor([continues_word(d) for d in decoded])
    return starts, continues


def _fit(mask: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.from_numpy(fit_mask(mask.numpy(), vocab))


def word_spans(text: str, offsets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(first, last) token index of every scored word of a row, from the tokenizer's
    character offsets; words cut off by truncation are not scored."""
    ends = [end for _, end in offsets]
    spans = []
    for match in WORD.finditer(text):
        start, end = match.span()
        if start == 0 or text[start - 1] != " ":
            continue
        first = bisect.bisect_right(ends, start - 1)  # the first token ending after the space
        last = bisect.bisect_left(ends, end)          # the token that ends the word
        if first == 0 or last >= len(offsets) or ends[last] != end or offsets[first][0] >= end:
            continue
        spans.append((first, last))
    return spans


@torch.no_grad()
def score_rows(model: torch.nn.Module, tokenizer, texts: list[str], max_length: int) -> NextWordScore:
    """Perplexity sums and word hits of one batch of rows, in one forward pass."""
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt",
                    return_offsets_mapping=True)
    offsets = enc.pop("offset_mapping").tolist()
    device = next(model.parameters()).device
    ids, attention = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    logits = model(input_ids=ids, attention_mask=attention).logits.float()
    predicted = logits[:, :-1]
    target = ids[:, 1:].masked_fill(attention[:, 1:] == 0, -100)
    loss_sum = F.cross_entropy(predicted.reshape(-1, predicted.shape[-1]), target.reshape(-1),
                               ignore_index=-100, reduction="sum")
    score = NextWordScore(float(loss_sum), int((target != -100).sum()))

    starts, continues = (_fit(m, logits.shape[-1]).to(device) for m in vocabulary_masks(tokenizer))
    argmax = logits.argmax(-1)
    candidates = []  # (row, first token position, last token position) of words that start as words do
    for row, (text, row_offsets) in enumerate(zip(texts, offsets)):
        spans = word_spans(text, row_offsets[:int(attention[row].sum())])
        score.words += len(spans)  # a word tokenized unlike a word start is scored, and missed
        candidates += [(row, first, last) for first, last in spans if starts[ids[row, first]]]
    if not candidates:
        return score
    rows = torch.tensor([c[0] for c in candidates], device=device)
    firsts = torch.tensor([c[1] for c in candidates], device=device)
    before_word = logits[rows, firsts - 1].masked_fill(~starts, float("-inf"))
    rank = (before_word > before_word.gather(1, ids[rows, firsts].unsqueeze(1))).sum(1)  # 0: the most likely start
    for (row, first, last), place in zip(candidates, rank.tolist()):
        if place >= TOP_K:
            continue
        completes = all(int(argmax[row, p - 1]) == int(ids[row, p]) for p in range(first + 1, last + 1))
        if completes and not continues[argmax[row, last]]:
            score.top3 += 1
            score.top1 += place == 0
    return score


@torch.no_grad()
def final_word_places(model: torch.nn.Module, tokenizer, texts: list[str], max_length: int) -> list[int | None]:
    """Per row, where the suggestion bar shows the row's final word after the text before it:
    0 (first suggestion) to TOP_K - 1, or None when it is not shown (the test score_rows
    makes, for one word). Rows are cut from the left to `max_length` tokens, so the bar sees
    the latest context. A backdoor's success is this on rows that end with its trigger and
    target word (simulations/attacks.py)."""
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt",
                        return_offsets_mapping=True)
    finally:
        tokenizer.truncation_side = side
    offsets = enc.pop("offset_mapping").tolist()
    device = next(model.parameters()).device
    ids, attention = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    logits = model(input_ids=ids, attention_mask=attention).logits.float()
    starts, continues = (_fit(m, logits.shape[-1]).to(device) for m in vocabulary_masks(tokenizer))
    argmax = logits.argmax(-1)
    places: list[int | None] = []
    for row, (text, row_offsets) in enumerate(zip(texts, offsets)):
        words = list(WORD.finditer(text))
        spans = word_spans(text, row_offsets[:int(attention[row].sum())])
        place = None
        if words and spans and row_offsets[spans[-1][1]][1] == words[-1].end() and starts[ids[row, spans[-1][0]]]:
            first, last = spans[-1]
            before_word = logits[row, first - 1].masked_fill(~starts, float("-inf"))
            rank = int((before_word > before_word[ids[row, first]]).sum())
            completes = all(int(argmax[row, p - 1]) == int(ids[row, p]) for p in range(first + 1, last + 1))
            if rank < TOP_K and completes and not continues[argmax[row, last]]:
                place = rank
        places.append(place)
    return places
