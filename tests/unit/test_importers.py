"""Data importers (BIO folders, CSV, Rasa YAML, CoNLL token-per-line files) and the `import` /
`validate` CLI commands."""

from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path

import pytest

import botfactory.cli
from botfactory.commands.validate import validate_folder
from services.botdef import (
    DataImportError,
    EntityDef,
    EntitySpan,
    Example,
    import_bio,
    import_conll,
    import_csv,
    import_rasa,
    load_bot,
)
from services.botdef.importers import (
    IntentNames,
    TagWarnings,
    bio_spans,
    guess_language,
    intent_name,
    join_tokens,
)

DATA = Path(__file__).resolve().parent / "data" / "botdef"
SNIPS = DATA / "snips"
BANKING77 = DATA / "banking77.csv"
RASA = DATA / "rasa_nlu.yml"
REPO = Path(__file__).resolve().parents[2]
CAIS = REPO.parent / "shared" / "data" / "cais"  # ../shared/data/SOURCE.md


def span_texts(example: Example) -> list[tuple[str, str]]:
    return [(example.text[s.start : s.end], s.entity) for s in example.entities]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def bio_folder(root: Path, seq_in: str, seq_out: str, label: str) -> Path:
    write(root / "seq.in", seq_in)
    write(root / "seq.out", seq_out)
    write(root / "label", label)
    return root


# -- BIO --------------------------------------------------------------------------------------


def test_import_bio_snips_fixture() -> None:
    examples = import_bio(SNIPS / "train")
    assert [e.intent for e in examples] == [
        "AddToPlaylist",
        "BookRestaurant",
        "GetWeather",
        "AddToPlaylist",
        "BookRestaurant",
    ]
    first = examples[0]
    assert first.text == "add sabrina salerno to the grime instrumentals playlist"
    assert span_texts(first) == [("sabrina salerno", "artist"), ("grime instrumentals", "playlist")]
    assert first.entities[0] == EntitySpan(4, 19, "artist")
    assert span_texts(examples[1]) == [
        ("3", "party_size_number"),
        ("restaurant", "restaurant_type"),
        ("san francisco", "city"),
    ]
    assert span_texts(examples[2]) == [("london", "city"), ("tomorrow", "timeRange")]
    assert span_texts(examples[3]) == [
        ("tune", "music_item"),
        ("my", "playlist_owner"),
        ("rock classics", "playlist"),
    ]
    # an I- tag without its B- opens a span
    assert span_texts(examples[4]) == [
        ("restaurant", "restaurant_type"),
        ("eight", "party_size_number"),
        ("rome", "city"),
    ]


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (["B-a", "I-a", "I-a"], [(0, 5, "a")]),
        (["I-a", "I-a", "O"], [(0, 3, "a")]),
        (["B-a", "B-a", "I-a"], [(0, 1, "a"), (2, 5, "a")]),
        (["B-a", "I-b", "I-b"], [(0, 1, "a"), (2, 5, "b")]),
        (["O", "O", "B-x.y"], [(4, 5, "x.y")]),
        (["O", "O", "O"], []),
    ],
)
def test_bio_spans(tags: list[str], expected: list[tuple[int, int, str]]) -> None:
    spans = bio_spans(["a", "b", "c"], tags)
    assert [(s.start, s.end, s.entity) for s in spans] == expected


def test_bio_token_count_mismatch_names_file_and_line(tmp_path: Path) -> None:
    folder = bio_folder(tmp_path, "a b\nc d e\n", "O O\nO O\n", "x\nx\n")
    with pytest.raises(DataImportError, match=re.escape(f"{folder}/seq.out:2: 2 tags for 3")):
        import_bio(folder)


def test_bio_line_count_mismatch(tmp_path: Path) -> None:
    folder = bio_folder(tmp_path, "a\nb\nc\n", "O\nO\nO\n", "x\nx\n")
    with pytest.raises(DataImportError, match=re.escape(f"{folder}/label:3: label has 2 lines")):
        import_bio(folder)


