"""The on-disk knowledge index (docs/knowledge.md): written by `botfactory kb build`, read by
the NLU service.

    metadata.json      format, kind "knowledge", bot, version, counts, settings, encoder
    entries.json       {"items": [...], "rows": [[item, variant], ...]}
    vectors.npy        float32 [rows, dim], L2-normalised: FAQ questions and passages
    sentences.npy      float32 [sentences, dim]: the passages' sentences (snippets)
    encoder.int8.onnx  the sentence encoder (mean pooling + L2 norm inside), int8
    tokenizer.json     its tokenizer
    ann.faiss          optional HNSW graph over vectors.npy (large indexes)

The version is the first 12 hex digits of sha256 over the files but metadata.json and the
HNSW graph (derived from vectors.npy, rebuilt when absent), in name order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.knowledge.errors import IndexLoadError
from services.knowledge.source import Button

INDEX_FORMAT = 1
KIND = "knowledge"
METADATA_FILE = "metadata.json"
ENTRIES_FILE = "entries.json"
VECTORS_FILE = "vectors.npy"
SENTENCES_FILE = "sentences.npy"
ENCODER_FILE = "encoder.int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
ANN_FILE = "ann.faiss"
REQUIRED_FILES = (METADATA_FILE, ENTRIES_FILE, VECTORS_FILE, SENTENCES_FILE, ENCODER_FILE,
                  TOKENIZER_FILE)
UNHASHED = (METADATA_FILE, ANN_FILE)
FAQ_DOCUMENT = "faq.yml"


@dataclass(frozen=True)
class Item:
    """One searchable unit: an FAQ entry (`kind` "faq") or a document passage ("passage").

    `sentences` are [start, end) spans of `text`; their vectors are the rows
    `sentence_row ..` of sentences.npy. `questions` are an FAQ entry's variants."""

    kind: str
    id: str
    document: str
    title: str
    heading_path: tuple[str, ...]
    position: int
    text: str
    url: str | None = None
    buttons: tuple[Button, ...] = ()
    questions: tuple[str, ...] = ()
    sentences: tuple[tuple[int, int], ...] = ()
    sentence_row: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "document": self.document,
                "title": self.title, "heading_path": list(self.heading_path),
                "position": self.position, "text": self.text, "url": self.url,
                "buttons": [{"title": b.title, "payload": b.payload} for b in self.buttons],
                "questions": list(self.questions),
                "sentences": [list(s) for s in self.sentences],
                "sentence_row": self.sentence_row}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Item:
        return cls(str(raw["kind"]), str(raw["id"]), str(raw["document"]), str(raw["title"]),
                   tuple(raw["heading_path"]), int(raw["position"]), str(raw["text"]),
                   raw.get("url"), tuple(Button(b["title"], b["payload"])
                                         for b in raw.get("buttons", ())),
                   tuple(raw.get("questions", ())),
                   tuple((int(a), int(b)) for a, b in raw.get("sentences", ())),
                   int(raw.get("sentence_row", 0)))

    def row_text(self, variant: int) -> str:
        """What a vector row stands for: an FAQ question (+ answer) or the passage in context."""
        if self.kind == "faq":
            return f"{self.questions[variant]}\n{self.answer_text}"
        return passage_context(self.title, self.heading_path, self.text)

    @property
    def answer_text(self) -> str:
        return self.text


def passage_context(title: str, heading_path: Sequence[str], text: str) -> str:
    """The text embedded for a passage: title and headings, then the passage."""
    headings = [title, *(h for h in heading_path if h != title)]
    return " / ".join(headings) + "\n" + text


@dataclass
class IndexData:
    """A loaded index: items, the vector row -> (item, variant) map and the matrices."""

    metadata: dict[str, Any]
    items: list[Item]
    row_items: np.ndarray
    row_variants: np.ndarray
    vectors: np.ndarray
    sentence_vectors: np.ndarray
    directory: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bot(self) -> str:
        return str(self.metadata.get("bot", ""))

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", ""))

    def row_texts(self) -> list[str]:
        return [self.items[i].row_text(int(v))
                for i, v in zip(self.row_items, self.row_variants, strict=True)]


