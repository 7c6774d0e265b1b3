"""Issue 18: the NLU holds the learned tagger's entities to their regexes (no model needed:
the merge of tagged spans and rule matches is tested on hand-built spans)."""

from __future__ import annotations

from services.nlu.engine import Entity, RuleExtractors

RULES = RuleExtractors.from_config({
    "regex": {"claim_id": ["[A-Z]{2}[0-9]{6}"], "policy": ["P-[0-9]{4}"]},
    "lookup": {"policy": ["gold plan"]},
    "synonyms": {"policy": {"premium": "gold plan"}},
})


def tagged(text: str, raw: str, entity: str) -> Entity:
    start = text.index(raw)
    return Entity(entity, start, start + len(raw), raw, raw, "model", 0.9)


def test_a_tagged_value_its_regexes_do_not_match_is_dropped() -> None:
    text = "my claim is 12345"
    assert RULES.merge(text, [tagged(text, "12345", "claim_id")]) == []


def test_the_regex_match_wins_over_a_mistagged_part_of_it() -> None:
    text = "claim AB123456 please"
    found = RULES.merge(text, [tagged(text, "123456", "claim_id")])
    assert [(e.text, e.extractor) for e in found] == [("AB123456", "regex")]


def test_matching_values_lookups_synonyms_and_regexless_entities_are_kept() -> None:
    text = "AB123456 on the premium plan, P-1234, to anna"
    predicted = [tagged(text, "AB123456", "claim_id"), tagged(text, "premium", "policy"),
                 tagged(text, "P-1234", "policy"), tagged(text, "anna", "recipient")]
    assert [e.text for e in RULES.merge(text, predicted)] == [
        "AB123456", "premium", "P-1234", "anna"]
    assert RULES.admits("policy", "Gold Plan") and not RULES.admits("policy", "silver")
