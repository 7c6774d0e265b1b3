"""The workflow expression language: parsing, evaluation, templates, references, safety."""

from __future__ import annotations

from typing import Any

import pytest

from services.botdef.expressions import (
    ExpressionError,
    Resolver,
    evaluate_source,
    parse,
    parse_template,
    references,
    render_value,
)


class Vault(Resolver):
    def __init__(self) -> None:
        self.asked: list[str] = []

    def resolve(self, name: str) -> str:
        self.asked.append(name)
        if name != "TOKEN":
            raise KeyError(f"secret {name!r} is not set")
        return "s3cr3t"


SCOPE: dict[str, Any] = {
    "inputs": {"amount": 50, "recipient": "anna", "tags": ["a", "b"], "ratio": 0.5},
    "steps": {"book": {"outputs": {"id": "TX-1", "items": [{"n": 1}, {"n": 2}]}}},
    "vars": {"count": 2, "empty": ""},
    "secrets": Vault(),
}


@pytest.mark.parametrize(("source", "expected"), [
    ("1 + 2 * 3", 7),
    ("(1 + 2) * 3", 9),
    ("7 / 2", 3.5),
    ("6 / 3", 2),
    ("7 // 2", 3),
    ("7 % 4", 3),
    ("-inputs.amount + 1", -49),
    ("inputs.amount >= 50 and inputs.recipient == 'anna'", True),
    ("inputs.amount > 100 or vars.count", 2),
    ("not inputs.amount", False),
    ("'a' in inputs.tags", True),
    ("'z' not in inputs.tags", True),
    ("'nn' in inputs.recipient", True),
    ("steps.book.outputs.items[1].n", 2),
    ("steps.book.outputs.items[-1].n", 2),
    ("steps.book.outputs.items[5]", None),
    ("steps.missing.outputs.x", None),
    ("len(inputs.tags) + len('abc')", 5),
    ("upper(inputs.recipient) + '!'", "ANNA!"),
    ("default(vars.empty, 'none')", "none"),
    ("round(inputs.ratio * 3, 1)", 1.5),
    ("max(1, vars.count, 0)", 2),
    ("min([4, 3])", 3),
    ("int('12') + float('0.5')", 12.5),
    ("join(inputs.tags, '-')", "a-b"),
    ("money(inputs.amount)", "50.00"),
    ("[1, 'x', true, null]", [1, "x", True, None]),
    ("true == True and null == None", True),
    ('"double \\"quoted\\""', 'double "quoted"'),
    ("1e3", 1000.0),
])
def test_evaluates(source: str, expected: Any) -> None:
    assert evaluate_source(source, SCOPE) == expected


@pytest.mark.parametrize(("source", "message"), [
    ("1 +", "expected a value"),
    ("(1", "expected ')'"),
    ("1 2", "unexpected token"),
    ("a.", "expected a name"),
    ("x", "unknown name 'x'"),
    ("__import__('os')", "unknown function '__import__'"),
    ("eval('1')", "unknown function 'eval'"),
    ("1 / 0", "division by zero"),
    ("'a' * 3", "needs numbers"),
    ("'a' < 1", "cannot compare"),
    ("inputs.amount + 'x'", "needs numbers"),
    ("len(5)", "len() of a number"),
    ("1 in 5", "'in' needs"),
    ("upper(1)", "needs a string"),
    ("secrets.OTHER", "secret 'OTHER' is not set"),
    ("1 ; 2", "unexpected character"),
])
def test_errors(source: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        evaluate_source(source, SCOPE)


def test_no_attribute_access_beyond_mappings() -> None:
    # attribute syntax reads mapping keys only: Python attributes are out of reach
    assert evaluate_source("inputs.__class__", SCOPE) is None
    assert evaluate_source("inputs.amount.__class__", {"inputs": {"amount": None}}) is None
    with pytest.raises(ExpressionError, match="cannot look up"):
        evaluate_source("inputs.amount.real", SCOPE)


def test_secrets_resolve_through_the_resolver_only_when_read() -> None:
    vault = Vault()
    scope = {**SCOPE, "secrets": vault}
    assert evaluate_source("secrets.TOKEN", scope) == "s3cr3t"
    assert vault.asked == ["TOKEN"]


def test_length_limits() -> None:
    with pytest.raises(ExpressionError, match="longer than"):
        parse("1 + " * 600 + "1")
    scope = {"vars": {"s": "x" * 60_000}}
    with pytest.raises(ExpressionError, match="result longer"):
        evaluate_source("vars.s + vars.s", scope)


def test_templates_render_text_and_keep_types() -> None:
    text = parse_template("Send {{ money(inputs.amount) }} EUR to {{ inputs.recipient }}.")
    assert text.render(SCOPE) == "Send 50.00 EUR to anna."
    assert parse_template("{{ inputs.amount }}").render(SCOPE) == 50
    assert parse_template("{{ inputs.tags }}").render(SCOPE) == ["a", "b"]
    assert parse_template("n={{ inputs.tags }} {{ vars.none }}").render(SCOPE) == 'n=["a","b"] '
    assert parse_template("plain").render(SCOPE) == "plain"
    rendered = render_value({"amount": "{{ inputs.amount }}", "list": ["{{ vars.count }}", 3],
                             "flag": True}, SCOPE)
    assert rendered == {"amount": 50, "list": [2, 3], "flag": True}


@pytest.mark.parametrize("text", ["{{ }}", "{{ 1 + }}", "a {{ b"])
def test_bad_templates(text: str) -> None:
    with pytest.raises(ExpressionError):
        parse_template(text)


def test_references() -> None:
    node = parse("steps.book.outputs.id == inputs.x and len(vars.list[vars.i]) > 0")
    assert references(node) == [("steps", "book", "outputs", "id"), ("inputs", "x"),
                                ("vars", "list"), ("vars", "i")]
