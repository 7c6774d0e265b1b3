"""Training data checks, no encoder needed: exact and near duplicates, conflicting labels and
frozen-test-set leaks across every data file of a bot.

- exact duplicates: the same normalised text (case, punctuation and spacing ignored) more
  than once with the same labels;
- conflicts: the same normalised text with different intents, or with the same intent and
  different entity annotations (label, annotated words);
- near duplicates: word-set Jaccard similarity >= `threshold` (default 0.8) between different
  normalised texts; with different intents they are reported as possible conflicts;
- leaks: frozen test set texts (tests/nlu.yml) that are also training examples.

Near duplicates are found with prefix filtering (each text indexed under its rarest words;
two texts with Jaccard >= t must share one of those), so a 10,000-example bot takes a second,
not the hours of comparing every pair.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from services.botdef import Example
from services.common.reviewqueue import normalize_text

DEFAULT_THRESHOLD = 0.8


@dataclass(frozen=True)
class Occurrence:
    text: str
    intent: str
    entities: tuple[tuple[str, str], ...]
    """(entity, annotated words) pairs, in text order."""


@dataclass(frozen=True)
class NearPair:
    a: Occurrence
    b: Occurrence
    similarity: float

    @property
    def conflicting(self) -> bool:
        return self.a.intent != self.b.intent


@dataclass
class DataReport:
    examples: int
    duplicates: list[list[Occurrence]] = field(default_factory=list)
    conflicts: list[list[Occurrence]] = field(default_factory=list)
    near: list[NearPair] = field(default_factory=list)
    leaks: list[Occurrence] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Conflicting labels or frozen-set leaks: the data must be fixed."""
        return bool(self.conflicts or self.leaks)

    def to_json(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "duplicates": [[asdict(o) for o in group] for group in self.duplicates],
            "conflicts": [[asdict(o) for o in group] for group in self.conflicts],
            "near_duplicates": [{"a": asdict(p.a), "b": asdict(p.b),
                                 "similarity": round(p.similarity, 3),
                                 "conflicting": p.conflicting} for p in self.near],
            "leaks": [asdict(o) for o in self.leaks],
            "failed": self.failed,
        }


def occurrence(example: Example) -> Occurrence:
    spans = tuple((s.entity, normalize_text(example.text[s.start:s.end]))
                  for s in sorted(example.entities, key=lambda s: s.start))
    return Occurrence(example.text, example.intent, spans)


def check(examples: Sequence[Example], *, frozen: Sequence[Example] = (),
          threshold: float = DEFAULT_THRESHOLD) -> DataReport:
    report = DataReport(examples=len(examples))
    groups: dict[str, list[Occurrence]] = defaultdict(list)
    for example in examples:
        groups[normalize_text(example.text)].append(occurrence(example))
    for group in groups.values():
        if len(group) < 2:
            continue
        labels = {(o.intent, o.entities) for o in group}
        (report.conflicts if len(labels) > 1 else report.duplicates).append(group)
    report.near = near_duplicates({k: g[0] for k, g in groups.items()}, threshold)
    report.leaks = [occurrence(e) for e in frozen if normalize_text(e.text) in groups]
    return report


def near_duplicates(texts: dict[str, Occurrence], threshold: float) -> list[NearPair]:
    """Pairs of distinct normalised texts with word-set Jaccard >= threshold."""
    sets = {text: frozenset(text.split()) for text in texts if text}
    frequency = Counter(word for words in sets.values() for word in words)
    index: dict[str, list[str]] = defaultdict(list)
    candidates: set[tuple[str, str]] = set()
    for text, words in sorted(sets.items()):
        ordered = sorted(words, key=lambda w: (frequency[w], w))
        prefix = len(ordered) - math.ceil(threshold * len(ordered)) + 1
        for word in ordered[:prefix]:
            candidates.update((other, text) for other in index[word])
            index[word].append(text)
    pairs = []
    for a, b in candidates:
        similarity = len(sets[a] & sets[b]) / len(sets[a] | sets[b])
        if similarity >= threshold:
            pairs.append(NearPair(texts[a], texts[b], similarity))
    return sorted(pairs, key=lambda p: (not p.conflicting, -p.similarity, p.a.text, p.b.text))
