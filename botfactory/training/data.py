"""Training data: labelled texts → encoded examples → padded batches; seeded splits.

Token labels come from `services.common.textenc` so that training and serving agree on
words, word pieces and BIO tags.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from tokenizers import Encoding, Tokenizer

from botfactory.training.errors import DataError
from services.botdef import Example
from services.common.textenc import IGNORE_LABEL, Span, bio_tags, token_labels

T = TypeVar("T")


@dataclass(frozen=True)
class LabeledText:
    """One training text: its class (intent or sentiment) and gold entity spans."""

    text: str
    label: str
    spans: tuple[Span, ...] = ()


@dataclass(frozen=True)
class Labels:
    """Output index → label: `intents` for the classification head, `tags` for the BIO head
    (empty for a classification-only model)."""

    intents: tuple[str, ...]
    tags: tuple[str, ...]

    @property
    def has_tags(self) -> bool:
        return bool(self.tags)

    def to_json(self) -> dict[str, list[str]]:
        return {"intents": list(self.intents), "tags": list(self.tags)}


@dataclass(frozen=True)
class Encoded:
    """One example as the model sees it (unpadded)."""

    text: LabeledText
    encoding: Encoding
    label_id: int
    tag_labels: tuple[int, ...]  # per token; IGNORE_LABEL on non-first pieces and specials

    @property
    def ids(self) -> list[int]:
        return list(self.encoding.ids)


@dataclass(frozen=True)
class Batch:
    """Padded tensors for one batch (int64)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    tag_labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def from_examples(examples: Iterable[Example]) -> list[LabeledText]:
    """Bot-definition examples → labelled texts (entity spans sorted by start)."""
    result = []
    for example in examples:
        spans = sorted((Span(s.start, s.end, s.entity) for s in example.entities),
                       key=lambda s: (s.start, s.end))
        result.append(LabeledText(example.text, example.intent, tuple(spans)))
    return result


def make_labels(texts: Sequence[LabeledText], *, with_tags: bool) -> Labels:
    """Sorted class names; with tags, the BIO set of the entities annotated in the texts."""
    if not texts:
        raise DataError("no training examples")
    intents = tuple(sorted({t.label for t in texts}))
    if len(intents) < 2:
        raise DataError(f"need at least 2 classes to train, found {list(intents)}")
    tags: tuple[str, ...] = ()
    if with_tags:
        tags = tuple(bio_tags([s.entity for t in texts for s in t.spans]))
    return Labels(intents=intents, tags=tags)


def encode(texts: Sequence[LabeledText], tokenizer: Tokenizer, labels: Labels) -> list[Encoded]:
    """Tokenise each text on its own (truncated to the tokenizer's max length, unpadded)."""
    label_ids = {name: index for index, name in enumerate(labels.intents)}
    tag_ids = {name: index for index, name in enumerate(labels.tags)}
    encoded = []
    for text in texts:
        encoding = tokenizer.encode(text.text)
        if labels.has_tags:
            tag_labels = token_labels(encoding, text.spans, tag_ids)
        else:
            tag_labels = [IGNORE_LABEL] * len(encoding.ids)
        try:
            label_id = label_ids[text.label]
        except KeyError as exc:
            raise DataError(f"unknown label {text.label!r} in {text.text!r}") from exc
        encoded.append(Encoded(text, encoding, label_id, tuple(tag_labels)))
    return encoded


def pad_id_of(tokenizer: Tokenizer) -> int:
    """The id padding uses (`[PAD]`, else 0), as `textenc.load_tokenizer` sets it."""
    padding = tokenizer.padding
    if padding is not None:
        return int(padding["pad_id"])
    pad = tokenizer.token_to_id("[PAD]")
    return 0 if pad is None else pad


def collate(items: Sequence[Encoded], pad_id: int, min_length: int = 0) -> Batch:
    """Pad to the longest item (at least `min_length`): pad id, mask 0, labels ignored."""
    length = max(min_length, *(len(item.encoding.ids) for item in items))
    ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    tags = torch.full((len(items), length), IGNORE_LABEL, dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item.encoding.ids)
        ids[row, :n] = torch.tensor(item.encoding.ids, dtype=torch.long)
        mask[row, :n] = 1
        tags[row, :n] = torch.tensor(item.tag_labels, dtype=torch.long)
    labels = torch.tensor([item.label_id for item in items], dtype=torch.long)
    return Batch(ids, mask, labels, tags)


def batches(items: Sequence[Encoded], batch_size: int, pad_id: int, *,
            generator: torch.Generator | None = None) -> list[Batch]:
    """Batches in order, or shuffled with `generator` (deterministic for a seeded one)."""
    order = list(range(len(items)))
    if generator is not None:
        order = torch.randperm(len(items), generator=generator).tolist()
    return [collate([items[i] for i in order[start:start + batch_size]], pad_id)
            for start in range(0, len(order), batch_size)]


def stratified_split(items: Sequence[T], key: Callable[[T], str], fraction: float,
                     seed: int) -> tuple[list[T], list[T]]:
    """Split into (train, held-out), about `fraction` of each class held out.

    At least one example of every class stays in training (a class with one example is
    not held out at all). Both parts keep the input order; the choice depends only on
    `seed` and the input."""
    rng = random.Random(seed)
    held: set[int] = set()
    for _, indices in sorted(_groups(items, key).items()):
        count = min(len(indices) - 1, int(len(indices) * fraction + 0.5))
        if count > 0:
            rng.shuffle(indices)
            held.update(indices[:count])
    train = [item for i, item in enumerate(items) if i not in held]
    heldout = [item for i, item in enumerate(items) if i in held]
    return train, heldout


def stratified_sample(items: Sequence[T], key: Callable[[T], str], size: int,
                      seed: int) -> list[T]:
    """A seeded subsample of `size` items keeping the class proportions (largest remainders),
    in input order. Returns all items when `size` is not smaller."""
    if size >= len(items):
        return list(items)
    groups = sorted(_groups(items, key).items())
    quotas = {name: size * len(indices) // len(items) for name, indices in groups}
    remainders = sorted(groups, key=lambda g: (-(size * len(g[1]) % len(items)), g[0]))
    for name, _ in remainders[: size - sum(quotas.values())]:
        quotas[name] += 1
    rng = random.Random(seed)
    chosen: set[int] = set()
    for name, indices in groups:
        rng.shuffle(indices)
        chosen.update(indices[: quotas[name]])
    return [item for i, item in enumerate(items) if i in chosen]


def _groups(items: Sequence[T], key: Callable[[T], str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        groups[key(item)].append(index)
    return groups
