"""Chinese in the knowledge base (issue 23): BM25 terms of unspaced text (characters and
character pairs), Chinese sentence ends, and search by keywords for Chinese queries, never
mixing Chinese rows into English answers (hand-made vectors, no encoder)."""

from __future__ import annotations

import numpy as np

from services.knowledge.bm25 import Bm25, cjk_terms, terms
from services.knowledge.index import IndexData, Item
from services.knowledge.search import Searcher, is_cjk
from services.knowledge.splitting import sentences

DIM = 8


def test_cjk_runs_become_characters_and_pairs() -> None:
    assert cjk_terms("挂失银行卡") == ["挂", "失", "银", "行", "卡",
                                     "挂失", "失银", "银行", "行卡"]
    assert terms("我的IBAN在哪里？") == ["我的", "iban", "在哪", "哪里"]
    assert terms("What is my IBAN?") == ["iban"]  # English terms as before
    assert terms("Apple Pay可以用吗") == ["apple", "pay", "用", "可以", "以用", "用吗"]


def test_chinese_sentence_ends() -> None:
    assert sentences("请立即冻结。新卡会寄出！好吗？ Then English. Next") == [
        "请立即冻结。", "新卡会寄出！", "好吗？", "Then English.", "Next"]


def test_is_cjk() -> None:
    assert is_cjk("IBAN号码在App哪里看") and is_cjk("挂失") and is_cjk("支持Google Pay吗")
    assert not is_cjk("where is my IBAN") and not is_cjk("Beijing 北京 branch office")
    assert not is_cjk("Our branches in Shanghai (上海) and Beijing")


def test_coverage_counts_unknown_words_against_the_query() -> None:
    bm25 = Bm25(["银行卡丢失了请冻结", "储蓄账户的利率", "境外汇款的手续费"])
    covered = bm25.coverage("银行卡丢了怎么办")
    assert covered.argmax() == 0 and 0.3 < covered[0] <= 1
    assert bm25.coverage("讲个笑话听听").max() == 0  # nothing of it is indexed


def _item(index: int, text: str) -> Item:
    return Item("passage", f"doc{index}.md#0", f"doc{index}.md", f"Doc {index}", (), 0, text,
                None, (), (), ((0, len(text)),), 0)


def _searcher() -> Searcher:
    texts = ["Block a lost card in the app under Cards.",
             "Savings accounts pay 2.10% interest.",
             "银行卡丢失后请立即在手机银行冻结银行卡。",
             "灵活储蓄账户的年利率是百分之二点一。"]
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(texts), DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    data = IndexData({"bot": "t", "version": "v", "settings": {"bm25_weight": 0.3}},
                     [_item(i, t) for i, t in enumerate(texts)], np.arange(len(texts)),
                     np.full(len(texts), -1), vectors, np.zeros((0, DIM), dtype=np.float32))
    return Searcher(data, None)


def test_chinese_queries_get_chinese_rows_by_keywords() -> None:
    searcher = _searcher()
    vector = searcher.data.vectors[1]  # a query vector as close as can be to English row 1
    hits = searcher.search_vector(vector, "我的银行卡丢了，怎么冻结？", k=4)
    assert hits[0].document == "doc2.md" and hits[0].score > 0.475
    assert {h.document for h in hits[:2]} == {"doc2.md", "doc3.md"}
    assert all(h.score < 0 for h in hits[2:])  # English rows: never for a Chinese query
    declined = searcher.search_vector(vector, "讲个笑话听听", k=1)
    assert declined[0].score < 0.475


def test_english_queries_never_get_chinese_rows() -> None:
    searcher = _searcher()
    vector = searcher.data.vectors[2]  # the Chinese row's own vector
    hits = searcher.search_vector(vector, "lost card", k=4)
    assert hits[0].document == "doc0.md"
    assert {h.document for h in hits[:2]} == {"doc0.md", "doc1.md"}
    assert all(h.score == -1 for h in hits[2:])


class _BatchSensitive:
    """An encoder whose vectors depend on the batch, as the int8 encoder's do."""

    dim = 2

    def encode(self, texts: list[str]) -> np.ndarray:
        longest = max(len(t) for t in texts)
        return np.array([[len(t), longest] for t in texts], dtype=np.float32)


def test_build_embeds_chinese_texts_apart_so_english_vectors_do_not_move() -> None:
    from botfactory.kb.build import encode_apart

    english = ["short", "a longer english text"]
    mixed = ["short", "这是一段很长很长很长很长很长很长很长很长的中文", "a longer english text"]
    alone = encode_apart(_BatchSensitive(), english)  # type: ignore[arg-type]
    beside = encode_apart(_BatchSensitive(), mixed)  # type: ignore[arg-type]
    assert (beside[[0, 2]] == alone).all()
