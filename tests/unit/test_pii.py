"""PII redaction of Chinese formats (services/common/pii.py, docs/security.md): mainland mobile
numbers, resident ID numbers (居民身份证), UnionPay cards, numbers and addresses touching Han,
kana or Hangul (no spaces around them), and full-width forms. The other formats are covered by
tests/unit/test_security.py."""

from __future__ import annotations

import time
from datetime import date, timedelta

import pytest

from services.common.pii import (
    CARD,
    EMAIL,
    IBAN,
    ID,
    LABELS,
    PHONE,
    email_spans,
    id_number_valid,
    luhn_valid,
    redact,
    redact_value,
    unionpay_range,
)

VALID_ID = "11010519491231002X"  # Beijing, born 1949-12-31, check character X
VALID_IDS = [VALID_ID, "110105199003071239", "440304200002291236"]  # the last born on Feb 29


def with_check(first17: str) -> str:
    """The ID number with its ISO 7064 MOD 11-2 check character."""
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    total = sum(int(c) * w for c, w in zip(first17, weights, strict=True))
    return first17 + "10X98765432"[total % 11]


ZH_PII = [
    # Mainland mobile numbers: no spaces around them, separators, country prefixes.
    ("我的手机号是13812345678谢谢", f"我的手机号是{PHONE}谢谢"),
    ("手机：138 1234 5678，请回电", f"手机：{PHONE}，请回电"),
    ("电话138-1234-5678。", f"电话{PHONE}。"),
    ("联系+86 138 1234 5678吧", f"联系{PHONE}吧"),
    ("联系+86-138-1234-5678", f"联系{PHONE}"),
    ("号码+8613912345678", f"号码{PHONE}"),
    ("号码0086 15912345678", f"号码{PHONE}"),
    ("号码86 18612345678", f"号码{PHONE}"),
    ("两个号码13812345678/13912345678", f"两个号码{PHONE}/{PHONE}"),
    ("号码13812345678、13912345678。", f"号码{PHONE}、{PHONE}。"),
    ("tel 19120865979.7922", f"tel {PHONE}"),  # a longer dotted number is one phone number
    # 86 138 1234 5678 passes the Luhn check: the mobile number is found first, no `+[CARD]`.
    ("call +86 138 1234 5678", f"call {PHONE}"),
    # Resident ID numbers: valid check character and birth date.
    (f"身份证号{VALID_ID}，谢谢", f"身份证号{ID}，谢谢"),
    ("身份证号11010519491231002x", f"身份证号{ID}"),  # lower-case x
    ("证件110105 19491231 002X", f"证件{ID}"),
    ("证件110105-19491231-002X", f"证件{ID}"),
    ("身份证：110105199003071239。", f"身份证：{ID}。"),
    ("my id 440304200002291236", f"my id {ID}"),
    # UnionPay: Luhn-valid, or in the ranges without a Luhn digit.
    ("卡号6217001234567893，请帮我挂失", f"卡号{CARD}，请帮我挂失"),  # Luhn-valid, 6217
    ("卡号6217 0012 3456 7893", f"卡号{CARD}"),
    ("卡号6225881234567890", f"卡号{CARD}"),  # 622588: in 622126-622925, no Luhn digit
    ("卡号6250001234567890124", f"卡号{CARD}"),  # 625, 19 digits, no Luhn digit
    ("卡号6285 0012 3456 7891", f"卡号{CARD}"),  # 6285, grouped, no Luhn digit
    ("卡号6225881234567890 2025年到期", f"卡号{CARD} 2025年到期"),  # the run starts with it
    # The existing formats touching Han characters.
    ("卡号4111111111111111", f"卡号{CARD}"),
    ("卡号4111 1111 1111 1111有效期12/27", f"卡号{CARD}有效期12/27"),
    ("邮箱是zhang.san@example.cn谢谢", f"邮箱是{EMAIL}谢谢"),
    ("账户DE89370400440532013000谢谢", f"账户{IBAN}谢谢"),
    ("账户GB82 WEST 1234 5698 7654 32，好的", f"账户{IBAN}，好的"),
    ("打+49 30 1234567吧", f"打{PHONE}吧"),
    ("座机010-12345678，分机8", f"座机{PHONE}，分机8"),
    # Japanese and Korean are written the same way around numbers.
    ("電話番号は090-1234-5678です", f"電話番号は{PHONE}です"),
    ("010-1234-5678로 전화주세요", f"{PHONE}로 전화주세요"),
    # Several in one sentence.
    (f"我叫张三，身份证{VALID_ID}，手机13812345678，邮箱zs@example.com。",
     f"我叫张三，身份证{ID}，手机{PHONE}，邮箱{EMAIL}。"),
]

