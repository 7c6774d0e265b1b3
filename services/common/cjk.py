"""Character classes of the scripts written without spaces between words, shared by language
detection (`langid`), Chinese slot values (dialogue) and the knowledge base's Chinese search."""

from __future__ import annotations

import re

HAN_CLASS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
"""Han characters (CJK Unified Ideographs, Extension A, Compatibility Ideographs), as the
inside of a regex character class."""
KANA_CLASS = "\u3040-\u30ff"
"""Hiragana and katakana, as the inside of a regex character class."""

HAN = re.compile(f"[{HAN_CLASS}]")
HAN_OR_KANA = re.compile(f"[{HAN_CLASS}{KANA_CLASS}]")
HAN_OR_KANA_RUN = re.compile(f"[{HAN_CLASS}{KANA_CLASS}]+")
OTHER_SCRIPT_WORD = re.compile(rf"[^\W\d_{KANA_CLASS}{HAN_CLASS}]+")
"""A word of letters in any other script (Latin, Cyrillic, ...)."""
