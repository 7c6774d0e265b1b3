"""PII redaction: card numbers, IBANs, e-mail addresses, phone numbers and Chinese resident ID
numbers in free text.

`redact(text)` replaces each one with a label (`[CARD]`, `[IBAN]`, `[EMAIL]`, `[PHONE]`,
`[ID]`); `redact_value` does the same for every string inside nested dicts, lists and tuples.

Precise where a checksum exists, generous elsewhere: a card number must pass the Luhn check
and an IBAN its mod-97 check (so account numbers, amounts and ids that merely look alike stay),
while any 8 to 15 digit number (7 to 15 after a `+` or `00` country prefix) that is not a date
counts as a phone number. Redaction errs on the side of hiding.

Chinese formats (docs/security.md): mainland mobile numbers (11 digits `1[3-9]...`, optionally
after `+86`/`0086`/`86`, grouped 3-4-4 or not) are `[PHONE]`, found before card numbers so that
a prefixed one passing the Luhn check is no card; 18-character resident ID numbers (居民身份证)
are `[ID]` when their ISO 7064 MOD 11-2 check character matches and their birth date is a real
date between 1900 and today (any other 18-digit number, an order number say, is left to the
card and phone rules); UnionPay card numbers are `[CARD]` when they pass the Luhn check like any
card, and also without it when 16-19 digits long, in UnionPay's ranges 622126-622925, 624-626
and 6282-6288 (some UnionPay debit cards carry no Luhn digit) and at the start of their number.
Chinese and Japanese are written without spaces and Korean particles attach to the word before,
so Han, kana and Hangul count as word breaks around a number or an address
("手机号13812345678谢谢"); other letters (Latin, Cyrillic...) and digits still do not.
Full-width forms typed by Chinese input methods ("１３８１２３４５６７８", "＋８６") are read as
their ASCII equivalents (NFKC's mapping of U+FF01-FF5E, the full-width colon excepted, and of
the ideographic space U+3000) on a copy of the same length, so each label replaces the same
span of the text and the rest keeps its full-width characters.

Time is bounded: every pattern is precompiled, anchored on a required character and made of
bounded repeats whose parts cannot match the same text two ways (no nested or adjacent
ambiguous quantifiers), so a scan is linear in the text length; the checksum searches work on
runs of at most 64 digit groups. Text with no digit (ASCII or full-width) and no `@` is returned
at once, and the number patterns run only where a cheap search finds as many digits as they
need (7 for a phone number, 11 for the others).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Collection, Sequence
from datetime import date
from typing import Any

CARD = "[CARD]"
IBAN = "[IBAN]"
EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
ID = "[ID]"
LABELS = (CARD, IBAN, EMAIL, PHONE, ID)

_MAY_CONTAIN = re.compile("[0-9@\uff10-\uff19\uff20]")

# Full-width ASCII forms (U+FF01-FF5E) and the ideographic space, read as ASCII (what NFKC
# does to them, one character for one, so spans in the copy are spans in the text), in a text
# with a full-width digit or `＠` (full-width punctuation alone, common in Chinese, changes
# nothing worth the copy). The full-width colon stays: it ends Chinese phrases ("电话：..."),
# where `:` would read as a time.
_FULLWIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F) if code != 0xFF1A}
_FULLWIDTH[0x3000] = ord(" ")
_HAS_FULLWIDTH = re.compile("[\uff10-\uff19\uff20]")

# Blocks of scripts written without spaces between words (Han, kana, Hangul, their symbols
# and half-width forms). Python's `\w` counts their letters as word characters, so a number
# touching them would have no word boundary: the lookarounds use _WORD, a word character
# outside these blocks, instead. Full-width Latin letters and digits (U+FF10-FF5A) are letters
# and digits like the ASCII ones they read as.
_CJK = (r"\u1100-\u11ff\u2e80-\u2fdf\u3000-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff"
        r"\ufe30-\ufe4f\uff5b-\uffef\U00020000-\U0003ffff")
_WORD = rf"[^\W{_CJK}]"

_EMAIL = re.compile(
    rf"[A-Za-z0-9._%+-](?<!{_WORD}.)(?<![.%+-].)[A-Za-z0-9._%+-]{{0,63}}@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}"
    rf"(?!{_WORD}|-)"
)


def email_spans(text: str) -> list[tuple[int, int]]:
    """The [start, end) spans of the e-mail addresses in `text`."""
    if "@" not in text and "\uff20" not in text:
        return []
    return [match.span() for match in _EMAIL.finditer(_normalised(text))]


# Two letters, two check digits, then 11-30 letters or digits, optionally grouped by spaces.
_IBAN = re.compile(r"[A-Za-z](?<![A-Za-z0-9].)[A-Za-z][0-9]{2}(?: ?[A-Za-z0-9]){11,30}")


def _apart(chars: int, *, spaced: bool = False) -> str:
    """Lookbehinds, after the first `chars` characters of a match (so that a search skips ahead
    on the characters that can start one and rules most out before these run): the match is
    not part of a longer number, so no word character, `+` or `.` right before it, nor a digit
    and a dash (a space or a slash too, if `spaced`)."""
    skip = f".{{{chars}}}"
    return rf"(?<!(?:{_WORD}|[+.]){skip})(?<![0-9][{' /' if spaced else ''}-]{skip})"


# ... nor a word character right after it, nor a dash or dot and a digit (a space, slash or
# `+` too, if spaced).
_APART_END = rf"(?!{_WORD})(?![.-][0-9])"
_SPACED_APART_END = rf"(?!{_WORD})(?![ ./+-][0-9])"
# A resident ID number: 6-digit region, 8-digit birth date, 3-digit sequence, check character;
# optionally grouped 6-8-4.
_CN_ID = re.compile(
    rf"[1-9][0-9]{{5}}{_apart(6)}[ -]?[0-9]{{8}}[ -]?[0-9]{{3}}[0-9Xx]{_APART_END}"
)
# A mainland mobile number, optionally after `+86`, `0086` or `86`, optionally grouped 3-4-4
# (one alternative per first character: `+`, `0`, `8`, `1`). Unlike an ID number (which carries
# its own check) it must not touch another group of digits, lest it be read out of a longer
# grouped number.
_CN_MOBILE = re.compile(
    rf"(?:\+86{_apart(3, spaced=True)}[ -]?1[3-9]|0086{_apart(4, spaced=True)}[ -]?1[3-9]"
    rf"|86{_apart(2, spaced=True)}[ -]?1[3-9]|1[3-9]{_apart(2, spaced=True)})"
    rf"[0-9][ -]?[0-9]{{4}}[ -]?[0-9]{{4}}{_SPACED_APART_END}"
)
# A run of digits with single space or dash separators; card numbers are searched inside it.
_DIGIT_RUN = re.compile(rf"[0-9](?<!{_WORD}.)(?:[ -]?[0-9]){{12,79}}(?![0-9])")
_DIGITS = re.compile(r"[0-9]+")
_SEPARATOR = re.compile(r"[ -]")
# Optional country prefix, optional area code in parentheses, then digits with single
# separators.
_PHONE = re.compile(
    rf"(?<!{_WORD})(?<!\+)(?:(?:\+|00)[0-9]{{1,3}}[ .-]?)?(?:\([0-9]{{1,5}}\)[ .-]?)?"
    rf"[0-9](?:[ ./-]?[0-9]){{5,16}}(?!{_WORD}|:)"
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
_LUHN_DOUBLED = bytes.maketrans(b"0123456789", b"0246813579")
# Resident ID numbers: ISO 7064 MOD 11-2 weights of the 17 digits, check character by remainder.
_ID_SHAPE = re.compile(r"[0-9]{17}[0-9Xx]")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn check (card numbers)."""
    # On the ASCII codes (48 + digit): every second digit from the right doubled, its digits
    # summed (a table: 0 2 4 6 8 1 3 5 7 9), then the 48s taken off.
    data = digits.encode()
    doubled = data[-2::-2].translate(_LUHN_DOUBLED)
    return (sum(data[-1::-2]) + sum(doubled) - 48 * len(data)) % 10 == 0


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


