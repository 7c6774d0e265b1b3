"""A bot in several languages (issue 23): bot.yml `languages`, texts written per language,
examples tagged with their language, the conversation's language detected offline and kept in
the tracker, and replies said in it (docs/bot-definition.md, "Languages")."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.botdef import BotDefinitionError, load_bot
from services.common import langid
from services.dialogue.engine import DialogueEngine, Tracker
from tests.support.dialogue import Chat, kinds, make_bot, texts

FILES = {
    "bot.yml": 'version: "1"\nname: duo\nlanguages: [en, zh]\n'
               "nlu: {confidence_threshold: 0.5}\n",
    "data/en.yml": """\
        entities:
          - name: amount
        intents:
          - name: greet
            examples: ["hello", "hi there"]
          - name: pay
            examples: ["pay someone", "send money"]
          - name: help
            examples: ["help me", "what can you do"]
        """,
    "data/zh.yml": """\
        language: zh
        intents:
          - name: greet
            examples: ["你好", "您好啊"]
          - name: pay
            examples: ["我要转账", "转[五十](amount)块"]
          - name: help
            examples: ["帮帮我", "你能做什么"]
        """,
    "domain/conv.yml": """\
        slots:
          amount:
            type: number
            entity: amount
            label: {en: amount, zh: 金额}
        responses:
          utter_greet:
            en: Hello!
            zh: 您好！
          utter_ask_amount:
            en: [How much?]
            zh: [转多少钱？]
          utter_done:
            en: {text: "Paying {{ slots.amount }}.", buttons: [{title: OK, payload: /greet}]}
            zh: {text: "正在支付{{ slots.amount }}。", buttons: [{title: 好的, payload: /greet}]}
        flows:
          pay:
            title: {en: Pay someone, zh: 转账}
            trigger: pay
            steps:
              - collect: amount
              - say: utter_done
              - say: {en: "Bye now.", zh: "再见。"}
        """,
}


@pytest.fixture
def duo(tmp_path: Path) -> DialogueEngine:
    return DialogueEngine(make_bot(tmp_path, FILES))


def test_languages_and_tagged_examples(tmp_path: Path) -> None:
    bot = make_bot(tmp_path, FILES)
    assert bot.languages == ("en", "zh") and bot.default_language == "en"
    assert bot.nlu.language == "en" and bot.multilingual
    by_text = {e.text: e.language for e in bot.examples()}
    assert by_text["hello"] == "en" and by_text["你好"] == "zh"
    assert len(bot.examples()) == 12  # one model learns all of them, whatever the language
    zh_pay = next(e for e in bot.examples() if e.text == "转五十块")
    assert [(s.start, s.end, s.entity) for s in zh_pay.entities] == [(1, 3, "amount")]
    response = bot.conversation.responses["utter_done"]
    assert response.variations[0].text.startswith("Paying")
    assert response.variations_in("zh")[0].buttons[0].title == "好的"
    assert bot.conversation.flows["pay"].title_in("zh") == "转账"
    assert bot.conversation.slots["amount"].label_in("zh") == "金额"
    assert bot.warnings == ()


def test_default_language_and_single_language_bots(tmp_path: Path) -> None:
    files = {**FILES, "bot.yml": FILES["bot.yml"].replace(
        "languages: [en, zh]", "languages: [en, zh]\ndefault_language: zh")}
    bot = make_bot(tmp_path / "a", files)
    assert bot.languages == ("zh", "en")
    single = make_bot(tmp_path / "b", {
        "bot.yml": 'version: "1"\nname: one\nlanguage: de\n',
        "data/x.yml": "intents:\n  - {name: a, examples: ['a', 'b']}"})
    assert single.languages == ("de",) and not single.multilingual


def _issues(tmp_path: Path, files: dict[str, str]) -> list[str]:
    with pytest.raises(BotDefinitionError) as caught:
        make_bot(tmp_path, files)
    return [str(issue) for issue in caught.value.issues]


def test_language_errors_name_file_line_and_field(tmp_path: Path) -> None:
    files = {
        **FILES,
        "bot.yml": FILES["bot.yml"] + "language: en\ndefault_language: fr\n",
        "data/fr.yml": "language: fr\nintents:\n"
                       "  - {name: greet, examples: ['bonjour', 'salut']}\n",
        "domain/more.yml": """\
            responses:
              utter_x:
                zh: 只有中文
              utter_y:
                en: Hi
                de: Hallo
            """,
    }
    issues = _issues(tmp_path, files)
    root = str(tmp_path)
    assert f"{root}/bot.yml:5: language: give either `language` (one) or `languages` " \
        "(several), not both" in issues
    assert any(i.startswith(f"{root}/bot.yml:6: default_language: 'fr' is not one of")
               for i in issues)
    assert any(i.startswith(f"{root}/data/fr.yml:1: language: language 'fr' is not one of "
                            "the bot's languages (en, zh") for i in issues)
    assert any(i.startswith(f"{root}/domain/more.yml:2: responses.utter_x: no 'en' text")
               for i in issues)
    assert any(i.startswith(f"{root}/domain/more.yml:6: responses.utter_y.de: language 'de'")
               for i in issues)


def test_missing_translation_is_a_warning_and_falls_back(tmp_path: Path) -> None:
    files = {**FILES, "domain/more.yml": "responses:\n  utter_thanks:\n    en: Any time!\n"}
    bot = make_bot(tmp_path, files)
    assert [str(w).split(": ", 2)[1:] for w in bot.warnings] == [
        ["responses.utter_thanks", "no zh translation: the en text is said in zh conversations"]]
    chat = Chat(DialogueEngine(bot))
    chat.say("你好", "greet")
    assert texts(chat.say("谢谢你", "thanks")) == ["Any time!"]


def test_intent_without_examples_in_a_language_is_a_warning(tmp_path: Path) -> None:
    files = {**FILES, "data/en.yml": FILES["data/en.yml"].rstrip(" ") + (
        '          - name: bye\n            examples: ["bye", "see you"]\n')}
    bot = make_bot(tmp_path, files)
    assert any("intent 'bye' has no zh examples" in str(w) for w in bot.warnings)


def test_english_conversation_stays_english(duo: DialogueEngine) -> None:
    chat = Chat(duo)
    first = chat.say("hello there", "greet")
    assert texts(first) == ["Hello!"]
    # decided and kept, without an event: the replies were in English already
    assert chat.tracker.language == "en" and "language_set" not in kinds(first)
    assert texts(chat.say("pay someone", "pay")) == ["How much?"]
    assert texts(chat.say("50"))[0] == "Paying 50."


def test_chinese_conversation_is_answered_in_chinese(duo: DialogueEngine) -> None:
    chat = Chat(duo)
    assert texts(chat.say("你好", "greet")) == ["您好！"]
    assert chat.tracker.language == "zh"
    assert texts(chat.say("我要转账", "pay")) == ["转多少钱？"]
    done = chat.say("50")  # digits: undecided, the conversation stays Chinese
    assert texts(done) == ["正在支付50。", "再见。"]
    assert done.replies[0].buttons[0].title == "好的"
    # built-in responses have Chinese texts too
    assert texts(chat.say("帮帮我吧", "help"))[0] == "我可以帮您办理以下业务："


def test_short_or_ambiguous_messages_keep_the_language(duo: DialogueEngine) -> None:
    chat = Chat(duo)
    assert texts(chat.say("ok", "greet")) == ["Hello!"]  # undecided: the default, English
    assert chat.tracker.language is None
    chat.say("您好", "greet")
    assert chat.tracker.language == "zh"
    for text in ("ok", "Li Wei", "50", "/greet", "OK"):
        chat.say(text, "greet")
        assert chat.tracker.language == "zh", text


def test_a_clear_switch_changes_the_language(duo: DialogueEngine) -> None:
    chat = Chat(duo)
    chat.say("你好", "greet")
    switched = chat.say("hello, can you help me please", "greet")
    assert texts(switched) == ["Hello!"] and chat.tracker.language == "en"
    event = next(e for e in switched.events if e.type == "language_set")
    assert event.data["language"] == "en" and event.data["previous"] == "zh"
    assert texts(chat.say("谢谢", "greet")) == ["Hello!"]  # 2 characters: not clear enough
    assert texts(chat.say("我想给妈妈转账", "greet")) == ["您好！"]


def test_clarification_buttons_use_the_language(duo: DialogueEngine) -> None:
    chat = Chat(duo)
    result = chat.say("我不太确定这个东西", "pay", 0.3, ranking=[("pay", 0.3), ("help", 0.2)])
    assert result.replies[0].text == "抱歉，我不太确定您的意思。您是想办理以下哪一项？"
    assert [b.title for b in result.replies[0].buttons] == ["转账", "你能做什么？"]


def test_the_language_survives_the_tracker_round_trip(duo: DialogueEngine) -> None:
    chat = Chat(duo)
    chat.say("你好", "greet")
    restored = Tracker.from_json(chat.tracker.to_json())
    assert restored.language == "zh"
    old = Tracker.new("duo", "c", 0.0).to_dict()
    assert "lang" not in old and Tracker.from_dict(old).language is None


def test_single_language_bot_never_detects(tmp_path: Path) -> None:
    bot = load_bot(Path(__file__).resolve().parents[2] / "bots" / "banking")
    assert bot.languages[0] == "en"
    files = {**FILES, "bot.yml": 'version: "1"\nname: solo\nlanguage: en\n'}
    files["domain/conv.yml"] = "responses:\n  utter_greet: Hello!\n"
    files.pop("data/zh.yml")
    chat = Chat(DialogueEngine(make_bot(tmp_path, files)))
    result = chat.say("你好", "greet")
    assert texts(result) == ["Hello!"] and "language_set" not in kinds(result)
    assert chat.tracker.language is None


@pytest.mark.parametrize(("text", "expected"), [
    ("你好", "zh"), ("查余额", "zh"), ("我想转50块给妈妈", "zh"), ("OK谢谢", "zh"),
    ("hello 你好", "zh"), ("what's my balance", "en"), ("send 50 euros to John", "en"),
    ("50", None), ("/affirm", None), ("ok", None), ("Berlin", None), ("", None),
    ("123 456", None),
])
def test_detect(text: str, expected: str | None) -> None:
    assert langid.detect(text, ["en", "zh"]).language == expected


def test_detect_needs_two_languages_and_reads_regional_codes() -> None:
    assert langid.detect("what's my balance", ["en"]).language is None
    assert langid.detect("我要查余额", ["en-GB", "zh-CN"]).language == "zh-CN"
    assert langid.detect("wie ist mein Kontostand bitte", ["en", "de"]).language == "de"


def test_a_mistagged_chinese_amount_is_read_from_the_whole_answer(duo: DialogueEngine) -> None:
    chat = Chat(duo)
    chat.say("我要转账", "pay")
    done = chat.say("五十块", "pay", 0.2, entities={"amount": "块"})  # the tagger cut it badly
    assert texts(done)[0] == "正在支付50。"
    english = Chat(duo, "c2")
    english.say("pay someone now please", "pay")
    refused = english.say("a lot of money", "pay", 0.2, entities={"amount": "lot"})
    assert "slot_rejected" in kinds(refused)  # English keeps its rule: the span decides