@pytest.mark.parametrize(
    ("seq_in", "seq_out", "label", "message"),
    [
        ("a b\n", "O X-city\n", "x\n", "seq.out:1: invalid tag 'X-city' for token 2"),
        ("a b\n", "O B-\n", "x\n", "seq.out:1: invalid tag 'B-'"),
        ("a\n\nb\n", "O\n\nO\n", "x\nx\nx\n", "seq.in:2: empty utterance"),
        ("a\n", "O\n", "??\n", "label:1: label '??' has no character allowed in an intent"),
    ],
)
def test_bio_bad_lines(tmp_path: Path, seq_in: str, seq_out: str, label: str, message: str) -> None:
    with pytest.raises(DataImportError, match=re.escape(message)):
        import_bio(bio_folder(tmp_path, seq_in, seq_out, label))


def test_bio_missing_file(tmp_path: Path) -> None:
    write(tmp_path / "seq.in", "a\n")
    with pytest.raises(DataImportError, match=re.escape(f"{tmp_path}/seq.out: no such file")):
        import_bio(tmp_path)
    with pytest.raises(DataImportError, match="no such directory"):
        import_bio(tmp_path / "missing")


# -- CSV --------------------------------------------------------------------------------------


def test_import_csv_banking77_fixture() -> None:
    examples = import_csv(BANKING77)
    assert len(examples) == 7
    assert examples[0] == Example("I am still waiting on my card?", "card_arrival")
    assert examples[4] == Example("How do I change my PIN, and where?", "change_pin")
    assert {e.intent for e in examples} == {"card_arrival", "change_pin", "declined_card_payment"}
    assert all(e.entities == () for e in examples)


@pytest.mark.parametrize("column", ["intent", "label", "Category"])
def test_csv_intent_column_names_and_extra_columns(tmp_path: Path, column: str) -> None:
    path = write(
        tmp_path / "d.csv", f"id,text,{column},source\n1, hi there ,greet,web\n2,yo,greet,\n"
    )
    assert import_csv(path) == [Example("hi there", "greet"), Example("yo", "greet")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("text,intent\nhello,greet\n,greet\n", ":3: empty text"),
        ('text,intent\n"multi\nline",greet\nhey,\n', ":4: empty intent"),
        ("text,category\nhello\n", ":2: empty category"),
        ("sentence,intent\nhello,greet\n", ":1: header 'sentence,intent' needs a 'text' column"),
        ("text,intent\nhello,greet me\nhi,greet_me\n", ":3: labels 'greet me' and 'greet_me'"),
        ("", ":1: empty file"),
    ],
)
def test_csv_errors_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = write(tmp_path / "bad.csv", content)
    with pytest.raises(DataImportError, match=re.escape(f"{path}{message}")):
        import_csv(path)


def test_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataImportError, match="no such file"):
        import_csv(tmp_path / "nope.csv")


# -- labels -> intent names -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "name"),
    [
        ("reverted_card_payment?", "reverted_card_payment"),
        ("top up", "top_up"),
        ("card -- lost!", "card_--_lost"),
        ("Überweisung café", "Uberweisung_cafe"),
        ("-.#lead", "lead"),
        ("AddToPlaylist", "AddToPlaylist"),
        ("atis_flight#atis_airfare", "atis_flight#atis_airfare"),
        ("_private", "_private"),
        ("???", None),
        ("返回", None),
        ("-#.", None),
    ],
)
def test_intent_name(label: str, name: str | None) -> None:
    assert intent_name(label) == name


def test_intent_names_rename_each_label_once_and_refuse_collisions() -> None:
    names = IntentNames()
    assert [names(label, "f:1") for label in ("a?", "b", "a?", "c d")] == ["a", "b", "a", "c_d"]
    assert names.renamed == {"a?": "a", "c d": "c_d"}
    with pytest.raises(DataImportError, match=re.escape("f:9: labels 'a?' and 'a' would both")):
        names("a", "f:9")
    with pytest.raises(DataImportError, match=re.escape("f:9: labels 'b' and 'b!' would both")):
        names("b!", "f:9")


