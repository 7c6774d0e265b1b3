"""Chinese slot values: amounts (`五十元`, `50块`, `一百二十五元`, `两千五`, `1.5万`), dates
and times (`明天下午三点`, `下周一上午十点半`, `3月5日`), yes / no (`好的`, `不用了`) and the
currencies Chinese names (`欧元`, `美元`; a bare `元` / `块` names none: it is "units of money").

Numerals are read with `cn2an` (imported on first use); dates and times by the rules below,
because dateparser's Chinese misreads them (`3月5日` as 25 August, `明天下午三点` as nothing).
What these rules do not read is left to dateparser (`services/dialogue/engine/dates.py`).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import warnings
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from services.common.cjk import HAN

CJK = HAN
_NUMERAL = re.compile(r"[零〇一二两三四五六七八九十百千万亿壹贰叁肆伍陆柒捌玖拾佰仟]")
_SCALED = re.compile(r"(\d+(?:\.\d+)?)\s*([千万亿])(\d)?(?![\d千万亿])")
_SCALES = MappingProxyType({"千": 1000, "万": 10_000, "亿": 100_000_000})
_SMALL_CHANGE = re.compile(r"(\d+)\s*[块元](\d)(?![\d角毛分.])")
_NUMBER_RUN = re.compile(r"\d+(?:[.,]\d+)*")

CURRENCIES: Mapping[str, str] = MappingProxyType({
    "欧元": "EUR", "美元": "USD", "美金": "USD", "英镑": "GBP", "日元": "JPY",
    "人民币": "CNY", "rmb": "CNY", "港币": "HKD", "港元": "HKD", "瑞士法郎": "CHF",
    "瑞郎": "CHF", "加元": "CAD", "澳元": "AUD", "卢比": "INR",
})
"""Currency names; a bare `元`, `块` or `块钱` names no currency (the bot's own, as a bare
number does)."""

YES = frozenset({"是", "是的", "对", "对的", "好", "好的", "好啊", "行", "可以", "确认", "确定",
                 "没问题", "嗯", "嗯嗯", "当然", "要", "同意", "没错", "对啊", "好吧"})
NO = frozenset({"不", "不是", "不要", "不用", "不用了", "否", "不行", "不对", "算了", "别",
                "不可以", "不确定", "取消", "不好", "没有", "先不要", "暂时不要"})


def has_cjk(text: str) -> bool:
    return CJK.search(text) is not None


# "一笔钱" (a sum of money), "一下", "一些", "两个": a numeral before a measure word counts
# things, it is no amount, recipient or date: such a span from the tagger is dropped
_COUNTED = re.compile(r"[一两几][笔下些点个次张位]")


def counts_things(text: str, start: int, end: int) -> bool:
    """Whether the entity span `text[start:end]` is a lone numeral followed by a measure word
    (`一` in 我想转一笔钱)."""
    return 0 <= start < end <= len(text) and end - start == 1 and bool(
        _COUNTED.fullmatch(text[start:end + 1]))


def arabic(text: str) -> str:
    """`text` with Chinese numerals written in digits and spaced from the words around them
    (`转五十块给妈妈` -> `转 50 块给妈妈`, `两万五` -> ` 25000 `, `1.5万` -> ` 15000 `,
    `五块五` -> ` 5.5 `); unchanged without CJK characters."""
    if not has_cjk(text):
        return text
    if _NUMERAL.search(text):
        text = _cn2an(text)
    text = _SCALED.sub(_scaled, text)
    text = _SMALL_CHANGE.sub(lambda m: f"{m.group(1)}.{m.group(2)}", text)
    return _NUMBER_RUN.sub(lambda m: f" {m.group(0)} ", text)


def _scaled(match: re.Match[str]) -> str:
    value = float(match.group(1)) * _SCALES[match.group(2)]
    if match.group(3):  # 1万5 = 15,000; 3千5 = 3,500
        value += int(match.group(3)) * _SCALES[match.group(2)] / 10
    return str(int(value)) if value.is_integer() else str(value)


def _cn2an(text: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return str(_converter()(text, "cn2an"))
        except Exception:  # a text cn2an cannot read keeps its numerals
            return text


@functools.cache
def _converter() -> Any:
    import cn2an  # ~0.2 s: only bots that read Chinese numbers pay for it

    return cn2an.transform


def currency(text: str) -> set[str]:
    """The ISO codes of the currencies `text` names in Chinese."""
    lowered = text.lower()
    return {code for name, code in CURRENCIES.items() if name in lowered}


def boolean(text: str) -> bool | None:
    """True / False from a Chinese yes / no (`好的`, `是的，转吧`, `不用了`), else None."""
    words = re.sub(r"[\s,，.。!！?？~、]+", " ", text).strip().split(" ")
    first = words[0] if words else ""
    for size in (len(first), 3, 2, 1):  # the longest known start: 不好 before 好
        phrase = first[:size]
        if phrase in NO:
            return False
        if phrase in YES:
            return True
    return None


# -- dates and times -----------------------------------------------------------------------------

_DAY_WORDS: Mapping[str, int] = MappingProxyType({
    "大前天": -3, "前天": -2, "昨天": -1, "昨日": -1, "今天": 0, "今日": 0, "今晚": 0,
    "明天": 1, "明日": 1, "明晚": 1, "后天": 2, "大后天": 3,
})
_WEEKDAYS: Mapping[str, int] = MappingProxyType({
    "一": 0, "二": 1, "三": 2, "四": 3, "五": 4, "六": 5, "日": 6, "天": 6, "末": 5,
    "1": 0, "2": 1, "3": 2, "4": 3, "5": 4, "6": 5, "7": 6,
})
_DIGITS: Mapping[str, int] = MappingProxyType({
    "零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7,
    "八": 8, "九": 9,
})
_N = r"[0-9零〇一二两三四五六七八九十]+"
_RELATIVE_DAY = re.compile("|".join(sorted(_DAY_WORDS, key=len, reverse=True)))
_WEEKDAY = re.compile(r"(下下|下个?|这个?|本|上个?)?(?:周|星期|礼拜)([一二三四五六日天末1-7])")
_MONTH_DAY = re.compile(rf"(?:({_N})年)?({_N})月({_N})[日号]?")
_DAY_OF_MONTH = re.compile(rf"(?<![月\d])({_N})[日号]")
_IN_DAYS = re.compile(rf"({_N})(天|个?星期|周|个?礼拜)(?:以?后|之后)")
_PERIOD = r"(凌晨|早上|早晨|清晨|上午|中午|下午|傍晚|晚上|夜里|夜间|今晚|明晚)?"
_CLOCK = re.compile(rf"{_PERIOD}\s*({_N})(?:点|时|:|：)(?:({_N})分?|(半)|(一刻)|(三刻)|整)?")
_PERIOD_ONLY = re.compile(r"(今晚|明晚)")


def small_number(text: str) -> int | None:
    """`15`, `十五`, `二十三`, `两`, `二〇二六` (digit by digit) as an int; None if not one."""
    if text.isdigit():
        return int(text)
    if "十" in text:
        tens, _, units = text.partition("十")
        high = _DIGITS.get(tens, -1) if tens else 1
        low = _DIGITS.get(units, -1) if units else 0
        return high * 10 + low if high >= 0 and low >= 0 else None
    if all(c in _DIGITS for c in text):
        return int("".join(str(_DIGITS[c]) for c in text))
    return None


def read_datetime(text: str, now: dt.datetime) -> tuple[dt.datetime, bool] | None:
    """The date and time a Chinese text names, read from `now` (naive, local), and whether
    it named a time; None when it names no date nor time. A date without a time keeps
    `now`'s time of day (as dateparser does for "tomorrow"); a time without a date is today."""
    day = _date(text, now.date())
    clock = _time(text)
    if day is None and clock is None:
        return None
    base = day if day is not None else now.date()
    when = dt.datetime.combine(base, clock if clock is not None else now.time())
    return when, clock is not None