def id_number_valid(number: str) -> bool:
    """Whether an 18-character Chinese resident ID number (17 digits and a check digit or `X`)
    passes the ISO 7064 MOD 11-2 check and carries a real birth date between 1900 and today."""
    if len(number) != 18 or not _ID_SHAPE.match(number):
        return False
    try:
        born = date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    # Weighted sum of the digits, on their ASCII codes (48 + digit; the weights sum to 100).
    total = sum(map(operator.mul, number[:17].encode(), _ID_WEIGHTS)) - 48 * 100
    return _ID_CHECK[total % 11] == number[17].upper() and (
        date(1900, 1, 1) <= born <= date.today())


def unionpay_range(digits: str) -> bool:
    """Whether a 16-19 digit number lies in a UnionPay range whose cards may lack a Luhn digit
    (622126-622925, 624-626, 6282-6288): such numbers are cards without the check."""
    return 16 <= len(digits) <= 19 and (
        "622126" <= digits[:6] <= "622925" or digits[:3] in ("624", "625", "626")
        or "6282" <= digits[:4] <= "6288")


_Cut = tuple[int, int, str]
"""A [start, end) span of the text and the label that replaces it."""


def _email(match: re.Match[str]) -> Sequence[_Cut]:
    return ((*match.span(), EMAIL),)