BANKING77_AS_PUBLISHED = (
    "text,category\n"
    "my payment was reverted,reverted_card_payment?\n"
    "where is my card,card_arrival\n"
    "why was it reverted?,reverted_card_payment?\n"
)


def test_csv_renames_invalid_labels(tmp_path: Path) -> None:
    path = write(tmp_path / "train.csv", BANKING77_AS_PUBLISHED)
    names = IntentNames()
    examples = import_csv(path, names)
    assert [e.intent for e in examples] == [
        "reverted_card_payment",
        "card_arrival",
        "reverted_card_payment",
    ]
    assert names.renamed == {"reverted_card_payment?": "reverted_card_payment"}


def test_renamed_labels_are_logged_once_without_own_names(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "test.csv", BANKING77_AS_PUBLISHED)
    with caplog.at_level(logging.WARNING):
        import_csv(path)
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: renamed intent 'reverted_card_payment?' -> 'reverted_card_payment'"
    ]


def test_csv_collision_after_renaming_names_both_labels(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,intent\nhi,greet?\nhello,greet\n")
    with pytest.raises(DataImportError) as caught:
        import_csv(path)
    assert str(caught.value) == (
        f"{path}:3: labels 'greet?' and 'greet' would both become intent 'greet'"
    )


def test_bio_and_rasa_rename_labels(tmp_path: Path) -> None:
    folder = bio_folder(tmp_path / "bio", "a\nb\n", "O\nO\n", "play music\nplay music\n")
    names = IntentNames()
    assert [e.intent for e in import_bio(folder, names)] == ["play_music", "play_music"]
    assert names.renamed == {"play music": "play_music"}
    path = write(tmp_path / "nlu.yml", "nlu:\n- intent: good bye!\n  examples: |\n    - bye\n")
    names = IntentNames()
    examples, _ = import_rasa(path, names)
    assert [e.intent for e in examples] == ["good_bye"]
    assert names.renamed == {"good bye!": "good_bye"}


# -- Rasa -------------------------------------------------------------------------------------


def test_import_rasa_fixture(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        examples, entities = import_rasa(RASA)
    assert [e.intent for e in examples] == ["greet"] * 2 + ["check_balance"] * 3 + [
        "inform_city"
    ] * 2
    assert examples[3] == Example(
        "how much is in my current account",
        "check_balance",
        (EntitySpan(18, 25, "account", "checking"),),
    )
    assert span_texts(examples[5]) == [("Berlin", "city")]
    assert entities == [
        EntityDef("account", {"checking": ["current", "current account"]}, (), ()),
        EntityDef("city", {}, (), ("Berlin", "Paris", "London")),
        EntityDef("account_number", {}, (r"\d{10,12}",), ()),
    ]
    assert "synonym 'unrelated' is used by no entity" in caplog.text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("nlu:\n- intent: x\n  examples: |\n    - a\n    - b [c](d\n", ":5: unclosed '('"),
        ("nlu:\n- intent: x\n  examples: |\n    - a\n    b\n", ":5: expected '- example'"),
        ("nlu:\n- intent: '?'\n  examples: |\n    - a\n", ":2: label '?' has no character"),
        ("nlu:\n- foo: x\n", ":2: an nlu item needs one of intent, synonym, regex, lookup"),
        ("nlu:\n- regex: r\n  examples: |\n    - '[0-9'\n", ":4: invalid regex"),
        ("nlu:\n- regex: r\n  examples: |\n    - '(?<!x)[0-9]'\n", ":4: unsafe regex"),
        ("nlu:\n- intent: x\n  examples: 3\n", ":2: 'examples' must be a '|' block"),
        ("stories: []\n", ":1: no 'nlu:' list"),
        ("nlu: [\n", ":2: invalid YAML"),
    ],
)
def test_rasa_errors_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = write(tmp_path / "nlu.yml", content)
    with pytest.raises(DataImportError, match=re.escape(f"{path}{message}")):
        import_rasa(path)