ZH_NOT_PII = [
    "身份证号110105194912310021",  # wrong check character (X expected)
    with_check("11010519491331002"),  # month 13
    with_check("11010519490229002"),  # 1949 had no Feb 29
    with_check("11010518991231002"),  # born before 1900
    with_check("11010520991231002"),  # born in the future
    "订单号202401151234567890已发货",  # an 18-digit order number (no ID check, no Luhn)
    "运单1381234567812345678",  # a mobile number inside a longer run of digits
    "请在2024-01-15之前还款", "2024年1月15日到期", "日期2024/01/15", "时间12:30见",
    "转账500元给张三", "金额1234.56元", "共10.000.000元", "分3期可以吗？",
    "卡号6217001234567890",  # 6217 outside the no-Luhn ranges, fails Luhn
    "卡号6281001234567890", "卡号6221251234567890", "卡号6229261234567890",  # just outside
    "流水号62258812345678901234",  # in range, but 20 digits
    "流水124-6225881234567890",  # in range, but not at the start of its number (nor Luhn)
    "卡号4111 1111 1111 1112",  # fails Luhn
    # Other letters are no word break: identifiers stay.
    "user13812345678", "abc4111111111111111", f"ref{VALID_ID}",
    "你好，我想查询余额", "",
]


@pytest.mark.parametrize(("text", "expected"), ZH_PII)
def test_chinese_pii_is_replaced_by_its_label(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert redact(expected) == expected  # idempotent


@pytest.mark.parametrize("text", ZH_NOT_PII)
def test_chinese_text_without_pii_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_id_label_is_listed() -> None:
    assert ID == "[ID]" and ID in LABELS
    assert len(set(LABELS)) == 5


def test_resident_id_check() -> None:
    for number in VALID_IDS:
        assert id_number_valid(number)
    assert id_number_valid(VALID_ID.lower())
    assert not id_number_valid("110105194912310021")  # check character
    assert not id_number_valid(VALID_ID[:-1])  # length
    assert not id_number_valid("11010519491231002Y")
    assert not id_number_valid("１１０１０５１９４９１２３１００２Ｘ")  # full-width: read by redact
    today = date.today()
    assert id_number_valid(with_check(f"110105{today:%Y%m%d}001"))  # born today
    tomorrow = today + timedelta(days=1)
    assert not id_number_valid(with_check(f"110105{tomorrow:%Y%m%d}001"))
    assert id_number_valid(with_check("11010519000101001"))
    assert not id_number_valid(with_check("11010518991231001"))


def test_unionpay_ranges() -> None:
    assert unionpay_range("6221260000000000") and unionpay_range("6229250000000000000")
    assert not unionpay_range("6221250000000000") and not unionpay_range("6229260000000000")
    assert unionpay_range("6240000000000000") and unionpay_range("6269999999999999")
    assert not unionpay_range("6230000000000000") and not unionpay_range("6270000000000000")
    assert unionpay_range("6282000000000000") and unionpay_range("6288999999999999")
    assert not unionpay_range("6281999999999999") and not unionpay_range("6289000000000000")
    assert not unionpay_range("624000000000000")  # 15 digits
    assert not unionpay_range("62400000000000000000")  # 20 digits
    assert luhn_valid("6217001234567893") and not luhn_valid("6225881234567890")


def test_the_longest_luhn_valid_card_is_preferred_to_a_unionpay_range() -> None:
    # 6250 0012 3456 7890 123 passes Luhn; with a group after it, the card stays that long.
    assert luhn_valid("6250001234567890123")
    assert redact("卡 6250 0012 3456 7890 123 45") == f"卡 {CARD} 45"


def test_a_valid_id_is_an_id_even_where_it_passes_luhn() -> None:
    number = next(n for n in (with_check(f"110105199001{d:02d}123") for d in range(1, 29))
                  if luhn_valid(n))
    assert redact(f"身份证{number}") == f"身份证{ID}"


FULL_WIDTH = [
    ("手机１３８１２３４５６７８谢谢", f"手机{PHONE}谢谢"),
    ("电话：１３８１２３４５６７８", f"电话：{PHONE}"),
    ("电话＋８６　１３８　１２３４　５６７８，ＯＫ", f"电话{PHONE}，ＯＫ"),
    ("电话＋８６－１３８－１２３４－５６７８", f"电话{PHONE}"),
    ("身份证１１０１０５１９４９１２３１００２Ｘ，ＡＢＣ", f"身份证{ID}，ＡＢＣ"),
    ("卡号４１１１　１１１１　１１１１　１１１１，（有效）", f"卡号{CARD}，（有效）"),
    ("邮箱ｚｈａｎｇ＠ｅｘａｍｐｌｅ．ｃｎ，ｔｈａｎｋｓ", f"邮箱{EMAIL}，ｔｈａｎｋｓ"),
    ("（０１０）６５１２　３４５６", PHONE),
    # Full-width letters are letters like ASCII ones (an identifier stays), in either case.
    ("ｕｓｅｒ13812345678 and １３９１２３４５６７８", f"ｕｓｅｒ13812345678 and {PHONE}"),
]


@pytest.mark.parametrize(("text", "expected"), FULL_WIDTH)
def test_full_width_forms_are_read_as_ascii_and_kept_elsewhere(text: str,
                                                               expected: str) -> None:
    assert redact(text) == expected
    assert redact(expected) == expected


FULL_WIDTH_NOT_PII = [
    "订单号：１２３",
    "ＡＢＣ　２０２４－０１－１５",
    "金额１２３４．５６元",
    "身份证１１０１０５１９４９１２３１００２１",  # wrong check character
    "ｕｓｅｒ＠ｌｏｃａｌｈｏｓｔ",
    "ｕｓｅｒ13812345678",
]


@pytest.mark.parametrize("text", FULL_WIDTH_NOT_PII)
def test_full_width_text_without_pii_is_unchanged(text: str) -> None:
    assert redact(text) == text


ENGLISH = ["card 4111 1111 1111 1111 exp 12/27", "iban DE89 3704 0044 0532 0130 00 please",
           "mail John.Doe+bank@example.co.uk!", "call +49 30 1234567 now", "(030) 123-4567",
           "on 2024-01-15 12:30", "ip 192.168.100.200", "version 1.2.3", "user@localhost"]
TO_FULL_WIDTH = {code: code + 0xFEE0 for code in range(0x21, 0x7F) if chr(code) != ":"}
TO_FULL_WIDTH[ord(" ")] = 0x3000
TO_ASCII = {full: ascii_ for ascii_, full in TO_FULL_WIDTH.items()}


@pytest.mark.parametrize("text", [t for t, _ in ZH_PII] + ZH_NOT_PII + ENGLISH)
def test_a_text_typed_in_full_width_is_redacted_as_in_ascii(text: str) -> None:
    redacted = redact(text.translate(TO_FULL_WIDTH))
    assert redacted.translate(TO_ASCII) == redact(text).translate(TO_ASCII)
    assert redacted.count("[") == redact(text).count("[")  # the labels stay ASCII


def test_email_spans_see_addresses_touching_han_and_in_full_width() -> None:
    text = "邮箱是zhang.san@example.cn谢谢"
    [(start, end)] = email_spans(text)
    assert text[start:end] == "zhang.san@example.cn"
    text = "邮箱ｚｈａｎｇ＠ｅｘａｍｐｌｅ．ｃｎ，谢谢"
    [(start, end)] = email_spans(text)
    assert text[start:end] == "ｚｈａｎｇ＠ｅｘａｍｐｌｅ．ｃｎ"


def test_redact_value_masks_chinese_formats() -> None:
    value = {"text": f"身份证{VALID_ID}", "message_id": "13812345678",
             "nested": [("手机１３８１２３４５６７８",)]}
    assert redact_value(value, keep={"message_id"}) == {
        "text": f"身份证{ID}", "message_id": "13812345678", "nested": [(f"手机{PHONE}",)]}


@pytest.mark.parametrize("chunk", ["号1", "13812345678", "号13812345678", "+86 ", "１", "号１ ",
                                   "11010519491231002X", "6225 ", "邮a@"])
def test_redaction_time_is_linear_on_hostile_chinese_text(chunk: str) -> None:
    text = chunk * (200_000 // len(chunk))
    started = time.perf_counter()
    redact(text)
    assert time.perf_counter() - started < 2.0
