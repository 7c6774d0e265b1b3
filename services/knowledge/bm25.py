"""BM25 over the indexed texts, for hybrid scoring (rare words: product codes, names).

Postings are kept per term as arrays of (row, weight) with the BM25 term weight precomputed,
so scoring a query is one scatter-add per query term. `normalised_scores` divides by the
query's ideal score (each query term matched once in a document of average length), clipped
to 1: a query whose words are all in a document scores about 1, one whose words are in no
document scores 0. That keeps scores comparable between queries, as a threshold needs.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

_TOKEN = re.compile(r"[^\W_]+(?:[-./][^\W_]+)*")
_PART = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
    """Lowercased words; a compound like `XG-400` or `v2.1` yields itself and its parts."""
    tokens: list[str] = []
    for match in _TOKEN.finditer(text.lower()):
        word = match.group(0)
        tokens.append(word)
        if not word.isalnum():
            tokens.extend(_PART.findall(word))
    return tokens


class Bm25:
    def __init__(self, texts: Sequence[str], k1: float = 1.2, b: float = 0.75) -> None:
        self.size = len(texts)
        self.k1 = k1
        counts = [Counter(tokenize(t)) for t in texts]
        lengths = np.array([sum(c.values()) for c in counts], dtype=np.float32)
        average = float(lengths.mean()) if self.size and lengths.mean() > 0 else 1.0
        norms = k1 * (1 - b + b * lengths / average)
        rows: dict[str, list[int]] = {}
        tfs: dict[str, list[int]] = {}
        for row, counter in enumerate(counts):
            for term, count in counter.items():
                rows.setdefault(term, []).append(row)
                tfs.setdefault(term, []).append(count)
        self._postings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for term, term_rows in rows.items():
            index = np.array(term_rows, dtype=np.int64)
            freq = np.array(tfs[term], dtype=np.float32)
            weight = self.idf(len(term_rows)) * freq * (k1 + 1) / (freq + norms[index])
            self._postings[term] = (index, weight.astype(np.float32))

    def idf(self, document_frequency: int) -> float:
        n = self.size
        return math.log(1 + (n - document_frequency + 0.5) / (document_frequency + 0.5))

    def scores(self, query: str) -> np.ndarray:
        """Raw BM25 score of every row, `[size]` float32."""
        result = np.zeros(self.size, dtype=np.float32)
        for term in set(tokenize(query)):
            posting = self._postings.get(term)
            if posting is not None:
                result[posting[0]] += posting[1]
        return result

    def ideal(self, query: str) -> float:
        """The score of a document of average length holding each query term once."""
        total = 0.0
        for term in set(tokenize(query)):
            posting = self._postings.get(term)
            total += self.idf(0 if posting is None else len(posting[0]))
        return total

    def normalised_scores(self, query: str) -> np.ndarray:
        """Scores divided by `ideal(query)`, clipped to [0, 1]; all 0 for a query without words."""
        ideal = self.ideal(query)
        if ideal <= 0:
            return np.zeros(self.size, dtype=np.float32)
        result: np.ndarray = np.minimum(self.scores(query) / ideal, 1.0).astype(np.float32)
        return result