def test_rasa_examples_as_a_list(tmp_path: Path) -> None:
    path = write(
        tmp_path / "nlu.yml",
        "nlu:\n- intent: x\n  examples:\n  - text: hi [there](who)\n  - plain\n",
    )
    examples, entities = import_rasa(path)
    assert [e.text for e in examples] == ["hi there", "plain"]
    assert entities == [EntityDef("who", {}, (), ())]


# -- CoNLL token-per-line files ---------------------------------------------------------------

# CAIS's shape: one character per line, BIOES tags, a space token ("  O"), Latin letters one
# by one; and an English BIO file.
ZH_BIOES = (
    "我 O\n要 O\n听 O\n吴 B-singer_name\n雨 I-singer_name\n霏 E-singer_name\n的 O\n歌 O\n\n"
    "播 O\n放 O\nt B-singer_name\nf I-singer_name\nb I-singer_name\no I-singer_name\n"
    "y I-singer_name\ns E-singer_name\n  O\n爱 S-song_name\n。 O\n"
)
EN_BIO = (
    "book O\na O\ntable O\nin O\nnew B-city\nyork I-city\n\n"
    "weather O\nin O\nparis B-city\ntomorrow B-date\n\n\n"
    "flights O\nto O\nrome B-city\n"
)


def conll(tmp_path: Path, tokens: str, intents: str) -> tuple[Path, Path]:
    return write(tmp_path / "d.txt", tokens), write(tmp_path / "d.intent", intents)


def test_import_conll_chinese_bioes(tmp_path: Path) -> None:
    examples = import_conll(*conll(tmp_path, ZH_BIOES, "PlayMusic\nPlayMusic\n"))
    assert [e.text for e in examples] == ["我要听吴雨霏的歌", "播放tfboys 爱。"]
    assert span_texts(examples[0]) == [("吴雨霏", "singer_name")]
    assert span_texts(examples[1]) == [("tfboys", "singer_name"), ("爱", "song_name")]
    assert examples[1].entities[1] == EntitySpan(9, 10, "song_name")
    assert {e.intent for e in examples} == {"PlayMusic"}


def test_import_conll_english_bio(tmp_path: Path) -> None:
    examples = import_conll(*conll(tmp_path, EN_BIO, "book\nweather\nbook\n"))
    assert [e.text for e in examples] == [
        "book a table in new york", "weather in paris tomorrow", "flights to rome"]
    assert span_texts(examples[0]) == [("new york", "city")]
    assert span_texts(examples[1]) == [("paris", "city"), ("tomorrow", "date")]
    assert [e.intent for e in examples] == ["book", "weather", "book"]


def test_import_conll_tabs_columns_docstart_crlf_and_bom(tmp_path: Path) -> None:
    tokens = "\ufeff-DOCSTART- -X- O O\r\n\r\nEU\tNNP\tB-org\r\nrejects\tVBZ\tO\r\n"
    examples = import_conll(*conll(tmp_path, tokens, "news\r\n"))
    assert examples == [Example("EU rejects", "news", (EntitySpan(0, 2, "org"),))]


@pytest.mark.parametrize(
    ("tokens", "characters", "text"),
    [
        (["我", "想", "听", "tfboys", "的", "歌"], False, "我想听 tfboys 的歌"),
        (["t", "f", "b", "o", "y", "s", "的", "歌"], False, "tfboys的歌"),
        (["b", "a", "s", "k", "e", "t"], True, "basket"),  # a CAIS utterance without Han
        (["b", "a", "s", "k", "e", "t"], False, "b a s k e t"),
        (["one", " ", "note"], False, "one note"),
        (["hello", ",", "world"], False, "hello , world"),  # as import_bio joins tokens
        (["价格", "100", "元", "。"], False, "价格 100 元。"),
    ],
)
def test_join_tokens(tokens: list[str], characters: bool, text: str) -> None:
    joined, starts = join_tokens(tokens, characters=characters)
    assert joined == text
    assert [joined[s : s + len(t)] for s, t in zip(starts, tokens, strict=True)] == tokens


