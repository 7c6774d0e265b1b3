"""Search behaviour on hand-made vectors (no encoder): exact vs approximate vs hybrid
scoring, FAQ question variants, snippets and BM25."""

from __future__ import annotations

import numpy as np

from services.knowledge.bm25 import Bm25, tokenize
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


def test_hybrid_bm25_lifts_the_passage_with_the_rare_word() -> None:
    base = _unit(np.eye(DIM)[0] + 0.01)
    near = _unit(base + 0.05 * np.eye(DIM)[1])
    other = _unit(base + 0.3 * np.eye(DIM)[2])
    items = [_passage(0, "card readers need new firmware"),
             _passage(1, "the XG-400 reader needs firmware 3.2"),
             _passage(2, "opening hours of branches")]
    vectors = np.stack([near, other, _unit(np.eye(DIM)[3])])
    rows = [(0, -1), (1, -1), (2, -1)]
    query = "XG-400 firmware"
    plain = Searcher(_index(items, rows, vectors, bm25_weight=0.0), None)
    hybrid = Searcher(_index(items, rows, vectors, bm25_weight=0.5), None)
    assert plain.search_vector(base, query, 1)[0].id == "doc0.md#0"
    top = hybrid.search_vector(base, query, 2)
    assert top[0].id == "doc1.md#0"
    assert hybrid.bm25 is not None
    lexical = hybrid.bm25.normalised_scores(query)
    assert lexical[1] > 0.5 > lexical[0] > lexical[2] == 0.0
    assert abs(top[0].score - (0.5 * float(other @ base) + 0.5 * lexical[1])) < 1e-5
    approx = Searcher(_index(items, rows, vectors, bm25_weight=0.5), None,
                      SearchOptions(approx_min_vectors=1, min_candidates=1))
    assert approx.search_vector(base, query, 1)[0].id == "doc1.md#0"  # BM25 adds candidates


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


def test_empty_index_and_k_zero_give_no_hits() -> None:
    empty = _index([], [], np.zeros((0, DIM), dtype=np.float32))
    assert Searcher(empty, None).search_vector(np.ones(DIM, np.float32), "x", 5) == []


def test_bm25_tokens_and_normalised_scores() -> None:
    assert tokenize("The XG-400 costs 3.2 EUR") == ["the", "xg-400", "xg", "400", "costs", "3.2",
                                                     "3", "2", "eur"]
    bm25 = Bm25(["the xg-400 reader", "a card reader", "opening hours"])
    scores = bm25.normalised_scores("xg-400 reader")
    assert scores.shape == (3,) and scores.min() >= 0.0 and scores.max() <= 1.0
    assert scores[0] > scores[1] > scores[2] == 0.0
    assert not bm25.normalised_scores("weather paris").any()
    assert not bm25.normalised_scores("?!").any()