def _date(text: str, today: dt.date) -> dt.date | None:
    found = _RELATIVE_DAY.search(text)
    if found is not None:
        return today + dt.timedelta(days=_DAY_WORDS[found.group(0)])
    found = _IN_DAYS.search(text)
    if found is not None:
        count = small_number(found.group(1))
        if count is not None:
            days = count if found.group(2) == "天" else count * 7
            return today + dt.timedelta(days=days)
    found = _WEEKDAY.search(text)
    if found is not None:
        return _weekday(today, found.group(1) or "", _WEEKDAYS[found.group(2)])
    found = _MONTH_DAY.search(text)
    if found is not None:
        return _month_day(today, *found.groups())
    found = _DAY_OF_MONTH.search(text)
    if found is not None:
        day = small_number(found.group(1))
        return _safe_date(today.year, today.month, day) if day is not None else None
    return None


def _weekday(today: dt.date, which: str, weekday: int) -> dt.date:
    """`周五` is this week's Friday (the next one once it is past); `下周五` next week's."""
    monday = today - dt.timedelta(days=today.weekday())
    if which.startswith("下下"):
        return monday + dt.timedelta(days=14 + weekday)
    if which.startswith("下"):
        return monday + dt.timedelta(days=7 + weekday)
    if which.startswith("上"):
        return monday + dt.timedelta(days=weekday - 7)
    day = monday + dt.timedelta(days=weekday)
    return day if which or day >= today else day + dt.timedelta(days=7)