@pytest.mark.parametrize(
    ("tags", "spans", "orphans"),
    [
        (["B-a", "I-a", "E-a", "O"], [(0, 3, "a")], 0),
        (["S-a", "S-a", "B-b", "E-b"], [(0, 1, "a"), (1, 2, "a"), (2, 4, "b")], 0),
        (["B-a", "E-a", "I-a", "E-a"], [(0, 2, "a"), (2, 4, "a")], 1),
        (["I-a", "I-a", "O", "E-b"], [(0, 2, "a"), (3, 4, "b")], 2),
        (["B-a", "I-b", "O", "O"], [(0, 1, "a"), (1, 2, "b")], 1),
        (["B-a", "B-a", "I-a", "O"], [(0, 1, "a"), (1, 3, "a")], 0),
    ],
)
def test_conll_bioes_spans_and_orphan_tags(
    tmp_path: Path, tags: list[str], spans: list[tuple[int, int, str]], orphans: int
) -> None:
    tokens = "".join(f"{char} {tag}\n" for char, tag in zip("甲乙丙丁", tags, strict=True))
    warnings = TagWarnings()
    [example] = import_conll(*conll(tmp_path, tokens, "x\n"), warnings=warnings)
    assert [(s.start, s.end, s.entity) for s in example.entities] == spans
    assert warnings.count == orphans
    assert bool(warnings.first) == bool(orphans)


