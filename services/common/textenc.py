"""Tokenisation and BIO alignment shared by NLU training and serving.

Training and serving must agree on how a text is split into words and word pieces, so both
use these functions over a `tokenizers.Tokenizer` (the model directory's `tokenizer.json`).

A *word* is one piece of the tokenizer's pre-tokenisation (BERT splits on whitespace and
punctuation). A word's BIO tag is predicted on its first word piece; the other pieces and
the special tokens carry the ignore label (-100) in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Encoding, Tokenizer

IGNORE_LABEL = -100
OUTSIDE = "O"


@dataclass(frozen=True)
class Word:
    """One pre-tokenised word: its first word-piece index and its char span."""

    first_token: int
    start: int
    end: int


@dataclass(frozen=True)
class Span:
    """A labelled char span [start, end) of a text."""

    start: int
    end: int
    entity: str


def load_tokenizer(path: str | Path, max_length: int) -> Tokenizer:
    """Load `tokenizer.json`, truncating to `max_length` and padding to the batch's longest."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=max_length)
    pad_id = tokenizer.token_to_id("[PAD]")
    tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    return tokenizer


def words(encoding: Encoding) -> list[Word]:
    """The words of an encoding, in order, with the char span covered by all their pieces."""
    result: list[Word] = []
    current: int | None = None
    pairs = zip(encoding.word_ids, encoding.offsets, strict=True)
    for index, (word_id, (start, end)) in enumerate(pairs):
        if word_id is None:
            continue
        if word_id != current:
            result.append(Word(first_token=index, start=start, end=end))
            current = word_id
        else:
            last = result[-1]
            result[-1] = Word(first_token=last.first_token, start=last.start, end=end)
    return result


def bio_tags(entities: Sequence[str]) -> list[str]:
    """The BIO tag set for the given entity names: `O`, then B-/I- per entity, sorted."""
    tags = [OUTSIDE]
    for name in sorted(set(entities)):
        tags.extend((f"B-{name}", f"I-{name}"))
    return tags


def word_tags(encoding: Encoding, spans: Sequence[Span]) -> list[tuple[Word, str]]:
    """Each word with its BIO tag given gold char spans: the first word overlapping a span
    is B-, the following words overlapping the same span are I-."""
    tagged: list[tuple[Word, str]] = []
    previous: int | None = None
    for word in words(encoding):
        index = _overlapping(spans, word)
        if index is None:
            tagged.append((word, OUTSIDE))
        else:
            prefix = "I" if index == previous else "B"
            tagged.append((word, f"{prefix}-{spans[index].entity}"))
        previous = index
    return tagged


def _overlapping(spans: Sequence[Span], word: Word) -> int | None:
    for index, span in enumerate(spans):
        if word.start < span.end and word.end > span.start:
            return index
    return None


def token_labels(encoding: Encoding, spans: Sequence[Span], tag_to_id: dict[str, int]) -> list[int]:
    """Per-token training labels: the word's tag id on its first piece, IGNORE elsewhere.

    Tags unknown to `tag_to_id` fall back to `O`."""
    labels = [IGNORE_LABEL] * len(encoding.ids)
    for word, tag in word_tags(encoding, spans):
        labels[word.first_token] = tag_to_id.get(tag, tag_to_id[OUTSIDE])
    return labels


def decode_spans(encoding: Encoding, token_tags: Sequence[str]) -> list[Span]:
    """Spans from per-token tags (read on each word's first piece), BIO repaired leniently.

    An I- tag that does not continue an open span of the same entity starts a new span.
    """
    spans: list[Span] = []
    open_entity: str | None = None
    for word in words(encoding):
        tag = token_tags[word.first_token]
        if tag == OUTSIDE or "-" not in tag:
            open_entity = None
            continue
        prefix, entity = tag.split("-", 1)
        if prefix == "I" and open_entity == entity and spans:
            last = spans[-1]
            spans[-1] = Span(start=last.start, end=word.end, entity=entity)
        else:
            spans.append(Span(start=word.start, end=word.end, entity=entity))
        open_entity = entity
    return spans
