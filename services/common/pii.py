"""PII redaction: card numbers, IBANs, e-mail addresses and phone numbers in free text.

`redact(text)` replaces each one with a label (`[CARD]`, `[IBAN]`, `[EMAIL]`, `[PHONE]`);
`redact_value` does the same for every string inside nested dicts, lists and tuples.

Precise where a checksum exists, generous elsewhere: a card number must pass the Luhn check
and an IBAN its mod-97 check (so account numbers, amounts and ids that merely look alike stay),
while any 8 to 15 digit number (7 to 15 after a `+` or `00` country prefix) that is not a date
counts as a phone number. Redaction errs on the side of hiding.

Time is bounded: every pattern is precompiled, anchored on a required character and made of
bounded repeats whose parts cannot match the same text two ways (no nested or adjacent
ambiguous quantifiers), so a scan is linear in the text length; the checksum searches work on
runs of at most 64 digit groups. Text with no digit and no `@` is returned at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any

CARD = "[CARD]"
IBAN = "[IBAN]"
EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
LABELS = (CARD, IBAN, EMAIL, PHONE)

_MAY_CONTAIN = re.compile(r"[0-9@]")

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]{1,64}@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}(?![\w-])"
)


def email_spans(text: str) -> list[tuple[int, int]]:
    """The [start, end) spans of the e-mail addresses in `text`."""
    if "@" not in text:
        return []
    return [match.span() for match in _EMAIL.finditer(text)]


# Two letters, two check digits, then 11-30 letters or digits, optionally grouped by spaces.
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}[0-9]{2}(?: ?[A-Za-z0-9]){11,30}")
# A run of digits with single space or dash separators; card numbers are searched inside it.
_DIGIT_RUN = re.compile(r"(?<![\w])[0-9](?:[ -]?[0-9]){12,79}(?![0-9])")
_SEPARATOR = re.compile(r"[ -]")
# Optional country prefix, optional area code in parentheses, then digits with single
# separators.
_PHONE = re.compile(
    r"(?<![\w+])(?:(?:\+|00)[0-9]{1,3}[ .-]?)?(?:\([0-9]{1,5}\)[ .-]?)?"
    r"[0-9](?:[ ./-]?[0-9]){5,16}(?![\w:])"
)
_DATE = re.compile(r"^(?:[0-9]{4}([-./])[0-9]{1,2}\1[0-9]{1,2}|[0-9]{1,2}([-./])[0-9]{1,2}\2"
                   r"[0-9]{2,4})$")
_GROUPED_NUMBER = re.compile(r"^[0-9]{1,3}(?:[.][0-9]{3})+(?:,[0-9]+)?$")
_IPV4 = re.compile(r"^[0-9]{1,3}(?:[.][0-9]{1,3}){3}$")

# IBAN lengths by country (ISO 13616 registry): a country not listed has no IBANs.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}
MIN_IBAN, MAX_IBAN = 15, 34
# A card number is written in at most this many groups (4-4-4-4-3 has five).
MAX_CARD_GROUPS = 8


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn check (card numbers)."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """Whether `iban` (letters and digits, no spaces) passes the ISO 7064 mod-97 check."""
    if not MIN_IBAN <= len(iban) <= MAX_IBAN or not iban.isascii() or not iban.isalnum():
        return False
    rearranged = iban[4:] + iban[:4]
    remainder = 0
    for char in rearranged.upper():
        value = int(char, 36)
        remainder = (remainder * (100 if value > 9 else 10) + value) % 97
    return remainder == 1


def _iban(match: re.Match[str]) -> str:
    """The match with its valid IBAN prefix replaced (the rest, e.g. a next word, kept)."""
    text = match.group(0)
    compact_positions = [i for i, c in enumerate(text) if c != " "]
    compact = "".join(text[i] for i in compact_positions).upper()
    length = IBAN_LENGTHS.get(compact[:2])
    if length is None or length > len(compact) or not iban_valid(compact[:length]):
        return text
    end = compact_positions[length - 1] + 1
    return IBAN + text[end:]


def _cards(match: re.Match[str]) -> str:
    """The run with every Luhn-valid 13-19 digit span of whole groups replaced."""
    run = match.group(0)
    groups = [(m.start(), m.end()) for m in re.finditer(r"[0-9]+", run)]
    pieces: list[str] = []
    position = 0
    first = 0
    while first < len(groups):
        found = _card_at(run, groups, first)
        if found is None:
            first += 1
            continue
        last = found
        pieces.append(run[position:groups[first][0]])
        pieces.append(CARD)
        position = groups[last][1]
        first = last + 1
    pieces.append(run[position:])
    return "".join(pieces)


def _card_at(run: str, groups: list[tuple[int, int]], first: int) -> int | None:
    """The last group of the longest Luhn-valid card number starting at group `first`."""
    digits = ""
    candidates: list[int] = []
    for last in range(first, min(len(groups), first + MAX_CARD_GROUPS)):
        digits += run[groups[last][0]:groups[last][1]]
        if len(digits) > 19:
            break
        if len(digits) >= 13 and luhn_valid(digits):
            candidates.append(last)
    return candidates[-1] if candidates else None


def _phone(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(c.isdigit() for c in text)
    prefixed = text.startswith(("+", "00"))
    if not (7 if prefixed else 8) <= digits <= 15:
        return text
    if not prefixed and any(p.match(text) for p in (_DATE, _GROUPED_NUMBER, _IPV4)):
        return text
    return PHONE


_STEPS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (_EMAIL, lambda _: EMAIL),
    (_IBAN, _iban),
    (_DIGIT_RUN, _cards),
    (_PHONE, _phone),
)


def redact(text: str) -> str:
    """`text` with every card number, IBAN, e-mail address and phone number replaced by its
    label."""
    if not _MAY_CONTAIN.search(text):
        return text
    for pattern, replace in _STEPS:
        if pattern is not _EMAIL or "@" in text:
            text = pattern.sub(replace, text)
    return text


def contains_pii(text: str) -> bool:
    return redact(text) != text


def redact_value(value: Any, *, keep: Collection[str] = ()) -> Any:
    """`value` with every string redacted, recursively through dicts, lists and tuples.

    Dict entries whose key is in `keep` (identifiers such as `message_id`) are left as they
    are; keys themselves are never changed.
    """
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: v if k in keep else redact_value(v, keep=keep) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v, keep=keep) for v in value]
    if isinstance(value, tuple):
        return tuple(redact_value(v, keep=keep) for v in value)
    return value