def test_conll_orphan_tag_names_its_line_and_is_logged_without_a_tally(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = conll(tmp_path, "a O\n\nb O\nc I-x\nd I-x\n\ne E-y\n", "q\nq\nq\n")
    warnings = TagWarnings()
    import_conll(*files, warnings=warnings)
    assert (warnings.count, warnings.first) == (2, f"{files[0]}:4")
    with caplog.at_level(logging.WARNING):
        import_conll(*files)
    assert f"2 I-/E- tags continue no span (first at {files[0]}:4)" in caplog.text


def test_conll_spans_leave_out_whitespace_at_their_ends(tmp_path: Path) -> None:
    tokens = "  O\n唱 O\n  B-song\n爱 I-song\n  E-song\n  O\n"
    [example] = import_conll(*conll(tmp_path, tokens, "sing\n"))
    assert example == Example("唱 爱", "sing", (EntitySpan(2, 3, "song"),))


@pytest.mark.parametrize(
    ("tokens", "intents", "message"),
    [
        ("a O\n\nb O\n\nc O\n", "x\nx\n", "d.intent:3: 2 intent lines but {tokens} has 3 utt"),
        ("a O\n", "x\nx\n", "d.intent:2: 2 intent lines but {tokens} has 1 utterances"),
        ("a O\nb U-city\n", "x\n", "d.txt:2: unknown tag 'U-city' (expected O, or B-, I-, E-"),
        ("a O\nb B_city\n", "x\n", "d.txt:2: unknown tag 'B_city'"),
        ("a O\nb B-\n", "x\n", "d.txt:2: unknown tag 'B-'"),
        ("a O\nb\n", "x\n", "d.txt:2: expected 'token tag', got 'b'"),
        (" O\n", "x\n", "d.txt:1: expected 'token tag', got ' O'"),
        ("a O\n\nb O\n", "x\n\nx\n", "d.intent:2: empty intent line"),
        ("\n\n", "", "d.txt:1: no utterances"),
        ("  O\n", "x\n", "d.txt:1: empty utterance"),
        ("a O\n", "??\n", "d.intent:1: label '??' has no character allowed"),
    ],
)
def test_conll_errors_name_file_and_line(
    tmp_path: Path, tokens: str, intents: str, message: str
) -> None:
    files = conll(tmp_path, tokens, intents)
    expected = str(tmp_path / message.format(tokens=files[0]))
    with pytest.raises(DataImportError, match=re.escape(expected)):
        import_conll(*files)


def test_conll_missing_or_undecodable_file(tmp_path: Path) -> None:
    intents = write(tmp_path / "d.intent", "x\n")
    with pytest.raises(DataImportError, match=re.escape(f"{tmp_path}/nope: no such file")):
        import_conll(tmp_path / "nope", intents)
    (tmp_path / "gbk.txt").write_bytes("我 O\n".encode("gbk"))
    with pytest.raises(DataImportError, match=re.escape(f"{tmp_path}/gbk.txt: cannot read")):
        import_conll(tmp_path / "gbk.txt", intents)


@pytest.mark.parametrize(
    ("texts", "language"),
    [
        (["我要听吴雨霏的歌", "播放tfboys的歌"], "zh"),
        (["play tfboys", "我要听"], "en"),  # 10 Latin letters, 3 Han
        (["book a table", "12:30, ok?"], "en"),
        (["123", "。"], "en"),
    ],
)
def test_guess_language(texts: list[str], language: str) -> None:
    assert guess_language(texts) == language


# -- CLI --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def only_importer_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build the CLI with this module's commands only (the others may load heavy stacks)."""
    monkeypatch.setattr(botfactory.cli, "COMMAND_MODULES", ("importers", "validate"))


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = botfactory.cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_cli_import_bio_uses_train_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "snips_bot"
    code, out, err = run_cli(capsys, "import", "bio", str(SNIPS), "--out", str(out_dir))
    assert code == 0
    assert out.strip() == (f"wrote {out_dir}: bot 'snips', 2 intents, 4 examples, 7 entities")
    assert "skipped intents with fewer than 2 examples: GetWeather (1)" in err
    bot = load_bot(out_dir)
    assert bot.name == "snips"
    assert bot.intent_names() == ["AddToPlaylist", "BookRestaurant"]
    assert bot.examples()[0] == import_bio(SNIPS / "train")[0]


def test_cli_import_bio_split_and_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "b"
    argv = ["import", "bio", str(SNIPS), "--split", "valid", "--name", "weather", "--out"]
    code, out, _ = run_cli(capsys, *argv, str(out_dir))
    assert code == 0
    assert "bot 'weather', 1 intents, 2 examples, 2 entities" in out
    assert load_bot(out_dir).examples() == import_bio(SNIPS / "valid")[:2]


def test_cli_import_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "banking77" / "train.csv"
    copy.parent.mkdir()
    shutil.copy(BANKING77, copy)
    out_dir = tmp_path / "bot"
    code, out, err = run_cli(capsys, "import", "csv", str(copy), "--out", str(out_dir))
    assert (code, err) == (0, "")
    assert out.strip() == f"wrote {out_dir}: bot 'banking77', 3 intents, 7 examples, 0 entities"
    bot = load_bot(out_dir)
    assert bot.examples() == import_csv(BANKING77)


def test_cli_import_reports_each_renamed_label_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write(tmp_path / "banking77" / "train.csv", BANKING77_AS_PUBLISHED + "hi,x y\n")
    out_dir = tmp_path / "bot"
    code, out, err = run_cli(capsys, "import", "csv", str(source), "--out", str(out_dir))
    assert code == 0
    assert err.splitlines() == [
        "warning: renamed intent 'reverted_card_payment?' -> 'reverted_card_payment' "
        "(not a valid intent name)",
        "warning: renamed intent 'x y' -> 'x_y' (not a valid intent name)",
        "warning: skipped intents with fewer than 2 examples: card_arrival (1), x_y (1)",
    ]
    assert "1 intents, 2 examples" in out
    assert load_bot(out_dir).intent_names() == ["reverted_card_payment"]
    code, _, _ = run_cli(capsys, "validate", str(out_dir))
    assert code == 0


def test_cli_import_collision_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write(tmp_path / "d.csv", "text,intent\nhi,greet?\nhey,greet?\nhello,greet\n")
    code, out, err = run_cli(capsys, "import", "csv", str(source), "--out", str(tmp_path / "b"))
    assert (code, out) == (2, "")
    assert err == (
        f"error: {source}:4: labels 'greet?' and 'greet' would both become intent 'greet'\n"
    )
    assert not (tmp_path / "b").exists()


def test_cli_import_rasa(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "bot"
    code, out, _ = run_cli(capsys, "import", "rasa", str(RASA), "--out", str(out_dir))
    assert code == 0
    assert "bot 'rasa_nlu', 3 intents, 7 examples, 3 entities" in out
    bot = load_bot(out_dir)
    assert bot.entities_runtime_config()["synonyms"]["account"]["current account"] == "checking"
    assert bot.entities["city"].lookup == ("Berlin", "Paris", "London")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bio", "{data}/nope"], "error: {data}/nope: no such directory"),
        (["bio", "{data}"], "error: {data}/seq.in: no such file"),
        (["bio", "{snips}", "--split", "dev"], "error: {snips}/dev: no such split folder"),
        (["csv", "{rasa}"], "error: {rasa}:1: header"),
        (["rasa", "{csv}"], "error: {csv}:1: no 'nlu:' list"),
        (["csv", "{csv}", "--name", "Bad Name"], "error: bot name 'Bad Name'"),
    ],
)
def test_cli_import_bad_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    names = {"data": str(tmp_path), "snips": str(SNIPS), "rasa": str(RASA), "csv": str(BANKING77)}
    args = [arg.format(**names) for arg in argv]
    code, out, err = run_cli(capsys, "import", *args, "--out", str(tmp_path / "out"))
    assert code == 2
    assert out == ""
    assert err.startswith(message.format(**names))
    assert not (tmp_path / "out").exists()


