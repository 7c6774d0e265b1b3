"""`botfactory kb build`: embed a bot's knowledge base and write a versioned index directory
(docs/knowledge.md), atomically."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from botfactory.kb.encoder import ExportedEncoder, exported_encoder
from botfactory.kb.settings import read_bot_knowledge
from botfactory.training.export import staging_dir
from services.knowledge.encoder import SentenceEncoder
from services.knowledge.index import (
    ANN_FILE,
    ENCODER_FILE,
    FAQ_DOCUMENT,
    TOKENIZER_FILE,
    IndexData,
    Item,
    passage_context,
    write_index,
)
from services.knowledge.search import AnnIndex, SearchOptions, is_cjk
from services.knowledge.source import KnowledgeBase, load_knowledge
from services.knowledge.splitting import sentence_spans

KNOWLEDGE_DIR = "knowledge"
DEFAULT_CACHE = Path(".botfactory/cache/kb-encoder")


@dataclass(frozen=True)
class BuildOptions:
    base_model: str | None = None
    cache_dir: Path = DEFAULT_CACHE
    approx_min_vectors: int = SearchOptions().approx_min_vectors
    threads: int = 2
    progress: bool = True


@dataclass(frozen=True)
class BuildResult:
    directory: Path
    metadata: dict[str, Any]
    warnings: tuple[str, ...]


def default_out(bot: str) -> Path:
    """Next to the NLU model of `make run`: `.botfactory/models/<bot>.kb`."""
    return Path(".botfactory/models") / f"{bot}.kb"


def build_index(bot_dir: Path, out_dir: Path | None = None,
                options: BuildOptions | None = None) -> BuildResult:
    """Load, validate, embed and write; raises KnowledgeFormatError for bad input and
    TrainingError when the encoder cannot be exported or fails its checks."""
    options = options or BuildOptions()
    bot = read_bot_knowledge(bot_dir)
    knowledge = load_knowledge(bot_dir / KNOWLEDGE_DIR)
    for warning in knowledge.warnings:
        _say(options.progress, f"warning: {KNOWLEDGE_DIR}/{warning}")
    exported = exported_encoder(options.cache_dir, options.base_model, progress=options.progress)
    encoder = exported.load(options.threads)
    _say(options.progress, f"embedding {len(knowledge.faq)} FAQ entries and "
                           f"{len(knowledge.passages)} passages")
    data = embed(knowledge, encoder)
    data.metadata = _metadata(bot.bot, knowledge, exported, bot.max_sentences, data)
    target = out_dir or default_out(bot.bot)
    with staging_dir(target) as staging:
        shutil.copy(exported.model_path, staging / ENCODER_FILE)
        shutil.copy(exported.tokenizer_path, staging / TOKENIZER_FILE)
        metadata = write_index(staging, data)
        if len(data.row_items) >= options.approx_min_vectors:
            _say(options.progress, f"building the HNSW graph over {len(data.row_items)} vectors")
            AnnIndex.build(data.vectors, SearchOptions().expansion_search).save(
                staging / ANN_FILE)
    return BuildResult(target, metadata, knowledge.warnings)


def embed(knowledge: KnowledgeBase, encoder: SentenceEncoder) -> IndexData:
    """Items, rows and vectors of a knowledge base (metadata left empty)."""
    items, rows, texts, sentences = _items(knowledge)
    vectors = encode_apart(encoder, texts)
    sentence_vectors = encode_apart(encoder, sentences)
    row_array = np.array(rows, dtype=np.int64).reshape(-1, 2)
    return IndexData({}, items, row_array[:, 0].copy(), row_array[:, 1].copy(), vectors,
                     sentence_vectors)


def encode_apart(encoder: SentenceEncoder, texts: list[str]) -> np.ndarray:
    """`encoder.encode(texts)`, with the CJK texts (search.is_cjk) in batches of their own:
    the int8 encoder quantizes each batch's activations by the batch's own range, so a
    Chinese text in a batch would move the vectors of the English ones beside it (adding
    Chinese documents must leave the English search as it was)."""
    cjk = [i for i, text in enumerate(texts) if is_cjk(text)]
    if not cjk:
        return encoder.encode(texts)
    chosen = set(cjk)
    other = [i for i in range(len(texts)) if i not in chosen]
    result = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    if other:
        result[other] = encoder.encode([texts[i] for i in other])
    result[cjk] = encoder.encode([texts[i] for i in cjk])
    return result


def _items(knowledge: KnowledgeBase) -> tuple[list[Item], list[tuple[int, int]], list[str],
                                              list[str]]:
    items: list[Item] = []
    rows: list[tuple[int, int]] = []
    texts: list[str] = []
    sentences: list[str] = []
    for position, entry in enumerate(knowledge.faq):
        for variant, question in enumerate(entry.questions):
            rows.append((len(items), variant))
            texts.append(question)
        items.append(Item("faq", f"faq:{entry.id}", FAQ_DOCUMENT, entry.questions[0], (),
                          position, entry.answer, entry.url, entry.buttons, entry.questions))
    for passage in knowledge.passages:
        spans = tuple(sentence_spans(passage.text))
        rows.append((len(items), -1))
        texts.append(passage_context(passage.title, passage.heading_path, passage.text))
        items.append(Item("passage", f"{passage.document}#{passage.position}", passage.document,
                          passage.title, passage.heading_path, passage.position, passage.text,
                          passage.url, (), (), spans, len(sentences)))
        sentences.extend(passage.text[a:b] for a, b in spans)
    return items, rows, texts, sentences


def _metadata(bot: str, knowledge: KnowledgeBase, exported: ExportedEncoder,
              snippet_sentences: int, data: IndexData) -> dict[str, Any]:
    return {
        "bot": bot,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "base_model": exported.base_model,
        "encoder": {"max_length": exported.max_length, "dim": exported.dim,
                    "pooling": "mean", "normalised": True, "quantization": "int8 dynamic",
                    "base_hash": exported.base_hash, "checks": exported.checks},
        "counts": {"documents": len(knowledge.documents), "passages": len(knowledge.passages),
                   "faq_entries": len(knowledge.faq),
                   "faq_questions": sum(len(e.questions) for e in knowledge.faq),
                   "vectors": len(data.row_items), "sentences": len(data.sentence_vectors)},
        "settings": {"max_passage_chars": knowledge.settings.max_passage_chars,
                     "bm25_weight": knowledge.settings.bm25_weight,
                     "snippet_sentences": snippet_sentences},
        "warnings": list(knowledge.warnings),
    }


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)
