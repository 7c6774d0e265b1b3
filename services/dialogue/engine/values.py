"""Slot values from what users write: numbers, amounts' currencies, yes/no, choices, dates,
entity values (checked against the entity's lookup list, close spellings included, and its
regexes). A refused value says why (`Parsed.problem`, for the user) and what kind of rule
refused it (`Parsed.reason`, for the `slot_rejected` event)."""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from services.botdef import DATE_TYPES, EntityDef, SlotDef, SlotValue, Validation, value_problem
from services.common.regexsafety import BotPattern, compile_bot_regex
from services.dialogue.engine import zh
from services.dialogue.engine.dates import Clock, parse_date

YES_WORDS = frozenset({
    "yes", "y", "yeah", "yea", "yep", "yup", "sure", "ok", "okay", "correct", "right", "true",
    "affirmative", "confirm", "confirmed", "absolutely", "definitely", "certainly", "indeed",
})
NO_WORDS = frozenset({"no", "n", "nope", "nah", "false", "negative", "wrong", "incorrect",
                      "never"})
YES_PHRASES = frozenset({"of course", "go ahead", "do it", "please do", "sounds good",
                         "that's right", "that is right", "why not"})
NO_PHRASES = frozenset({"not really", "don't", "do not", "dont", "not now", "no way"})

_UNIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
               "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
               "seventeen", "eighteen", "nineteen")
_TEN_WORDS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_UNITS: Mapping[str, int] = MappingProxyType({w: v for v, w in enumerate(_UNIT_WORDS)})
_TENS: Mapping[str, int] = MappingProxyType({w: 10 * (i + 2) for i, w in enumerate(_TEN_WORDS)})
_SCALES: Mapping[str, int] = MappingProxyType({"thousand": 1000, "million": 1_000_000})
_NUMERIC = re.compile(r"(?<![\w.,])[-+]?\d(?:[\d.,']*\d)?(?:\s?[kK]\b)?")
_WORD = re.compile(r"[a-z]+")
_CURRENCY_NAMES: Mapping[str, str] = MappingProxyType({
    "eur": "EUR", "euro": "EUR", "euros": "EUR", "usd": "USD", "dollar": "USD",
    "dollars": "USD", "bucks": "USD", "gbp": "GBP", "pound": "GBP", "pounds": "GBP",
    "quid": "GBP", "sterling": "GBP", "chf": "CHF", "franc": "CHF", "francs": "CHF",
    "jpy": "JPY", "yen": "JPY", "cad": "CAD", "aud": "AUD", "sek": "SEK", "nok": "NOK",
    "dkk": "DKK", "pln": "PLN", "czk": "CZK", "huf": "HUF", "cny": "CNY", "inr": "INR",
    "rupees": "INR",
})
_NEXT_WORD = re.compile(r"\s*[^\W\d_]+")
_CURRENCY_SIGNS: Mapping[str, str] = MappingProxyType({"€": "EUR", "$": "USD", "£": "GBP",
                                                        "¥": "JPY", "₹": "INR"})


def parse_number(text: str) -> int | float | None:
    """The one number in `text`: digits with optional sign, currency, thousands separators
    (`1,000`, `1.000,50`, `1'000`), decimals, a `k` suffix (`10k`); or English words
    (`fifty`, `a hundred and twenty`); or Chinese numerals (`五十元`, `50块`, `两千五`, `1.5万`:
    services/dialogue/engine/zh.py). None when there is none or more than one."""
    text = zh.arabic(text)
    found = _NUMERIC.findall(text)
    if len(found) > 1:
        return None
    if found:
        return _digits(found[0])
    return _words(text.lower())


def _digits(token: str) -> int | float | None:
    thousands = token[-1] in "kK"
    body = token.rstrip("kK").strip()
    number = _decimal(body)
    if number is None:
        return None
    return _tidy(number * 1000 if thousands else number)


def _decimal(body: str) -> float | None:
    digits = body.replace("'", "")
    if "," in digits and "." in digits:
        decimal = "," if digits.rfind(",") > digits.rfind(".") else "."
        other = "." if decimal == "," else ","
        digits = digits.replace(other, "").replace(decimal, ".")
    elif "," in digits:
        grouped = re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+", digits) is not None
        if not grouped and digits.count(",") > 1:
            return None
        digits = digits.replace(",", "" if grouped else ".")
    elif digits.count(".") > 1:
        if re.fullmatch(r"[-+]?\d{1,3}(\.\d{3})+", digits) is None:
            return None
        digits = digits.replace(".", "")
    try:
        return float(digits)
    except ValueError:
        return None