def test_cli_import_refuses_non_empty_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "bot"
    write(out_dir / "notes.txt", "keep me")
    code, _, err = run_cli(capsys, "import", "csv", str(BANKING77), "--out", str(out_dir))
    assert code == 2
    assert "is not empty (use --force" in err
    code, _, _ = run_cli(capsys, "import", "csv", str(BANKING77), "--out", str(out_dir), "--force")
    assert code == 0
    assert (out_dir / "notes.txt").read_text() == "keep me"
    assert load_bot(out_dir).name == "banking77"


def test_cli_import_requires_out(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        botfactory.cli.main(["import", "csv", str(BANKING77)])
    assert caught.value.code == 2
    assert "--out" in capsys.readouterr().err


def test_cli_validate_ok(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "validate", str(REPO / "bots" / "banking"))
    assert (code, err) == (0, "")
    assert re.fullmatch(r"ok: bot 'banking' \(.*\): 16 intents, \d+ examples, 6 entities; "
                        r"3 workflows; \d+ conversation tests; \d+ knowledge-base questions; "
                        r"knowledge: \d+ documents, \d+ FAQ entries\n", out)


def test_cli_validate_lists_every_issue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "bot.yml", 'version: "1"\nname: Bad\n')
    write(tmp_path / "data" / "i.yml", "intents:\n  - name: a\n    examples: ['[x](nope)']\n")
    code, out, err = run_cli(capsys, "validate", str(tmp_path))
    assert code == 1
    assert out.splitlines() == [
        f"{tmp_path}/bot.yml:2: name: 'Bad' is not a valid bot name "
        "(lower-case letters, digits, '_', '-')",
        f"{tmp_path}/data/i.yml:2: intents[0]: intent 'a' has 1 example(s); at least 2 are needed",
        f"{tmp_path}/data/i.yml:3: intents[0].examples[0]: unknown entity 'nope' (declared: none)",
    ]
    assert err == f"error: 3 issue(s) in {tmp_path}\n"


