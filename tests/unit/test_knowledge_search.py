"""Search behaviour on hand-made vectors (no encoder): exact vs approximate vs hybrid
scoring, FAQ question variants, snippets and BM25."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.knowledge.bm25 import Bm25, terms, tokenize
from services.knowledge.index import IndexData, Item
from services.knowledge.search import Searcher, SearchOptions

DIM = 32
RNG_SEED = 3


def _unit(vectors: np.ndarray) -> np.ndarray:
    result: np.ndarray = (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(
        np.float32)
    return result


def _passage(index: int, text: str, sentences: tuple[tuple[int, int], ...] = (),
             sentence_row: int = 0) -> Item:
    return Item("passage", f"doc{index}.md#0", f"doc{index}.md", f"Doc {index}", (f"Doc {index}",),
                0, text, None, (), (), sentences or ((0, len(text)),), sentence_row)


def _index(items: list[Item], rows: list[tuple[int, int]], vectors: np.ndarray,
           sentence_vectors: np.ndarray | None = None, bm25_weight: float = 0.0,
           snippet_sentences: int = 2) -> IndexData:
    return IndexData(
        {"bot": "t", "version": "v1", "settings": {"bm25_weight": bm25_weight,
                                                   "snippet_sentences": snippet_sentences}},
        items, np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
        np.ascontiguousarray(vectors, dtype=np.float32),
        np.zeros((0, vectors.shape[1]), dtype=np.float32) if sentence_vectors is None
        else sentence_vectors)


def _clustered(n: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.standard_normal((20, DIM))
    return _unit(centres[rng.integers(0, 20, n)] + 0.4 * rng.standard_normal((n, DIM)))


def test_exact_search_ranks_by_cosine_best_first() -> None:
    rng = np.random.default_rng(RNG_SEED)
    vectors = _unit(rng.standard_normal((50, DIM)))
    items = [_passage(i, f"text {i}") for i in range(50)]
    searcher = Searcher(_index(items, [(i, -1) for i in range(50)], vectors), None)
    query = _unit(vectors[7] + 0.1 * rng.standard_normal(DIM))
    hits = searcher.search_vector(query, "", k=5)
    expected = np.argsort(-(vectors @ query))[:5]
    assert [h.id for h in hits] == [f"doc{i}.md#0" for i in expected]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert abs(hits[0].score - float(vectors[7] @ query)) < 1e-5
    assert searcher.mode == "exact"
    assert len(searcher.search_vector(query, "", k=500)) == 50


def test_approximate_search_agrees_with_exact_and_is_used_above_the_threshold() -> None:
    rng = np.random.default_rng(RNG_SEED)
    n = 3000
    vectors = _clustered(n, rng)
    items = [_passage(i, "") for i in range(n)]
    data = _index(items, [(i, -1) for i in range(n)], vectors)
    searcher = Searcher(data, None, SearchOptions(approx_min_vectors=1000))
    assert searcher.mode == "approx" and searcher.ann is not None
    below = Searcher(data, None, SearchOptions(approx_min_vectors=n + 1))
    assert below.mode == "exact" and below.ann is None
    queries = _unit(vectors[rng.integers(0, n, 50)] + 0.3 * rng.standard_normal((50, DIM)))
    recall = []
    for query in queries:
        exact = {h.id for h in searcher.search_vector(query, "", 10, approximate=False)}
        approx = {h.id for h in searcher.search_vector(query, "", 10)}
        recall.append(len(exact & approx) / 10)
    assert np.mean(recall) >= 0.95


def _at_cosine(cosines: list[float]) -> np.ndarray:
    """Unit vectors whose cosine to the first axis (the query) is each of `cosines`."""
    axes = np.eye(DIM, dtype=np.float32)
    return np.stack([c * axes[0] + np.sqrt(1 - c * c) * axes[i + 1]
                     for i, c in enumerate(cosines)]).astype(np.float32)


HYBRID_TEXTS = [
    "Card readers: install new firmware updates from the app.",      # strong semantic match
    "The XG-400 reader needs firmware 3.2 or later.",                # holds the product code
    "Your card fees are listed in the price list.",                  # shares only 'card'
    "Card limits can be changed in settings.",
    "A new card arrives within five working days.",
    "Card payments abroad are free in the euro area.",
    "Opening hours of our branches.",
    "Savings accounts pay interest monthly.",
    "Mortgage rates are fixed for ten years.",
    "Report a lost card in the app.",
]
HYBRID_COSINES = [0.5, 0.45, 0.35, 0.1, 0.1, 0.1, 0.0, 0.0, 0.0, 0.2]


def _hybrid_searcher(weight: float) -> Searcher:
    items = [_passage(i, text) for i, text in enumerate(HYBRID_TEXTS)]
    rows = [(i, -1) for i in range(len(items))]
    return Searcher(_index(items, rows, _at_cosine(HYBRID_COSINES), bm25_weight=weight), None)


def test_hybrid_rare_product_code_beats_a_stronger_semantic_match() -> None:
    query, vector = "XG-400 firmware", np.eye(DIM, dtype=np.float32)[0]
    assert _hybrid_searcher(0.0).search_vector(vector, query, 1)[0].id == "doc0.md#0"
    hybrid = _hybrid_searcher(0.3)
    top = hybrid.search_vector(vector, query, 2)
    assert [h.id for h in top] == ["doc1.md#0", "doc0.md#0"]
    assert hybrid.bm25 is not None
    strength = hybrid.bm25.strengths(query)
    assert strength[1] > 0.9 > 0.6 > strength[0] > 0  # code + word vs. the word alone
    assert top[0].score == pytest.approx(0.45 + 0.3 * strength[1] * 0.55, abs=1e-5)
    approx = Searcher(hybrid.data, None, SearchOptions(approx_min_vectors=1, min_candidates=1))
    assert approx.search_vector(vector, query, 1)[0].id == "doc1.md#0"  # BM25 adds candidates


def test_hybrid_weak_keyword_match_does_not_beat_a_strong_semantic_one() -> None:
    vector = np.eye(DIM, dtype=np.float32)[0]
    hybrid = _hybrid_searcher(0.3)
    # 'card' is in half the rows: a weak match; 'what', 'do', 'my' are stop words
    top = hybrid.search_vector(vector, "what do my card readers do?", 3)
    assert top[0].id == "doc0.md#0"
    weak = hybrid.search_vector(vector, "what about my card?", 10)
    by_id = {h.id: h.score for h in weak}
    assert by_id["doc2.md#0"] - 0.35 < 0.05  # the common word lifts a weak match a little
    assert max(by_id, key=lambda i: by_id[i]) == "doc0.md#0"
    # without any keyword match the hybrid score is the cosine itself
    plain = hybrid.search_vector(vector, "tell me a joke", 10)
    assert [h.score for h in plain] == pytest.approx(sorted(HYBRID_COSINES, reverse=True),
                                                     abs=1e-5)


def test_faq_variants_count_once_and_report_the_matched_question() -> None:
    axes = np.eye(DIM, dtype=np.float32)
    faq = Item("faq", "faq:lost-card", "faq.yml", "I lost my card", (), 0, "Block it in the app.",
               "https://bank.example/lost", (), ("I lost my card", "my card was stolen"))
    items = [faq, _passage(1, "Card fees.")]
    rows = [(0, 0), (0, 1), (1, -1)]
    vectors = np.stack([axes[0], _unit(axes[0] + axes[1]), _unit(axes[0] + 2 * axes[2])])
    searcher = Searcher(_index(items, rows, vectors), None)
    hits = searcher.search_vector(_unit(axes[0] + 0.9 * axes[1]), "", 5)
    assert [h.id for h in hits] == ["faq:lost-card", "doc1.md#0"]
    assert hits[0].heading_path == ("my card was stolen",)
    assert hits[0].snippet == hits[0].text == "Block it in the app."
    assert hits[0].document == "faq.yml" and hits[0].url == "https://bank.example/lost"


def test_snippet_keeps_the_most_similar_sentences_in_passage_order() -> None:
    axes = np.eye(DIM, dtype=np.float32)
    text = "Alpha one. Beta two. Gamma three. Delta four."
    spans = ((0, 10), (11, 20), (21, 33), (34, 45))
    item = _passage(0, text, spans, sentence_row=0)
    sentence_vectors = np.stack([axes[0], axes[1], axes[2], axes[3]])
    data = _index([item], [(0, -1)], axes[:1].copy(), sentence_vectors, snippet_sentences=2)
    searcher = Searcher(data, None)
    query = _unit(0.9 * axes[3] + 0.5 * axes[1] + 0.1 * axes[0])
    assert searcher.search_vector(query, "", 1)[0].snippet == "Beta two. Delta four."
    one = Searcher(_index([item], [(0, -1)], axes[:1].copy(), sentence_vectors,
                          snippet_sentences=1), None)
    assert one.search_vector(query, "", 1)[0].snippet == "Delta four."


def test_snippet_with_hybrid_scoring_keeps_the_sentence_naming_the_product_code() -> None:
    """A table of product codes: the row naming the asked-for code wins over rows whose words
    are merely closer in meaning."""
    axes = np.eye(DIM, dtype=np.float32)
    rows = ("Easy Saver NW-SAVE-1 pays 2.1%.", "Regular Saver NW-SAVE-R pays 4%.",
            "Bonus Saver NW-SAVE-3 pays 3%.")
    text = " ".join(rows)
    starts = [text.index(r) for r in rows]
    spans = tuple((a, a + len(r)) for a, r in zip(starts, rows, strict=True))
    item = _passage(0, text, spans, sentence_row=0)
    # cosines with the query: 0.55, 0.5, 0.4 (the code's row is the least similar in meaning)
    query_vector = axes[0]
    sentence_vectors = np.stack([_unit(0.55 * axes[0] + math.sqrt(1 - 0.55 ** 2) * axes[1]),
                                 _unit(0.5 * axes[0] + math.sqrt(1 - 0.5 ** 2) * axes[2]),
                                 _unit(0.4 * axes[0] + math.sqrt(1 - 0.4 ** 2) * axes[3])])
    plain = Searcher(_index([item], [(0, -1)], axes[:1].copy(), sentence_vectors,
                            snippet_sentences=1), None)
    assert plain.search_vector(query_vector, "what is NW-SAVE-3", 1)[0].snippet.startswith(
        "Easy Saver")
    hybrid = Searcher(_index([item], [(0, -1)], axes[:1].copy(), sentence_vectors,
                             bm25_weight=0.3, snippet_sentences=1), None)
    assert hybrid.search_vector(query_vector, "what is NW-SAVE-3", 1)[0].snippet == (
        "Bonus Saver NW-SAVE-3 pays 3%.")


def test_empty_index_and_k_zero_give_no_hits() -> None:
    empty = _index([], [], np.zeros((0, DIM), dtype=np.float32))
    assert Searcher(empty, None).search_vector(np.ones(DIM, np.float32), "x", 5) == []


def test_bm25_tokens_keep_codes_and_terms_drop_stop_words() -> None:
    assert tokenize("The XG-400 costs 3.2 EUR") == ["the", "xg-400", "xg", "400", "costs", "3.2",
                                                     "3", "2", "eur"]
    assert terms("What do I do if I lost my card?") == ["lost", "card"]
    assert terms("I don\u2019t know; isn't the XG-400's price ok?") == ["know", "xg-400", "xg",
                                                                        "400", "price"]
    assert terms("what is it") == []


def test_bm25_strengths_saturate_on_an_absolute_scale() -> None:
    bm25 = Bm25(["alpha beta", "gamma delta", "epsilon zeta", "alpha gamma"])
    one_rare = bm25.strengths("epsilon")
    assert one_rare[2] == pytest.approx(1 - np.exp(-1), abs=1e-5)  # one rarest term: 0.63
    assert bm25.strengths("epsilon zeta")[2] == pytest.approx(1 - np.exp(-2), abs=1e-5)
    common = bm25.strengths("alpha")
    assert 0 < common[0] < one_rare[2] and common[1] == 0.0
    # stop words never match, not even in a text made of them
    assert not Bm25(["I lost my card, what do I do?"]).strengths("tell me what I do").any()
    assert not bm25.strengths("weather paris").any()
    assert not bm25.strengths("?!").any()
    assert not Bm25([]).strengths("alpha").any()