def _tidy(number: float) -> int | float:
    return int(number) if number.is_integer() else number


def _words(text: str) -> int | None:
    tokens = _WORD.findall(text)
    total, current, started = 0, 0, False
    for index, token in enumerate(tokens):
        following = tokens[index + 1] if index + 1 < len(tokens) else ""
        if token in ("a", "an") and following in ("hundred", *_SCALES) and not started:
            current, started = 1, True
        elif token in _UNITS or token in _TENS:
            current += _UNITS.get(token, 0) + _TENS.get(token, 0)
            started = True
        elif token == "hundred" and started:
            current = max(current, 1) * 100
        elif token in _SCALES and started:
            total, current = total + max(current, 1) * _SCALES[token], 0
        elif started and token != "and":
            break
    return total + current if started else None


def named_currency(text: str) -> str | None:
    """The ISO code of the currency `text` names (`$`, `€`, `£`, `dollars`, `euros`, `GBP`,
    ...), None when it names none or several different ones."""
    found = {code for sign, code in _CURRENCY_SIGNS.items() if sign in text}
    found |= {_CURRENCY_NAMES[w] for w in _normal(text).split() if w in _CURRENCY_NAMES}
    found |= zh.currency(text)
    return found.pop() if len(found) == 1 else None


def currency_context(text: str, start: int, end: int) -> str:
    """The span [start, end) of `text` with the character just before it and the word just
    after it: where a currency is named around an amount the tagger found ("$" + "50",
    "50" + " dollars")."""
    after = _NEXT_WORD.match(text, end)
    return text[max(0, start - 1):end] + (after.group(0) if after else "")


