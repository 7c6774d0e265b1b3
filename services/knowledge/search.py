"""Knowledge-base search: query encoding, exact or approximate (HNSW) vector search, optional
hybrid BM25 scoring, and extractive snippets.

Exact search is one matrix-vector product over the contiguous float32 matrix of all vectors
(numpy's einsum loop, single-threaded: a multi-threaded BLAS call per query is slower and
erratic when concurrent requests share the cores).
From `approx_min_vectors` rows on, an HNSW graph (faiss) proposes candidates
that are re-scored exactly. With `bm25_weight` w > 0 a row scores
`cosine + w * strength * (1 - cosine)` (`combine`; strength: the BM25 score saturated to
[0, 1), see bm25.py), and the best BM25 rows join the candidates. FAQ entries have one row
per question; the best row of an item stands for it.

Chinese (CJK) rows and queries: the packaged encoder (all-MiniLM-L6-v2) is English-only and
gives Chinese texts cosines of 0.7 to 0.9 whatever they say, so a query with Chinese in it
(`is_cjk`) is scored by keywords alone, over the CJK rows only (their own BM25, whose terms
are characters and character pairs: bm25.py), and an English query never gets a CJK row
(their cosines with English queries are as meaningless). English rows and queries are
searched exactly as before: the English BM25 is built over the non-CJK rows only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from services.common.cjk import HAN_OR_KANA, OTHER_SCRIPT_WORD
from services.knowledge.bm25 import Bm25
from services.knowledge.encoder import SentenceEncoder
from services.knowledge.errors import IndexLoadError
from services.knowledge.index import (
    ANN_FILE,
    ENCODER_FILE,
    TOKENIZER_FILE,
    IndexData,
    Item,
    load_index,
)
from services.knowledge.source import Button

DEFAULT_K = 5
_CJK = HAN_OR_KANA
MIN_CJK = 2


_OTHER_WORD = OTHER_SCRIPT_WORD


def is_cjk(text: str) -> bool:
    """Whether `text` is (mostly) Chinese or Japanese: at least `MIN_CJK` CJK characters,
    and more of them than words in other scripts (`支持Google Pay吗` is; `Beijing 北京 branch`
    is not)."""
    cjk = len(_CJK.findall(text))
    return cjk >= MIN_CJK and cjk > len(_OTHER_WORD.findall(text))
DEFAULT_SNIPPET_SENTENCES = 2


@dataclass(frozen=True)
class SearchOptions:
    approx_min_vectors: int = 20_000
    """Indexes with at least this many vectors are searched through the HNSW graph."""
    expansion_search: int = 256
    min_candidates: int = 40
    """HNSW candidates re-scored exactly per query (at least k plus FAQ question variants)."""
    threads: int = 1
    """onnxruntime intra-op threads of the query encoder."""


@dataclass(frozen=True)
class Hit:
    kind: str
    id: str
    score: float
    document: str
    heading_path: tuple[str, ...]
    position: int
    text: str
    snippet: str
    title: str
    url: str | None
    buttons: tuple[Button, ...]


class AnnIndex:
    """HNSW graph over the rows (faiss IndexHNSWFlat, inner product); ids are row numbers."""

    CONNECTIVITY = 16

    def __init__(self, index: Any) -> None:
        self._index = index

    @classmethod
    def build(cls, vectors: np.ndarray, expansion_search: int) -> AnnIndex:
        index = faiss.IndexHNSWFlat(vectors.shape[1], cls.CONNECTIVITY,
                                    faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 40
        index.hnsw.efSearch = expansion_search
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return cls(index)

    @classmethod
    def restore(cls, path: Path, rows: int, dim: int, expansion_search: int) -> AnnIndex | None:
        """The saved graph, or None when it is unreadable or does not match the vectors."""
        try:
            index = faiss.read_index(str(path))
        except RuntimeError:  # faiss reports a bad file as RuntimeError
            return None
        if index.ntotal != rows or index.d != dim or not hasattr(index, "hnsw"):
            return None
        index.hnsw.efSearch = expansion_search
        return cls(index)

    def save(self, path: Path) -> None:
        faiss.write_index(self._index, str(path))

    def candidates(self, query: np.ndarray, count: int) -> np.ndarray:
        _, ids = self._index.search(query.reshape(1, -1).astype(np.float32), count)
        found: np.ndarray = ids[0][ids[0] >= 0].astype(np.int64)
        return found


class Searcher:
    """Searches one loaded index. Thread-safe for concurrent `search` calls."""

    def __init__(self, data: IndexData, encoder: SentenceEncoder | None,
                 options: SearchOptions | None = None, ann: AnnIndex | None = None) -> None:
        self.data = data
        self.encoder = encoder
        self.options = options or SearchOptions()
        settings = data.metadata.get("settings", {})
        self.bm25_weight = float(settings.get("bm25_weight", 0.0))
        self.snippet_sentences = int(settings.get("snippet_sentences",
                                                  DEFAULT_SNIPPET_SENTENCES))
        texts = data.row_texts()
        cjk = np.array([is_cjk(text) for text in texts], dtype=bool)
        self._cjk_rows = np.flatnonzero(cjk)
        self._other_rows = np.flatnonzero(~cjk)
        self.has_cjk = bool(len(self._cjk_rows))
        # English: as before, over the rows without CJK text (all of them in most bots)
        self.bm25 = (_SubsetBm25(texts, self._other_rows) if self.bm25_weight > 0
                     else None)
        self.bm25_cjk = _SubsetBm25(texts, self._cjk_rows) if self.has_cjk else None
        self.rows = len(data.row_items)
        self._extra_rows = self.rows - len(data.items)
        self.ann = ann
        if self.ann is None and self.rows >= self.options.approx_min_vectors:
            self.ann = AnnIndex.build(data.vectors, self.options.expansion_search)

    @classmethod
    def load(cls, directory: Path, options: SearchOptions | None = None) -> Searcher:
        """Load an index directory; raises IndexLoadError."""
        options = options or SearchOptions()
        data = load_index(directory)
        encoder_meta = data.metadata["encoder"]
        encoder = SentenceEncoder(directory / ENCODER_FILE, directory / TOKENIZER_FILE,
                                  int(encoder_meta.get("max_length", 256)), options.threads)
        if data.vectors.shape[0] and encoder.dim != data.vectors.shape[1]:
            raise IndexLoadError(f"{directory}: encoder dimension {encoder.dim} does not match "
                                 f"the vectors' {data.vectors.shape[1]}")
        ann = None
        if len(data.row_items) >= options.approx_min_vectors and (directory / ANN_FILE).is_file():
            ann = AnnIndex.restore(directory / ANN_FILE, len(data.row_items),
                                   data.vectors.shape[1], options.expansion_search)
        return cls(data, encoder, options, ann)

    @property
    def version(self) -> str:
        return self.data.version

    @property
    def mode(self) -> str:
        return "approx" if self.ann is not None else "exact"

    def search(self, query: str, k: int = DEFAULT_K) -> list[Hit]:
        """The best `k` items for `query`, best first."""
        if self.encoder is None:
            raise RuntimeError("this searcher has no encoder; use search_vector")
        if self.rows == 0 or k <= 0:
            return []
        return self.search_vector(self.encoder.encode_one(query), query, k)

    def search_vector(self, vector: np.ndarray, query: str, k: int = DEFAULT_K, *,
                      approximate: bool | None = None) -> list[Hit]:
        """The best `k` items for an encoded query (`query` feeds BM25); `approximate`
        forces a mode (None: the index's mode)."""
        rows, scores = self.ranked_rows(vector, query, k, approximate=approximate)
        return [self._hit(int(r), float(s), vector, query)
                for r, s in zip(rows, scores, strict=True)]

    def ranked_rows(self, vector: np.ndarray, query: str, k: int, *,
                    approximate: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the best `k` distinct items and their scores, best first."""
        if self.rows == 0 or k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        wanted = min(self.rows, k + self._extra_rows)
        use_ann = self.ann is not None if approximate is None else approximate
        if use_ann:
            candidates, scores = self._approximate(vector, query, wanted)
        else:
            candidates, scores = self._exact(vector, query, wanted)
        return self._distinct(candidates, scores, k)

    def _exact(self, vector: np.ndarray, query: str,
               wanted: int) -> tuple[np.ndarray, np.ndarray]:
        if self.has_cjk:
            scores = self._by_script(vector, query)
        else:
            scores = _dot(self.data.vectors, vector)
            if self.bm25 is not None:
                scores = combine(scores, self.bm25.strengths(query), self.bm25_weight)
        if wanted < len(scores):
            top = np.argpartition(-scores, wanted - 1)[:wanted]
        else:
            top = np.arange(len(scores))
        return top, scores[top]

    def _approximate(self, vector: np.ndarray, query: str,
                     wanted: int) -> tuple[np.ndarray, np.ndarray]:
        if self.ann is None:
            self.ann = AnnIndex.build(self.data.vectors, self.options.expansion_search)
        count = min(self.rows, max(wanted, self.options.min_candidates))
        if self.has_cjk:  # the CJK rows' scores come from BM25: no graph needed for them
            scores = self._by_script(vector, query)
            top = np.argpartition(-scores, wanted - 1)[:wanted] if wanted < self.rows \
                else np.arange(self.rows)
            return top, scores[top]
        candidates = self.ann.candidates(vector, count)
        lexical = None
        if self.bm25 is not None:
            lexical = self.bm25.strengths(query)
            best = np.argpartition(-lexical, wanted - 1)[:wanted] if wanted < self.rows \
                else np.arange(self.rows)
            candidates = np.union1d(candidates, best[lexical[best] > 0])
        scores = _dot(self.data.vectors[candidates], vector)
        if lexical is not None:
            scores = combine(scores, lexical[candidates], self.bm25_weight)
        return candidates, scores

    def _by_script(self, vector: np.ndarray, query: str) -> np.ndarray:
        """Every row's score in an index with CJK rows: a CJK query's keyword strength over
        the CJK rows, an other query's (hybrid) cosine over the other rows; -1 elsewhere."""
        scores = np.full(self.rows, -1.0, dtype=np.float32)
        if is_cjk(query):
            if self.bm25_cjk is not None:
                covered = self.bm25_cjk.coverage(query)[self._cjk_rows]
                scores[self._cjk_rows] = 1 - (1 - covered) ** 2  # onto the cosines' scale
            return scores
        rows = self._other_rows
        dense = _dot(self.data.vectors[rows], vector)
        if self.bm25 is not None:
            dense = combine(dense, self.bm25.strengths(query)[rows], self.bm25_weight)
        scores[rows] = dense
        return scores

    def _distinct(self, rows: np.ndarray, scores: np.ndarray,
                  k: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(-scores, kind="stable")
        chosen: list[int] = []
        seen: set[int] = set()
        for index in order:
            item = int(self.data.row_items[rows[index]])
            if item not in seen:
                seen.add(item)
                chosen.append(int(index))
                if len(chosen) == k:
                    break
        return rows[chosen], scores[chosen].astype(np.float32)

    def _hit(self, row: int, score: float, vector: np.ndarray, query: str = "") -> Hit:
        item = self.data.items[int(self.data.row_items[row])]
        if item.kind == "faq":
            question = item.questions[int(self.data.row_variants[row])]
            return Hit(item.kind, item.id, score, item.document, (question,), item.position,
                       item.text, item.text, item.title, item.url, item.buttons)
        return Hit(item.kind, item.id, score, item.document, item.heading_path, item.position,
                   item.text, self.snippet(item, vector, query), item.title, item.url,
                   item.buttons)

    def snippet(self, item: Item, vector: np.ndarray, query: str = "") -> str:
        """The `snippet_sentences` sentences of the passage most similar to the query, in
        passage order. With hybrid scoring on, a sentence holding the query's words that set it
        apart from the passage's other sentences (a product code in one row of a table) is
        raised towards 1 (`combine` at full weight): within one passage the words say more
        about which sentence answers than the small semantic differences do."""
        spans = item.sentences
        if len(spans) <= self.snippet_sentences:
            return " ".join(item.text[a:b] for a, b in spans) or item.text
        block = self.data.sentence_vectors[item.sentence_row:item.sentence_row + len(spans)]
        similarity = block @ vector
        if is_cjk(query) and is_cjk(item.text):  # keywords only: the cosines are noise here
            similarity = np.zeros(len(spans), dtype=np.float32)
        if (self.bm25 is not None or self.has_cjk) and query:
            strength = Bm25.strengths_in(query, [item.text[a:b] for a, b in spans])
            similarity = combine(similarity, strength, SNIPPET_KEYWORD_WEIGHT)
        best = np.argsort(-similarity, kind="stable")[:self.snippet_sentences]
        return " ".join(item.text[spans[i][0]:spans[i][1]] for i in sorted(int(b) for b in best))


SNIPPET_KEYWORD_WEIGHT = 1.0


class _SubsetBm25:
    """BM25 over some rows only (`rows`); strengths are given for every row, 0 elsewhere."""

    def __init__(self, texts: list[str], rows: np.ndarray) -> None:
        self._rows = rows
        self._bm25 = Bm25([texts[int(r)] for r in rows])
        self._size = len(texts)

    def strengths(self, query: str) -> np.ndarray:
        result = np.zeros(self._size, dtype=np.float32)
        if len(self._rows):
            result[self._rows] = self._bm25.strengths(query)
        return result

    def coverage(self, query: str) -> np.ndarray:
        result = np.zeros(self._size, dtype=np.float32)
        if len(self._rows):
            result[self._rows] = self._bm25.coverage(query)
        return result


def combine(cosine: np.ndarray, strength: np.ndarray, weight: float) -> np.ndarray:
    """Hybrid score: the cosine, raised towards 1 by the keyword strength (bm25.py):
    `cosine + weight * strength * (1 - cosine)`. Without a keyword match it is the cosine."""
    result: np.ndarray = (cosine + weight * strength * (1 - cosine)).astype(np.float32)
    return result


def _dot(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """`matrix @ vector` on the calling thread."""
    result: np.ndarray = np.einsum("ij,j->i", matrix, vector)
    return result
