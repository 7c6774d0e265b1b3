"""The knowledge folder format: loading, validation (bad input named by file), parsing of
Markdown / text / HTML documents, passage and sentence splitting."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.common.definitions import read_folder
from services.knowledge.documents import parse_html, parse_markdown, parse_text
from services.knowledge.errors import KnowledgeFormatError
from services.knowledge.source import MAX_DOCUMENT_BYTES, load_knowledge
from services.knowledge.splitting import sentence_spans, sentences, split_passages

FIXTURE = Path(__file__).parent / "data" / "knowledge" / "bot"
BANKING_DOCS = Path(__file__).parents[2] / "bots" / "banking" / "knowledge" / "docs"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A writable copy of the fixture knowledge folder."""
    return Path(shutil.copytree(FIXTURE / "knowledge", tmp_path / "knowledge"))


def test_fixture_loads_faq_documents_and_settings() -> None:
    kb = load_knowledge(FIXTURE / "knowledge")
    assert kb.warnings == ()
    assert kb.settings.max_passage_chars == 400 and kb.settings.bm25_weight == 0.3
    assert [e.id for e in kb.faq] == ["lost-card", "opening-hours", "change-pin"]
    lost = kb.faq[0]
    assert lost.questions == ("I lost my card", "my card was stolen, what do I do?")
    assert lost.buttons[0].payload == "/block_card"
    assert lost.url == "https://bank.example/help/lost-card"
    assert kb.documents == ("docs/cards/fees.md", "docs/products/xg-400.md", "docs/savings.html",
                            "docs/security.txt", "docs/transfers/international.md")
    by_doc = {(p.document, p.position): p for p in kb.passages}
    fees = by_doc[("docs/cards/fees.md", 1)]
    assert fees.title == "Card fees" and fees.heading_path == ("Card fees", "Abroad")
    assert fees.url == "https://bank.example/help/card-fees"
    assert by_doc[("docs/security.txt", 0)].title == "security"
    assert by_doc[("docs/security.txt", 0)].heading_path == ()
    savings = [p for p in kb.passages if p.document == "docs/savings.html"]
    assert savings[0].title == "Savings accounts"
    assert savings[1].heading_path == ("Savings", "Withdrawals")
    assert "Larger withdrawals need 30 days notice." in savings[1].text
    assert not any("tracking" in p.text or "color" in p.text for p in savings)


def test_markdown_headings_code_fences_and_inline_markup() -> None:
    doc = parse_markdown("intro\n\n# Title\n\nSee [the app](https://x.example) **now**.\n\n"
                         "```\n# not a heading\n```\n\n### Deep\n\nsnake_case_name stays\n"
                         "## Side ##\n\n- one\n- two\n", default_title="file")
    assert doc.title == "Title"
    assert [s.heading_path for s in doc.sections] == [(), ("Title",), ("Title", "Deep"),
                                                      ("Title", "Side")]
    assert doc.sections[1].paragraphs == ("See the app now.", "# not a heading")
    assert doc.sections[2].paragraphs == ("snake_case_name stays",)
    assert doc.sections[3].paragraphs == ("- one\n- two",)
    assert parse_markdown("no heading here", default_title="notes").title == "notes"


def test_hard_wrapped_markdown_is_parsed_as_paragraphs_not_lines() -> None:
    """Issue 17 item 8: the demo's hard-wrapped Markdown made every line a sentence, so a
    snippet stitched the ends of non-adjacent lines together."""
    text = (BANKING_DOCS / "branches" / "cheques.md").read_text()
    writing = next(s for s in parse_markdown(text, "cheques").sections
                   if s.heading_path[-1] == "Writing cheques")
    passage = split_passages(writing.paragraphs, 800)[0]
    assert sentences(passage) == [
        "A chequebook with 25 cheques is available free for Everyday Current Account holders; "
        "order it in the app or at a branch and it arrives within 7 working days.",
        "Chequebooks are not available for Student Accounts.",
        "If you have lost a chequebook or want to cancel a cheque you wrote, call "
        "+44 20 0000 0000 and we will place a stop on it for a fee of 8 EUR per cheque "
        "(free for a lost or stolen chequebook).",
    ]


def test_markdown_lists_tables_and_code_are_units_and_text_paragraphs_join_lines() -> None:
    doc = parse_markdown("Intro wrapped\nhere.\n\n- one\n  wrapped\n- two\n  1. nested\n\n"
                         "| Code | Rate |\n|---|---|\n| `NW-1` | 2% |\n\n```\nx = 1\ny = 2\n```\n"
                         "Lazy\ncontinuation *stays* ![a chart](c.png).\n", "f")
    assert doc.sections[0].paragraphs == (
        "Intro wrapped here.", "- one wrapped\n- two\n  1. nested", "Code | Rate\nNW-1 | 2%",
        "x = 1\ny = 2", "Lazy continuation stays a chart.")
    plain = parse_text("A wrapped\nline.\n- an item\n- another\n\nNext one.", "t")
    assert plain.sections[0].paragraphs == ("A wrapped line.\n- an item\n- another",
                                            "Next one.")


def test_html_title_falls_back_to_first_h1() -> None:
    doc = parse_html("<body><h1>Fees</h1><p>A &amp; B</p><script>x()</script></body>", "f")
    assert doc.title == "Fees"
    assert doc.sections[0].paragraphs == ("A & B",)


