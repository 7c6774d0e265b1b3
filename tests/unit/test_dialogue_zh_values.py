"""Chinese slot values (issue 23): amounts, currencies, yes / no, dates and times
(services/dialogue/engine/zh.py), through the same functions the engine reads English with."""

from __future__ import annotations

import pytest

from services.botdef import SlotDef
from services.dialogue.engine.dates import Clock, parse_date
from services.dialogue.engine.values import (
    EntityMatcher,
    from_text,
    named_currency,
    parse_boolean,
    parse_number,
)
from services.dialogue.engine.zh import arabic, counts_things, small_number

# Monday 2026-11-30 08:53:20 in Shanghai
SHANGHAI = Clock(1796000000.0, "Asia/Shanghai", "zh")


@pytest.mark.parametrize(("text", "number"), [
    ("五十元", 50), ("50块", 50), ("一百二十五元", 125), ("两千五", 2500), ("两千五百块", 2500),
    ("1.5万", 15000), ("一万二", 12000), ("1万5", 15000), ("五块五", 5.5), ("一千块钱", 1000),
    ("转五十块给妈妈", 50), ("三百", 300), ("零点五", 0.5), ("二十欧元", 20),
    ("50", 50), ("1,000 euros", 1000), ("fifty", 50), ("没有数字", None),
])
def test_chinese_amounts(text: str, number: float | None) -> None:
    assert parse_number(text) == number


def test_arabic_leaves_other_text_alone() -> None:
    assert arabic("send 50 to John") == "send 50 to John"
    assert arabic("转五十块") == "转 50 块"


@pytest.mark.parametrize(("text", "code"), [
    ("二十欧元", "EUR"), ("100美元", "USD"), ("五十英镑", "GBP"), ("300人民币", "CNY"),
    ("五十元", None), ("50块", None), ("50块钱", None),
])
def test_chinese_currencies(text: str, code: str | None) -> None:
    assert named_currency(text) == code


def test_an_amount_in_another_currency_is_refused_a_bare_yuan_is_not() -> None:
    slot = SlotDef("amount", type="number", currencies=("EUR",))
    assert from_text(slot, "五十元", None).value == 50
    refused = from_text(slot, "一百美元", None)
    assert refused.value is None and refused.reason == "currency"


@pytest.mark.parametrize(("text", "answer"), [
    ("好的", True), ("是的，转吧", True), ("可以", True), ("确认转账", True), ("嗯", True),
    ("不用了", False), ("不好", False), ("不要", False), ("算了吧", False), ("不是", False),
    ("这个嘛", None),
])
def test_chinese_yes_and_no(text: str, answer: bool | None) -> None:
    assert parse_boolean(text) is answer


@pytest.mark.parametrize(("text", "iso"), [
    ("明天下午三点", "2026-12-01T15:00:00+08:00"),
    ("明天下午3点", "2026-12-01T15:00:00+08:00"),
    ("后天上午十点半", "2026-12-02T10:30:00+08:00"),
    ("2026年3月5日下午2点", "2026-03-05T14:00:00+08:00"),
    ("今天晚上八点", "2026-11-30T20:00:00+08:00"),
    ("周五下午两点", "2026-12-04T14:00:00+08:00"),
    ("下周一上午9点", "2026-12-07T09:00:00+08:00"),
    ("中午12点", "2026-11-30T12:00:00+08:00"),
    ("晚上11点45分", "2026-11-30T23:45:00+08:00"),
    ("明天", "2026-12-01T08:53:20+08:00"),  # a date alone keeps the time of day, as in English
    ("tomorrow at 5pm", "2026-12-01T17:00:00+08:00"),  # English in a Chinese conversation
])
def test_chinese_datetimes(text: str, iso: str) -> None:
    assert parse_date(text, True, SHANGHAI) == iso


@pytest.mark.parametrize(("text", "iso"), [
    ("3月5日", "2026-03-05"), ("三天后", "2026-12-03"), ("昨天", "2026-11-29"),
    ("下周一", "2026-12-07"), ("星期三", "2026-12-02"), ("15号", "2026-11-15"),
])
def test_chinese_dates(text: str, iso: str) -> None:
    assert parse_date(text, False, SHANGHAI) == iso


def test_small_numbers() -> None:
    assert [small_number(t) for t in ("十五", "二十三", "十", "两", "二〇二六", "7", "百")] == [
        15, 23, 10, 2, 2026, 7, None]


def test_chinese_synonyms_are_found_without_spaces() -> None:
    from services.botdef import EntityDef

    entity = EntityDef("card_type", synonyms={"credit": ["信用卡"], "debit": ["借记卡", "储蓄卡"]})
    matcher = EntityMatcher.of(entity, {"信用卡": "credit", "借记卡": "debit", "储蓄卡": "debit"})
    assert matcher.find("我要冻结我的信用卡") == "credit"
    assert matcher.find("储蓄卡丢了") == "debit"
    assert matcher.find("block my credit card") is None


@pytest.mark.parametrize(("english", "chinese"), [
    ("it must be at most 10,000", "不能超过 10,000"),
    ("it must be more than 0", "必须大于 0"),
    ("only EUR amounts are possible, not USD", "只能使用 EUR，不能使用 USD"),
    ("Atlantis is not a city I know", "我不认识“Atlantis”这个城市"),
    ("please answer yes or no", "请回答“是”或“否”"),
    ("something new", "something new"),
])
def test_problems_are_told_in_chinese(english: str, chinese: str) -> None:
    from services.dialogue.engine.zh import problem

    assert problem(english, "city", "城市") == chinese


@pytest.mark.parametrize(("text", "span", "counted"), [
    ("我想转一笔钱", (3, 4), True), ("等一下", (1, 2), True), ("两个账户", (0, 1), True),
    ("转一百给刘洋", (1, 3), False), ("转一块给刘洋", (1, 2), False), ("一", (0, 1), False),
    ("我想转一笔钱", (9, 10), False),
])
def test_a_numeral_before_a_measure_word_counts_things(
        text: str, span: tuple[int, int], counted: bool) -> None:
    assert counts_things(text, *span) is counted
