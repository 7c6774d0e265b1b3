"""Vocabulary extension: characters the base tokenizer cannot read get word pieces of their own.

all-MiniLM-L6-v2's WordPiece vocabulary lacks most Chinese characters (in CAIS train, 1,539 of
1,772 distinct characters are `[UNK]`), so a Chinese bot's texts reach the encoder as rows of
`[UNK]`. Training therefore looks at the words of the bot's training texts, as the tokenizer
splits them (BERT's pre-tokenizer isolates every CJK character; other scripts come as whole
words), and for every word that becomes `[UNK]` adds the pieces that spell it character by
character: its first character, and `##` + each following one. Pieces that already exist are
not added; the most frequent come first, at most `max_tokens`. English-only training data adds
nothing, and the tokenizer is then kept byte for byte.

The new ids follow the tokenizer's last id. The encoder's input embedding matrix grows by as
many rows, initialised to the mean of the existing rows plus seeded Gaussian noise with their
per-dimension spread (a plausible but distinct embedding for each new piece). While training,
the new rows are a parameter of their own (`AddedRows`), so the optimiser can give them their
own learning rate (`TrainConfig.added_token_learning_rate`); `merge` folds them back into one
`nn.Embedding` before export.

A warm start (`botfactory train --from`) begins with the parent's tokenizer, already extended
for the parent's data; characters new to it extend it further.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn

MAX_ADDED_TOKENS = 8000
"""At most this many pieces are added in one training (the most frequent first)."""


@dataclass(frozen=True)
class Extension:
    """What vocabulary extension found and did for one training."""

    tokens: tuple[str, ...]  # the pieces added, in id order
    first_id: int  # the id of tokens[0]
    unknown_words: int  # occurrences of [UNK] words in the training texts, before
    unknown_after: int  # ... and after the extension (the pieces the cap left out)
    left_out: int  # distinct pieces the cap left out
    reason: str | None = None  # why nothing could be added (a tokenizer that is not WordPiece)

    @property
    def added(self) -> int:
        return len(self.tokens)

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"added": self.added, "first_id": self.first_id,
                                  "unknown_words_before": self.unknown_words,
                                  "unknown_words_after": self.unknown_after,
                                  "left_out_by_cap": self.left_out,
                                  "sample": "".join(t.removeprefix("##")
                                                    for t in self.tokens[:20])}
        if self.reason is not None:
            record["reason"] = self.reason
        return record


def _wordpiece(tokenizer_json: dict[str, Any]) -> dict[str, Any] | None:
    model = tokenizer_json.get("model")
    if not isinstance(model, dict) or model.get("type") != "WordPiece":
        return None
    return model


def _words(tokenizer: Tokenizer, text: str) -> list[str]:
    normalized = text if tokenizer.normalizer is None else tokenizer.normalizer.normalize_str(text)
    if tokenizer.pre_tokenizer is None:
        return normalized.split()
    return [word for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalized)]


def find(tokenizer_bytes: bytes, texts: Iterable[str],
         max_tokens: int = MAX_ADDED_TOKENS) -> Extension:
    """The pieces to add so that the words of `texts` that the tokenizer maps to its unknown
    token get spelt instead (see the module docstring)."""
    document = json.loads(tokenizer_bytes)
    model = _wordpiece(document)
    tokenizer = Tokenizer.from_str(tokenizer_bytes.decode("utf-8"))
    next_id = _next_id(document, tokenizer)
    if model is None:
        return Extension((), next_id, 0, 0, 0, reason="the tokenizer is not WordPiece")
    unk = str(model.get("unk_token", "[UNK]"))
    prefix = str(model.get("continuing_subword_prefix", "##"))
    longest = int(model.get("max_input_chars_per_word", 100))
    vocab: dict[str, int] = model["vocab"]
    counts: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    cache: dict[str, bool] = {}
    for text in texts:
        for word in _words(tokenizer, text):
            if len(word) > longest:
                continue
            if word not in cache:
                cache[word] = [t.value for t in tokenizer.model.tokenize(word)] == [unk]
            if cache[word]:
                unknown[word] += 1
    for word, count in unknown.items():
        for piece in _spelling(word, prefix):
            if piece not in vocab:
                counts[piece] += count
    ranked = sorted(counts, key=lambda piece: -counts[piece])  # stable: first met first
    chosen = ranked[:max_tokens]
    kept = set(chosen) | set(vocab)
    after = sum(count for word, count in unknown.items()
                if not all(piece in kept for piece in _spelling(word, prefix)))
    return Extension(tuple(chosen), next_id, sum(unknown.values()), after,
                     max(0, len(ranked) - max_tokens))


def _spelling(word: str, prefix: str) -> list[str]:
    return [word[0], *(prefix + char for char in word[1:])]


def _next_id(document: dict[str, Any], tokenizer: Tokenizer) -> int:
    ids = [int(token["id"]) for token in document.get("added_tokens") or []]
    return max([tokenizer.get_vocab_size(with_added_tokens=True) - 1, *ids]) + 1


def extended_tokenizer(tokenizer_bytes: bytes, extension: Extension) -> bytes:
    """`tokenizer.json` with the extension's pieces appended to the WordPiece vocabulary (the
    same bytes when there are none)."""
    if not extension.tokens:
        return tokenizer_bytes
    document = json.loads(tokenizer_bytes)
    model = _wordpiece(document)
    if model is None:
        raise ValueError("only a WordPiece tokenizer can be extended")
    vocab: dict[str, int] = model["vocab"]
    for offset, token in enumerate(extension.tokens):
        vocab[token] = extension.first_id + offset
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


class AddedRows(nn.Module):
    """Word embeddings as two parameters while training: `base` (the encoder's rows, the
    padding index kept) and `added` (the rows of the added pieces, after them)."""

    def __init__(self, base: nn.Embedding, added: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.added = nn.Parameter(added)

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.base.weight, self.added])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(input_ids, self.weight, self.base.padding_idx)

    def merged(self) -> nn.Embedding:
        with torch.no_grad():
            weight = self.weight.detach().clone()
        embedding = nn.Embedding(weight.shape[0], weight.shape[1],
                                 padding_idx=self.base.padding_idx)
        embedding.weight = nn.Parameter(weight)
        return embedding


def extend_embeddings(encoder: Any, extension: Extension, seed: int) -> int:
    """Give `encoder` rows for the extension's ids (see the module docstring): the word
    embeddings become an `AddedRows` until `merge`. Returns the rows added."""
    if not extension.tokens:
        return 0
    embeddings = encoder.get_input_embeddings()
    if not isinstance(embeddings, nn.Embedding):
        raise ValueError("the encoder's input embeddings are not an nn.Embedding")
    rows = int(embeddings.weight.shape[0])
    needed = extension.first_id + extension.added - rows
    if needed <= 0:  # the matrix had spare rows (padded vocabularies)
        with torch.no_grad():
            start = extension.first_id
            embeddings.weight[start:start + extension.added] = _initial_rows(
                embeddings.weight[:start], extension.added, seed)
        return 0
    with torch.no_grad():
        added = _initial_rows(embeddings.weight.detach(), needed, seed)
    encoder.set_input_embeddings(AddedRows(embeddings, added))
    encoder.config.vocab_size = rows + needed
    return needed


def _initial_rows(existing: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mean = existing.mean(dim=0)
    std = existing.std(dim=0)
    noise = torch.randn((count, existing.shape[1]), generator=generator, dtype=existing.dtype)
    return mean + noise * std


def merge(encoder: Any) -> None:
    """Fold `AddedRows` back into one `nn.Embedding` (no-op without added rows)."""
    embeddings = encoder.get_input_embeddings()
    if isinstance(embeddings, AddedRows):
        encoder.set_input_embeddings(embeddings.merged())


def added_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The `added` rows of the model's `AddedRows` modules (their own learning rate)."""
    return [module.added for module in model.modules() if isinstance(module, AddedRows)]