def _iban(match: re.Match[str]) -> Sequence[_Cut]:
    """The match's valid IBAN prefix (the rest, e.g. a next word, is kept)."""
    text = match.group(0)
    compact_positions = [i for i, c in enumerate(text) if c != " "]
    compact = "".join(text[i] for i in compact_positions).upper()
    length = IBAN_LENGTHS.get(compact[:2])
    if length is None or length > len(compact) or not iban_valid(compact[:length]):
        return ()
    return ((match.start(), match.start() + compact_positions[length - 1] + 1, IBAN),)


def _id_number(match: re.Match[str]) -> Sequence[_Cut]:
    number = match.group(0)
    if len(number) > 18:
        number = _SEPARATOR.sub("", number)
    return ((*match.span(), ID),) if id_number_valid(number) else ()


def _mobile(match: re.Match[str]) -> Sequence[_Cut]:
    return ((*match.span(), PHONE),)


def _cards(match: re.Match[str]) -> Sequence[_Cut]:
    """Every card number of whole groups in the run: Luhn-valid and 13-19 digits, or at the
    start of the run and in a UnionPay range without the check."""
    run = match.group(0)
    groups = [(m.start(), m.end()) for m in _DIGITS.finditer(run)]
    cuts: list[_Cut] = []
    first = 0
    while first < len(groups):
        last = _card_at(run, groups, first)
        if last is None:
            first += 1
            continue
        cuts.append((match.start() + groups[first][0], match.start() + groups[last][1], CARD))
        first = last + 1
    return cuts


def _card_at(run: str, groups: list[tuple[int, int]], first: int) -> int | None:
    """The last group of the longest card number starting at group `first`: Luhn-valid if one
    is, else, where `first` starts the run, in a UnionPay range (a number that merely starts
    like one in the middle of a longer run is none)."""
    digits = ""
    luhn: int | None = None
    unionpay: int | None = None
    for last in range(first, min(len(groups), first + MAX_CARD_GROUPS)):
        digits += run[groups[last][0]:groups[last][1]]
        if len(digits) > 19:
            break
        if len(digits) >= 13 and luhn_valid(digits):
            luhn = last
        elif first == 0 and unionpay_range(digits):
            unionpay = last
    return luhn if luhn is not None else unionpay