def fold(text: str) -> str:
    """`text` for comparing names: accents removed, case folded, spaces collapsed."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(bare.casefold().split())


def parse_boolean(text: str) -> bool | None:
    """True / False from yes / no words (`yes please`, `nope`, `of course`; Chinese `好的`,
    `不用了`), else None."""
    if zh.has_cjk(text):
        return zh.boolean(text)
    words = _normal(text)
    if words in YES_PHRASES:
        return True
    if words in NO_PHRASES:
        return False
    first = words.split(" ", 1)[0]
    if first in YES_WORDS:
        return True
    if first in NO_WORDS:
        return False
    return None


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w' ]+", " ", text.lower()).split())


@dataclass(frozen=True)
class EntityMatcher:
    """Finds the values of one declared entity in plain text (for answers NLU did not tag):
    its synonyms (lower-cased variant -> canonical), lookup values and regexes."""

    synonyms: Mapping[str, str]
    lookup: tuple[str, ...]
    patterns: tuple[BotPattern, ...]

    @classmethod
    def of(cls, entity: EntityDef, synonyms: Mapping[str, str]) -> EntityMatcher:
        patterns = tuple(compile_bot_regex(p) for p in entity.regex)
        return cls(MappingProxyType(dict(synonyms)), entity.lookup, patterns)

    @property
    def empty(self) -> bool:
        return not (self.synonyms or self.lookup or self.patterns)

    def find(self, text: str) -> str | None:
        for pattern in self.patterns:
            match = pattern.search(text)
            if match is not None:
                return match.group(0)
        phrase = _find_phrase(text, list(self.synonyms))
        if phrase is not None:
            return self.synonyms[phrase]
        return _find_phrase(text, list(self.lookup))

    def written_in(self, value: Any, language: str) -> Any:
        """`value` as a customer writing `language` reads it: a canonical value in another
        script (Berlin, in a Chinese conversation) becomes its first synonym written in the
        language's script (柏林); anything else is kept. Only Chinese has a script of its own
        among the languages the bots speak today."""
        if not isinstance(value, str) or language.split("-")[0] != "zh" or zh.has_cjk(value):
            return value
        return next((variant for variant, canonical in self.synonyms.items()
                     if canonical == value and zh.has_cjk(variant)), value)

    def canonical(self, value: str) -> str:
        return self.synonyms.get(value.lower(), value)

    def admits(self, value: str) -> bool:
        """Whether a value NLU tagged may be this entity's: with regexes, one of them must
        match it whole, unless it is a lookup value or a synonym (a learned tagger predicts
        spans that need not follow the patterns)."""
        if not self.patterns or any(p.fullmatch(value) for p in self.patterns):
            return True
        return self.known(value, 1.0) is not None

    def known(self, value: str, fuzzy: float) -> str | None:
        """The lookup value (or synonym's canonical value) `value` is, case and accents
        ignored; else the one it is a close spelling of (similarity at least `fuzzy`, and
        clearly closer than any other); None when it is none of them."""
        names = {fold(v): v for v in self.lookup}
        names.update({fold(variant): canonical for variant, canonical in self.synonyms.items()})
        names.update({fold(canonical): canonical for canonical in self.synonyms.values()})
        key = fold(value)
        if key in names:
            return names[key]
        if fuzzy >= 1:
            return None
        close = difflib.get_close_matches(key, list(names), n=2, cutoff=fuzzy)
        values = {names[name] for name in close}
        return values.pop() if len(values) == 1 else None


def _find_phrase(text: str, phrases: list[str]) -> str | None:
    """The longest of `phrases` found in `text` as whole words (case and accents ignored;
    words are runs of letters and digits of any script); a phrase with CJK characters
    anywhere in it (Chinese is written without spaces: `我要冻结信用卡` has `信用卡`)."""
    folded = f" {fold(_normal(text))} "
    for phrase in sorted(phrases, key=len, reverse=True):
        key = fold(_normal(phrase))
        if f" {key} " in folded or (zh.has_cjk(key) and key in folded):
            return phrase
    return None


REASONS = ("type", "regex", "lookup", "currency", "validation", "missing")
"""What refused a value (`Parsed.reason`): it is not of the slot's type (a number, yes/no, a
date), its entity's regexes or lookup list, the slot's currencies, its validation (range,
choices, regex), or nothing was found."""


@dataclass(frozen=True)
class Parsed:
    """A converted slot value, or why it could not be had (`problem`, said to the user;
    `reason`, one of REASONS)."""

    value: SlotValue = None
    problem: str | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.problem is None and self.value is not None


def from_text(
    slot: SlotDef, text: str, matcher: EntityMatcher | None, rules: Validation | None = None,
    *, clock: Clock | None = None,
) -> Parsed:
    """The value of `slot` given by a raw answer, converted by the slot's type, validated.
    `clock`: the moment and place relative dates are read in (date slots; default: now, UTC)."""
    value: SlotValue = None
    if slot.type == "number":
        return _amount(slot, text, rules)
    if slot.type in DATE_TYPES:
        return _date(slot, text, rules, clock)
    if slot.type == "boolean":
        value = parse_boolean(text)
    elif slot.type == "categorical":
        value = match_choice(slot, text, matcher, rules)
    elif slot.type == "entity" and matcher is not None and not matcher.empty:
        value = matcher.find(text) or _from_lookup(slot, text.strip(), matcher)
    elif slot.type == "text" and matcher is not None and matcher.patterns:
        return _patterned(slot, text, matcher, rules)
    else:
        return _listed(slot, text.strip(), matcher, rules)
    return _checked(slot, value, rules)


def from_entity(
    slot: SlotDef, raw: str, matcher: EntityMatcher | None, rules: Validation | None = None,
    *, clock: Clock | None = None,
) -> Parsed:
    """The value of `slot` given by an entity value found by NLU (refused when the entity's
    regexes do not match it: EntityMatcher.admits)."""
    if slot.type in ("number", "boolean", *DATE_TYPES):
        return from_text(slot, raw, matcher, rules, clock=clock)
    if matcher is not None and not matcher.admits(raw.strip()):
        return _unlike(slot, raw)
    if slot.type == "categorical":
        return _checked(slot, match_choice(slot, raw, matcher, rules), rules)
    value = matcher.canonical(raw) if matcher is not None else raw
    return _listed(slot, value.strip(), matcher, rules)


def _patterned(slot: SlotDef, text: str, matcher: EntityMatcher,
               rules: Validation | None) -> Parsed:
    """A text slot whose entity has regexes: what they (or its lookup list) find in `text`."""
    found = matcher.find(text)
    return _unlike(slot, text) if found is None else _listed(slot, found, matcher, rules)


def _unlike(slot: SlotDef, value: str) -> Parsed:
    """`value` refused: its entity's regexes do not match it."""
    return Parsed(None, f"{value.strip()} doesn't look like a {slot.label}", "regex")


