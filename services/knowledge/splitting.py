"""Passage and sentence splitting.

A section's paragraphs are packed into passages of at most `max_chars` characters; a paragraph
too long for one passage is split between sentences, and only a sentence longer than
`max_chars` is cut (at a word boundary).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9À-Ý])|\n+"
                           r"|(?<=[。！？；])[”’」』）]*\s*")
"""Where a sentence ends: `.`, `!`, `?` before a capital; a line break; Chinese `。！？；`
(no space follows them)."""


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """[start, end) character spans of the sentences of `text` (line breaks end sentences),
    stripped of surrounding whitespace, in order."""
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        _add_span(text, start, match.start(), spans)
        start = match.end()
    _add_span(text, start, len(text), spans)
    return spans


def _add_span(text: str, start: int, end: int, spans: list[tuple[int, int]]) -> None:
    piece = text[start:end]
    stripped = piece.strip()
    if stripped:
        offset = start + (len(piece) - len(piece.lstrip()))
        spans.append((offset, offset + len(stripped)))


def sentences(text: str) -> list[str]:
    return [text[a:b] for a, b in sentence_spans(text)]


def split_passages(paragraphs: tuple[str, ...] | list[str], max_chars: int) -> list[str]:
    """Pack paragraphs (joined by a blank line) into passages of at most `max_chars`."""
    passages: list[str] = []
    current = ""
    for piece in _pieces(paragraphs, max_chars):
        joined = f"{current}\n\n{piece}" if current else piece
        if len(joined) <= max_chars:
            current = joined
            continue
        if current:
            passages.append(current)
        current = piece
    if current:
        passages.append(current)
    return passages


def _pieces(paragraphs: tuple[str, ...] | list[str], max_chars: int) -> Iterator[str]:
    """Paragraphs that fit; longer ones as runs of whole sentences that fit."""
    for paragraph in paragraphs:
        if len(paragraph) <= max_chars:
            yield paragraph
            continue
        run = ""
        for sentence in _fitting_sentences(paragraph, max_chars):
            joined = f"{run} {sentence}" if run else sentence
            if len(joined) <= max_chars:
                run = joined
            else:
                yield run
                run = sentence
        if run:
            yield run


def _fitting_sentences(paragraph: str, max_chars: int) -> Iterator[str]:
    for sentence in sentences(paragraph):
        if len(sentence) <= max_chars:
            yield sentence
        else:
            yield from _cut(sentence, max_chars)


def _cut(text: str, max_chars: int) -> Iterator[str]:
    """Pieces of at most `max_chars`, cut at the last space before the limit when there is one."""
    while len(text) > max_chars:
        cut = text.rfind(" ", 0, max_chars + 1)
        if cut <= 0:
            cut = max_chars
        yield text[:cut].rstrip()
        text = text[cut:].lstrip()
    if text:
        yield text
