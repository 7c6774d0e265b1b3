"""BM25 over the indexed texts, for hybrid scoring (rare words: product codes, names).

Terms are lowercased words without English function words (`STOP_WORDS`): "I", "my", "do"
carry no topic, and in short texts such as FAQ questions they would otherwise make up most
of a keyword match. Postings are kept per term as arrays of (row, weight) with the BM25 term
weight precomputed, so scoring a query is one scatter-add per query term.

`strengths` maps the raw score to [0, 1) with a saturating transform on an absolute,
query-independent scale: `1 - exp(-score / unit)`, where `unit` is the weight of one term
found in a single row of average length (the rarest a term can be). One rare term matched
gives 0.63, two give 0.86; a word found in a third of the rows gives about 0.2. Unlike a
score divided by the query's best (or ideal) score, a weak match stays weak: a query whose
only indexed word is a common one gets a small strength, never a perfect one.

Chinese (and Japanese kanji) is written without spaces: a run of CJK characters is split
into its single characters and overlapping character pairs (`挂失银行卡` -> 挂 失 银 行 卡 挂失
失银 银行 行卡), minus `CJK_STOP_CHARS` (的, 了, 吗, 我, ...). On the banking bot's Chinese
questions (bots/banking/tests/kb_zh.yml) that retrieves as well as jieba's words and declines
better, with no dictionary (benchmarks/kb_zh.py compares them): a pair that is no word has a
high document frequency or matches nothing.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from services.common.cjk import HAN_OR_KANA_RUN

_TOKEN = re.compile(r"[^\W_]+(?:[-./][^\W_]+)*")
_CJK_RUN = HAN_OR_KANA_RUN
CJK_STOP_CHARS = frozenset("的了吗呢吧啊呀么嘛我你您他她它们是在有和与及或就都也还要会能可以该"
                           "怎样么什如何为哪里多少这那个一把被给对")
"""Chinese function characters left out of the unigrams (pairs keep them: 可以, 怎么)."""
_PART = re.compile(r"[^\W_]+")
_CONTRACTION = re.compile(r"[^\W_]+'[^\W_]+")

_STOP_WORDS_TEXT = """
a about above after again against all am an and any are aren't as at be because been before
being below between both but by can can't cannot could couldn't did didn't do does doesn't
doing don't down during each few for from further had hadn't has hasn't have haven't having
he her here hers herself him himself his how i if in into is isn't it it's its itself just
let's me might more most must my myself no nor not of off on once only or other ought our
ours ourselves out over own same shall she should shouldn't so some such than that that's
the their theirs them themselves then there there's these they this those through to too
under until up very was wasn't we were weren't what what's when where which while who whom
why will with won't would wouldn't you your yours yourself yourselves
hi hello please thanks thank ok okay s t d ll m re ve
"""
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())
"""English function words (and greeting filler) left out of BM25 terms."""


def tokenize(text: str) -> list[str]:
    """Lowercased words; a compound like `XG-400` or `v2.1` yields itself and its parts; a
    run of CJK characters its characters and character pairs (`cjk_terms`)."""
    tokens: list[str] = []
    spaced = _CJK_RUN.sub(lambda m: f" {m.group(0)} ", text.lower()) if _CJK_RUN.search(
        text) else text.lower()
    for match in _TOKEN.finditer(spaced):
        word = match.group(0)
        if _CJK_RUN.fullmatch(word):
            tokens.extend(_segment(word))
            continue
        tokens.append(word)
        if not word.isalnum():
            tokens.extend(_PART.findall(word))
    return tokens


def cjk_terms(run: str) -> list[str]:
    """The terms of a run of CJK characters: its characters but function characters, and
    its overlapping character pairs."""
    singles = [c for c in run if c not in CJK_STOP_CHARS]
    return singles + [run[i:i + 2] for i in range(len(run) - 1)]


_segment = cjk_terms
"""How `tokenize` splits CJK runs (benchmarks/kb_zh.py swaps in jieba to compare)."""


def terms(text: str) -> list[str]:
    """The BM25 terms of `text`: its tokens without stop words (contractions included)."""
    lowered = _CONTRACTION.sub(lambda m: " " if m.group(0) in STOP_WORDS else m.group(0),
                               text.lower().replace("\u2019", "'"))
    return [t for t in tokenize(lowered) if t not in STOP_WORDS]


class Bm25:
    def __init__(self, texts: Sequence[str], k1: float = 1.2, b: float = 0.75) -> None:
        self.size = len(texts)
        self.k1 = k1
        counts = [Counter(terms(t)) for t in texts]
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
        self.unit = self.idf(1)
        """Weight of a term found once in a single row of average length."""

    def idf(self, document_frequency: int) -> float:
        n = self.size
        return math.log(1 + (n - document_frequency + 0.5) / (document_frequency + 0.5))

    def scores(self, query: str) -> np.ndarray:
        """Raw BM25 score of every row, `[size]` float32."""
        result = np.zeros(self.size, dtype=np.float32)
        for term in set(terms(query)):
            posting = self._postings.get(term)
            if posting is not None:
                result[posting[0]] += posting[1]
        return result

    def coverage(self, query: str) -> np.ndarray:
        """How much of `query` each row holds, in [0, 1]: the row's BM25 score over the score
        of a row of average length holding each query term once, a term the index does not
        have counting as the rarest there can be (so "讲个笑话" matches little of any row when
        笑话 is found nowhere). Per row, capped at 1. The score of CJK queries, which have no
        meaningful cosine (search.py)."""
        unique = set(terms(query))
        ideal = sum(self.idf(len(self._postings[t][0])) if t in self._postings else self.unit
                    for t in unique)
        if ideal <= 0:
            return np.zeros(self.size, dtype=np.float32)
        result: np.ndarray = np.minimum(self.scores(query) / ideal, 1.0).astype(np.float32)
        return result

    def strengths(self, query: str) -> np.ndarray:
        """`1 - exp(-score / unit)` per row, in [0, 1); all 0 for a query without terms."""
        if self.unit <= 0:
            return np.zeros(self.size, dtype=np.float32)
        result: np.ndarray = (-np.expm1(-self.scores(query) / self.unit)).astype(np.float32)
        return result

    @staticmethod
    def strengths_in(query: str, texts: Sequence[str]) -> np.ndarray:
        """How strongly each of `texts` (the sentences of one passage) holds `query`'s terms,
        in [0, 1): the terms weighted by their rarity among these texts (a word every sentence
        has tells them apart by nothing; a product code in one sentence does), saturated as in
        `strengths` with the weight of a term found in a single text as the unit."""
        held = [set(terms(text)) for text in texts]
        count = len(held)
        if count == 0:
            return np.zeros(0, dtype=np.float32)

        def rarity(frequency: int) -> float:
            return math.log(1 + (count - frequency + 0.5) / (frequency + 0.5))

        weights = {t: rarity(sum(t in words for words in held)) for t in set(terms(query))}
        sums = np.array([sum(w for t, w in weights.items() if t in words) for words in held],
                        dtype=np.float32)
        result: np.ndarray = (-np.expm1(-sums / rarity(1))).astype(np.float32)
        return result