def index_version(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.iterdir()
                       if p.is_file() and p.name not in UNHASHED):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def write_index(directory: Path, data: IndexData) -> dict[str, Any]:
    """Write the entries and matrices of `data` into `directory` (which holds the encoder
    files already), then metadata.json with the computed version; returns the metadata."""
    entries = {"items": [item.to_json() for item in data.items],
               "rows": [[int(i), int(v)] for i, v in
                        zip(data.row_items, data.row_variants, strict=True)]}
    (directory / ENTRIES_FILE).write_text(json.dumps(entries, ensure_ascii=False),
                                          encoding="utf-8")
    np.save(directory / VECTORS_FILE, np.ascontiguousarray(data.vectors, dtype=np.float32))
    np.save(directory / SENTENCES_FILE,
            np.ascontiguousarray(data.sentence_vectors, dtype=np.float32))
    metadata = {"format": INDEX_FORMAT, "kind": KIND, **data.metadata,
                "version": index_version(directory)}
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2, ensure_ascii=False)
                                           + "\n", encoding="utf-8")
    return metadata


def read_metadata(directory: Path) -> dict[str, Any]:
    try:
        metadata = json.loads((directory / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexLoadError(f"{directory}: no readable {METADATA_FILE}: {exc}") from exc
    if not isinstance(metadata, dict) or metadata.get("kind") != KIND:
        raise IndexLoadError(f"{directory}: not a knowledge index (kind "
                             f"{metadata.get('kind') if isinstance(metadata, dict) else None!r})")
    if metadata.get("format") != INDEX_FORMAT:
        raise IndexLoadError(f"{directory}: index format {metadata.get('format')!r} is not "
                             f"supported (this version reads format {INDEX_FORMAT})")
    for key in ("bot", "version", "encoder"):
        if key not in metadata:
            raise IndexLoadError(f"{directory}/{METADATA_FILE}: missing {key!r}")
    return metadata


def load_index(directory: Path, *, verify_version: bool = True) -> IndexData:
    """Read and check an index directory; raises IndexLoadError."""
    if not directory.is_dir():
        raise IndexLoadError(f"{directory}: not an index directory")
    missing = [n for n in REQUIRED_FILES if not (directory / n).is_file()]
    if missing:
        raise IndexLoadError(f"{directory}: missing {', '.join(missing)}")
    metadata = read_metadata(directory)
    if verify_version and index_version(directory) != metadata["version"]:
        raise IndexLoadError(f"{directory}: content does not match version "
                             f"{metadata['version']}")
    try:
        entries = json.loads((directory / ENTRIES_FILE).read_text(encoding="utf-8"))
        items = [Item.from_json(raw) for raw in entries["items"]]
        rows = np.array(entries["rows"], dtype=np.int64).reshape(-1, 2)
        vectors = np.load(directory / VECTORS_FILE, allow_pickle=False)
        sentence_vectors = np.load(directory / SENTENCES_FILE, allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IndexLoadError(f"{directory}: corrupt index: {exc}") from exc
    data = IndexData(metadata, items, rows[:, 0].copy(), rows[:, 1].copy(),
                     np.ascontiguousarray(vectors, dtype=np.float32),
                     np.ascontiguousarray(sentence_vectors, dtype=np.float32), directory)
    check_consistent(data, str(directory))
    return data


def check_consistent(data: IndexData, where: str) -> None:
    """Shapes and references agree; raises IndexLoadError."""
    rows, items = len(data.row_items), len(data.items)
    if data.vectors.ndim != 2 or data.vectors.shape[0] != rows:
        raise IndexLoadError(f"{where}: {data.vectors.shape} vectors for {rows} rows")
    if rows and (data.row_items.min() < 0 or data.row_items.max() >= items):
        raise IndexLoadError(f"{where}: a row refers to no item")
    dim = data.vectors.shape[1] if data.vectors.ndim == 2 else 0
    if data.sentence_vectors.ndim != 2 or (len(data.sentence_vectors)
                                           and data.sentence_vectors.shape[1] != dim):
        raise IndexLoadError(f"{where}: sentence vectors {data.sentence_vectors.shape} do not "
                             f"match dimension {dim}")
    for item in data.items:
        if item.sentence_row + len(item.sentences) > len(data.sentence_vectors):
            raise IndexLoadError(f"{where}: item {item.id} refers to missing sentence vectors")