def _phone(match: re.Match[str]) -> Sequence[_Cut]:
    text = match.group(0)
    digits = sum(map(str.isdigit, text))
    prefixed = text.startswith(("+", "00"))
    if not (7 if prefixed else 8) <= digits <= 15:
        return ()
    if not prefixed and (_DATE.match(text) or _GROUPED_NUMBER.match(text) or _IPV4.match(text)):
        return ()
    return ((*match.span(), PHONE),)


def _normalised(text: str) -> str:
    """`text` with full-width forms read as ASCII, character for character."""
    if text.isascii() or not _HAS_FULLWIDTH.search(text):
        return text
    return text.translate(_FULLWIDTH)


def _cut(text: str, cuts: Sequence[_Cut]) -> str:
    """`text` with each span replaced by its label."""
    pieces: list[str] = []
    position = 0
    for start, end, label in cuts:
        pieces.append(text[position:start])
        pieces.append(label)
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


class _Step:
    """One pattern and what to cut from its matches."""

    __slots__ = ("find", "pattern")

    def __init__(self, pattern: re.Pattern[str], find: Callable[[re.Match[str]], Sequence[_Cut]]):
        self.pattern = pattern
        self.find = find

    def apply(self, text: str, read: str) -> tuple[str, str]:
        """`text` and `read` (its copy as read, the same object when nothing was normalised)
        with the cuts made in both."""
        if read is text:
            text = self.pattern.sub(self._replace, text)
            return text, text
        cuts = [cut for match in self.pattern.finditer(read) for cut in self.find(match)]
        return (_cut(text, cuts), _cut(read, cuts)) if cuts else (text, read)

    def _replace(self, match: re.Match[str]) -> str:
        cuts = self.find(match)
        if not cuts:
            return match.group(0)
        start, end = match.span()
        if len(cuts) == 1 and cuts[0][0] == start and cuts[0][1] == end:
            return cuts[0][2]
        return _cut(match.group(0), [(s - start, e - start, label) for s, e, label in cuts])


# In this order: an address or an IBAN holds digits that are no phone number, and an ID or a
# mobile number (with its country prefix) may pass the Luhn check.
_EMAILS = _Step(_EMAIL, _email)
_IBANS = _Step(_IBAN, _iban)
_LONG_NUMBERS = (_Step(_CN_ID, _id_number), _Step(_CN_MOBILE, _mobile), _Step(_DIGIT_RUN, _cards))
_PHONES = _Step(_PHONE, _phone)
# What the number steps need at least, checked first for speed: 7 digits at most two of
# `()./- ` apart for a phone number; 11 digits at most a space or dash apart for the others.
_SEVEN_DIGITS = re.compile(r"[0-9](?:[ ./()-]{0,2}[0-9]){6}")
_ELEVEN_DIGITS = re.compile(r"[0-9](?:[ -]?[0-9]){10}")


def redact(text: str) -> str:
    """`text` with every card number, IBAN, e-mail address, phone number and Chinese resident
    ID number replaced by its label."""
    if not _MAY_CONTAIN.search(text):
        return text
    # The patterns run on `read`, the text with full-width forms as ASCII; each cut is made in
    # both, which keep the same length and differ only in those forms.
    read = _normalised(text)
    if "@" in read:
        text, read = _EMAILS.apply(text, read)
    text, read = _IBANS.apply(text, read)
    number = _SEVEN_DIGITS.search(read)
    long_number = number is not None and _ELEVEN_DIGITS.search(read, number.start()) is not None
    for step in _LONG_NUMBERS:
        if not long_number:
            break
        redacted, read = step.apply(text, read)
        changed, text = redacted != text, redacted
        if changed:  # fewer digits left: check again what the next steps need
            number = _SEVEN_DIGITS.search(read)
            long_number = number is not None and (
                _ELEVEN_DIGITS.search(read, number.start()) is not None)
    return text if number is None else _PHONES.apply(text, read)[0]


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