def _looked_up(slot: SlotDef, matcher: EntityMatcher | None) -> bool:
    """Whether the slot takes only the values of its entity's lookup list."""
    return slot.lookup_only and matcher is not None and bool(matcher.lookup)


def _from_lookup(slot: SlotDef, text: str, matcher: EntityMatcher) -> str | None:
    return matcher.known(text, slot.fuzzy) if text and _looked_up(slot, matcher) else None


def _listed(
    slot: SlotDef, value: str, matcher: EntityMatcher | None, rules: Validation | None
) -> Parsed:
    """A text value, which must be (or be a close spelling of) a lookup value when the
    slot's entity has a lookup list."""
    if not value or matcher is None or not _looked_up(slot, matcher):
        return _checked(slot, value or None, rules)
    known = matcher.known(value, slot.fuzzy)
    if known is None:
        return Parsed(None, f"{value} is not a {slot.label} I know", "lookup")
    return _checked(slot, known, rules)


def _amount(slot: SlotDef, text: str, rules: Validation | None) -> Parsed:
    """A number; with `currencies`, one that names no other currency than those."""
    currency = named_currency(text) if slot.currencies else None
    if currency is not None and currency not in slot.currencies:
        accepted = ", ".join(slot.currencies)
        return Parsed(None, f"only {accepted} amounts are possible, not {currency}", "currency")
    return _checked(slot, parse_number(text), rules)


def _date(slot: SlotDef, text: str, rules: Validation | None, clock: Clock | None) -> Parsed:
    """A date (`yesterday`, `3 March`, `2026-03-03`) as an ISO date, or a date and time as
    an ISO timestamp with the bot's UTC offset, read in the bot's language and timezone."""
    return _checked(slot, parse_date(text, slot.type == "datetime", clock or Clock()), rules)


def coerce(slot: SlotDef, value: Any) -> Parsed:
    """A value from a workflow output or a payload, made the slot's type if it can be."""
    if value is None or (isinstance(value, bool) and slot.type == "boolean"):
        return Parsed(value)
    if slot.type == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return _checked(slot, _tidy(float(value)), None)
    if isinstance(value, str | int | float):
        return from_entity(slot, str(value), None)
    return Parsed(None, "it is not a plain value", "type")


def match_choice(
    slot: SlotDef, text: str, matcher: EntityMatcher | None, rules: Validation | None = None
) -> str | None:
    """The choice of a categorical slot that `text` is or names (its entity's synonyms
    count), None when there is none or more than one."""
    choices = [str(c) for c in slot.validation.merged(rules).choices]
    names = {choice.lower(): choice for choice in choices}
    if matcher is not None:
        names.update({variant: canonical for variant, canonical in matcher.synonyms.items()
                      if canonical.lower() in (c.lower() for c in choices)})
    exact = names.get(_normal(text))
    if exact is not None:
        return _choice_case(exact, choices)
    found = {_choice_case(names[p], choices) for p in names if _find_phrase(text, [p])}
    return found.pop() if len(found) == 1 else None


def _choice_case(value: str, choices: list[str]) -> str:
    return next((c for c in choices if c.lower() == value.lower()), value)


def _checked(slot: SlotDef, value: SlotValue, rules: Validation | None) -> Parsed:
    if value is None:
        typed = slot.type in ("number", "boolean", *DATE_TYPES)
        return Parsed(None, _missing(slot, rules), "type" if typed else "missing")
    problem = value_problem(slot, value, rules)
    return Parsed(value, problem, "validation" if problem is not None else "")


def _missing(slot: SlotDef, rules: Validation | None) -> str:
    if slot.type == "number":
        return "it must be a number"
    if slot.type == "boolean":
        return "please answer yes or no"
    if slot.type in DATE_TYPES:
        return "it must be a date" if slot.type == "date" else "it must be a date and time"
    choices = slot.validation.merged(rules).choices
    if choices:
        return f"it must be one of: {', '.join(str(c) for c in choices)}"
    if slot.type == "entity":
        return f"I don't know that {slot.label}"
    return f"the {slot.label} is empty"