def test_cli_validate_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "validate", str(tmp_path / "none"))
    assert code == 1
    assert "no such directory" in out


def test_cli_import_conll_chinese(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tokens, intents = conll(tmp_path / "music", ZH_BIOES, "PlayMusic\nPlayMusic\n")
    out_dir = tmp_path / "bot"
    argv = ["import", "conll", str(tokens), "--intents", str(intents), "--out", str(out_dir)]
    code, out, err = run_cli(capsys, *argv)
    assert (code, err) == (0, "")
    assert out.strip() == (
        f"wrote {out_dir}: bot 'd', 1 intents, 2 examples, 2 entities, language zh")
    bot = load_bot(out_dir)
    assert bot.nlu.language == "zh"
    assert bot.examples() == import_conll(tokens, intents)
    assert "- 我要听[吴雨霏](singer_name)的歌" in (out_dir / "data" / "intents.yml").read_text(
        encoding="utf-8")
    assert run_cli(capsys, "validate", str(out_dir))[0] == 0


def test_cli_import_conll_english_language_and_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens, intents = conll(tmp_path, EN_BIO.replace("B-city", "I-city"), "a\na\na\n")
    argv = ["import", "conll", str(tokens), "--intents", str(intents), "--name", "trips"]
    code, out, err = run_cli(capsys, *argv, "--out", str(tmp_path / "en"))
    assert code == 0
    assert out.endswith("bot 'trips', 1 intents, 3 examples, 2 entities, language en\n")
    assert err == (f"warning: 3 I-/E- tag(s) continue no span, each opened one "
                   f"(first at {tokens}:5)\n")
    code, out, _ = run_cli(capsys, *argv, "--out", str(tmp_path / "de"), "--language", "de")
    assert (code, load_bot(tmp_path / "de").nlu.language) == (0, "de")


def test_cli_import_conll_bad_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens, intents = conll(tmp_path, "a O\n\nb O\n\nc O\n", "x\nx\n")
    out_dir = tmp_path / "out"
    argv = ["import", "conll", str(tokens), "--intents", str(intents), "--out", str(out_dir)]
    code, out, err = run_cli(capsys, *argv)
    assert (code, out) == (2, "")
    assert err == (f"error: {intents}:3: 2 intent lines but {tokens} has 3 utterances "
                   "(one intent per utterance)\n")
    assert not out_dir.exists()
    with pytest.raises(SystemExit) as caught:
        botfactory.cli.main([*argv, "--language", "Chinese"])
    assert caught.value.code == 2
    assert "'Chinese' is not a language code" in capsys.readouterr().err


def test_cli_import_cais_train_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The real CAIS training split (../shared/data/cais): counts, and `validate` accepts it."""
    source = CAIS / "train" / "ch.train"
    if not source.is_file():
        pytest.skip(f"CAIS is not there ({source} is missing; see ../shared/data/SOURCE.md)")
    out_dir = tmp_path / "cais"
    started = time.perf_counter()
    code, out, err = run_cli(capsys, "import", "conll", str(source), "--intents",
                             f"{source}.intent", "--out", str(out_dir))
    seconds = time.perf_counter() - started
    assert (code, err) == (0, "")
    assert out.strip() == (
        f"wrote {out_dir}: bot 'cais', 13 intents, 7995 examples, 24 entities, language zh")
    bot = load_bot(out_dir)
    examples = bot.examples()
    assert len(examples) == 7995
    assert sum(len(e.entities) for e in examples) == 8946  # 8828 B- and 118 S- tags
    assert len(bot.entities) == 24
    assert examples[1] == Example("我要听tfboys唱的歌。", "PlayMusic",
                                  (EntitySpan(3, 9, "singer_name"),))
    findings = validate_folder(out_dir)
    assert findings.errors == []
    assert seconds < 30