PAGE = """<html><head><title>Card fees</title><style>p {}</style></head><body>
<header><a href="/">Home</a> <a href="/login">Log in</a></header>
<nav><a href="/help">Help centre</a> &gt; Cards</nav>
<main><article><header><h1>Fees</h1><p>Updated May 2024</p></header>
<p>Cards cost 5 EUR a year.<p>Replacements are free
<aside>Related: <a>Loans</a></aside>
<form><label>Search the help centre</label><button>Go</button></form>
<div role="navigation">Previous | Next</div>
<h2>Abroad</h2><p hidden>draft text</p><p>Cash costs 3 EUR.</p></article></main>
<footer>(c) 2024 Northwind Bank <a>Cookies</a></footer>
<div>Still content after the footer.</div><script>track()</script></body></html>"""


def test_html_drops_navigation_page_header_footer_aside_and_forms() -> None:
    doc = parse_html(PAGE, "f")
    assert doc.title == "Card fees"
    assert [s.heading_path for s in doc.sections] == [("Fees",), ("Fees", "Abroad")]
    assert doc.sections[0].paragraphs == ("Updated May 2024", "Cards cost 5 EUR a year.",
                                          "Replacements are free")
    assert doc.sections[1].paragraphs == ("Cash costs 3 EUR.", "Still content after the footer.")
    text = " ".join(p for s in doc.sections for p in s.paragraphs)
    for chrome in ("Home", "Help centre", "Loans", "Search", "Previous", "draft", "Cookies",
                   "track"):
        assert chrome not in text


def test_sentences_keep_offsets_and_do_not_split_decimals() -> None:
    text = "It costs 2.5% a year. Really? Yes!\nA new line starts one. e.g. this stays."
    spans = sentence_spans(text)
    assert [text[a:b] for a, b in spans] == sentences(text)
    assert sentences(text) == ["It costs 2.5% a year.", "Really?", "Yes!",
                               "A new line starts one. e.g. this stays."]


def test_passages_pack_paragraphs_and_split_between_sentences() -> None:
    short = ["a" * 50, "b" * 50, "c" * 50]
    assert split_passages(short, 120) == ["a" * 50 + "\n\n" + "b" * 50, "c" * 50]
    long_paragraph = " ".join(f"Sentence number {i} is here." for i in range(20))
    passages = split_passages([long_paragraph], 100)
    assert all(len(p) <= 100 for p in passages)
    assert all(p.endswith(".") for p in passages)  # never mid-sentence
    assert " ".join(passages) == long_paragraph
    giant = "word " * 100
    cut = split_passages([giant.strip()], 100)
    assert all(len(p) <= 100 for p in cut) and " ".join(cut) == giant.strip()


def _error(folder: Path) -> str:
    with pytest.raises(KnowledgeFormatError) as error:
        load_knowledge(folder)
    return str(error.value)


def test_binary_non_utf8_and_huge_documents_are_errors_naming_the_file(folder: Path) -> None:
    (folder / "docs" / "scan.md").write_bytes(b"PK\x03\x04\x00\x00binary")
    (folder / "docs" / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (folder / "docs" / "huge.txt").write_text("x" * (MAX_DOCUMENT_BYTES + 1))
    message = _error(folder)
    assert "docs/scan.md: binary file" in message
    assert "docs/latin1.txt: not UTF-8 text (invalid byte 0xe9 at offset 3)" in message
    assert "docs/huge.txt: 2.0 MB; the limit is 2 MB" in message


def test_empty_duplicate_and_unknown_files_are_warnings(folder: Path) -> None:
    (folder / "docs" / "empty.md").write_text("# Only a title\n\n   \n")
    shutil.copy(folder / "docs" / "security.txt", folder / "docs" / "security-copy.txt")
    (folder / "docs" / "manual.pdf").write_bytes(b"%PDF-1.4")
    kb = load_knowledge(folder)
    warnings = "\n".join(kb.warnings)
    assert "docs/empty.md: empty document" in warnings
    assert "docs/security.txt: passage 0 duplicates docs/security-copy.txt passage 0" in warnings
    assert "docs/manual.pdf: ignored: not a document type" in warnings
    texts = [p.text for p in kb.passages]
    assert len(texts) == len(set(texts))
    assert "docs/empty.md" not in kb.documents


def test_faq_and_settings_errors_give_file_and_line(folder: Path) -> None:
    (folder / "faq.yml").write_text(
        'version: "1"\nfaq:\n  - id: Bad_Id\n    questions: [hi]\n    answer: x\n'
        '  - id: ok\n    questions: []\n    answer: x\n'
        '  - id: dup\n    questions: [a]\n    answer: x\n    colour: red\n'
        '  - id: dup\n    questions: [b]\n    answer: y\n')
    (folder / "knowledge.yml").write_text('version: "1"\nbm25_weight: 2\nmax_passage_chars: 5\n')
    message = _error(folder)
    assert "faq.yml:3: faq[0].id must match" in message
    assert "faq.yml:6: ok: questions must be a non-empty list" in message
    assert "faq.yml:12: faq[2].colour: unknown key 'colour'" in message
    assert "faq.yml:13: duplicate FAQ id 'dup'" in message
    assert "knowledge.yml:2: bm25_weight must be a number 0..1, got 2" in message
    assert "knowledge.yml:3: max_passage_chars must be an integer 100..10000" in message


def test_invalid_yaml_and_empty_folder(tmp_path: Path) -> None:
    folder = tmp_path / "knowledge"
    folder.mkdir()
    assert "nothing to index" in _error(folder)
    (folder / "faq.yml").write_text("faq: [unclosed\n")
    assert "faq.yml:" in _error(folder) and "invalid YAML" in _error(folder)
    assert "no such knowledge folder" in _error(tmp_path / "missing")


def test_deployed_definitions_leave_the_knowledge_folder_out() -> None:
    files = read_folder(FIXTURE)
    assert "bot.yml" in files and "tests/kb.yml" in files
    assert not any(name.startswith("knowledge/") for name in files)
