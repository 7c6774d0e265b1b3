"""Slot values: whether a value fits a slot's type and validation rules (at load and when the
dialogue fills a slot)."""

from __future__ import annotations

import datetime
from typing import Any

from services.botdef.conversation import SlotDef, Validation
from services.botdef.schema import DATE_TYPES
from services.common.regexsafety import compile_bot_regex


def value_problem(slot: SlotDef, value: Any, validation: Validation | None = None) -> str | None:
    """Why `value` is not a valid value of `slot` (None: it is; None is always valid)."""
    if value is None:
        return None
    rules = slot.validation.merged(validation)
    problem = _type_problem(slot.type, value)
    if problem is not None:
        return problem
    if slot.type == "number":
        return _range_problem(rules, float(value)) or _choice_problem(rules, value)
    problem = _choice_problem(rules, value)
    if problem is None and rules.regex is not None and isinstance(value, str):
        matched = compile_bot_regex(rules.regex).fullmatch(value) is not None
        return None if matched else "it doesn't have the expected format"
    return problem


def _type_problem(slot_type: str, value: Any) -> str | None:
    if slot_type == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else "it must be a number"
    if slot_type == "boolean":
        return None if isinstance(value, bool) else "it must be yes or no"
    if slot_type in DATE_TYPES:
        return None if _iso_date(slot_type, value) else f"it must be an ISO {slot_type}"
    return None if isinstance(value, str) else "it must be text"


def _iso_date(slot_type: str, value: Any) -> bool:
    """Whether `value` is an ISO date (date slots) or timestamp (datetime slots) text."""
    if not isinstance(value, str):
        return False
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return False
    return slot_type == "datetime" or (len(value) == 10 and parsed.time() == datetime.time())


def _range_problem(rules: Validation, number: float) -> str | None:
    if rules.min is not None and number < rules.min:
        return f"it must be at least {format_number(rules.min)}"
    if rules.gt is not None and number <= rules.gt:
        return f"it must be more than {format_number(rules.gt)}"
    if rules.max is not None and number > rules.max:
        return f"it must be at most {format_number(rules.max)}"
    if rules.lt is not None and number >= rules.lt:
        return f"it must be less than {format_number(rules.lt)}"
    return None


def _choice_problem(rules: Validation, value: Any) -> str | None:
    if not rules.choices:
        return None
    folded = [str(c).casefold() for c in rules.choices]
    if isinstance(value, str) and value.casefold() in folded:
        return None
    if not isinstance(value, str) and any(value == c for c in rules.choices):
        return None
    return f"it must be one of: {', '.join(str(c) for c in rules.choices)}"


def format_number(number: float) -> str:
    """`10000.0` -> `10,000`, `0.5` -> `0.5`."""
    return f"{int(number):,}" if float(number).is_integer() else f"{number:,}"