def _month_day(today: dt.date, year: str | None, month: str, day: str) -> dt.date | None:
    numbers = [small_number(part) if part else None for part in (year, month, day)]
    if numbers[1] is None or numbers[2] is None:
        return None
    return _safe_date(numbers[0] or today.year, numbers[1], numbers[2])


def _safe_date(year: int, month: int, day: int | None) -> dt.date | None:
    try:
        return dt.date(year, month, day or 0)
    except ValueError:
        return None


def _time(text: str) -> dt.time | None:
    found = _CLOCK.search(text)
    if found is None:
        evening = _PERIOD_ONLY.search(text)
        return dt.time(20, 0) if evening is not None else None
    period, hour_text, minute_text, half, quarter, three_quarters = found.groups()
    hour = small_number(hour_text)
    minute = small_number(minute_text) if minute_text else 0
    if half:
        minute = 30
    elif quarter:
        minute = 15
    elif three_quarters:
        minute = 45
    if hour is None or minute is None or hour > 24 or minute > 59:
        return None
    afternoon = period in ("下午", "傍晚", "晚上", "夜里", "夜间", "今晚", "明晚") and hour < 12
    if afternoon or (period == "中午" and hour < 11):
        hour += 12
    elif period == "凌晨" and hour == 12:
        hour = 0
    return dt.time(hour % 24, minute)


# -- what the user is told about a refused value -------------------------------------------------

_PROBLEMS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), template) for pattern, template in (
        (r"^it must be at least (.+)$", r"不能少于 \1"),
        (r"^it must be more than (.+)$", r"必须大于 \1"),
        (r"^it must be at most (.+)$", r"不能超过 \1"),
        (r"^it must be less than (.+)$", r"必须小于 \1"),
        (r"^it must be one of: (.+)$", r"必须是以下之一：\1"),
        (r"^it must be a number$", "必须是一个数字"),
        (r"^it must be yes or no$|^please answer yes or no$", "请回答“是”或“否”"),
        (r"^it must be a date and time$|^it must be an ISO datetime$", "必须是日期和时间"),
        (r"^it must be a date$|^it must be an ISO date$", "必须是日期"),
        (r"^it must be text$", "必须是文字"),
        (r"^it doesn't have the expected format$", "格式不对"),
        (r"^only (.+) amounts are possible, not (.+)$", r"只能使用 \1，不能使用 \2"),
        (r"^(.+) doesn't look like a LABEL$", r"“\1”不像是有效的LABEL"),
        (r"^(.+) is not a LABEL I know$", r"我不认识“\1”这个LABEL"),
        (r"^I don't know that LABEL$", "我不认识这个LABEL"),
        (r"^the LABEL is empty$", "LABEL不能为空"),
    ))


def problem(text: str, label: str, label_here: str) -> str:
    """A refused value's problem (services/dialogue/engine/values.py, slotrules.py) said in
    Chinese: `label` is the slot's label in the default language (as the English problem
    names it), `label_here` its Chinese one. A problem not known here is kept as it is."""
    for pattern, template in _PROBLEMS:
        english = re.compile(pattern.pattern.replace("LABEL", re.escape(label)))
        found = english.match(text)
        if found is not None:
            return found.expand(template).replace("LABEL", label_here)
    return text
