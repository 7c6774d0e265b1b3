"""Documents of a knowledge folder parsed into sections: Markdown, plain text and HTML.

A section is the paragraphs under one heading path (outermost heading first). A paragraph is
one unit of text: hard-wrapped lines are joined with spaces, so a sentence never ends at a
line break inside one; a list (one item per line), a table (one row per line) and a code block
(one line per line) are units of their own, whose lines are split apart as sentences.

Markdown (parsed by markdown-it-py, CommonMark with tables): the first `# ` heading is the
title, `#`..`######` headings make the path, code stays text. Plain text: the title is the
file name, no headings; blank lines separate paragraphs, a line starting with a list marker
(`-`, `*`, `+`, `1.`) starts a new line of its paragraph. HTML: the title is `<title>` or the
first `<h1>`, `<h1>`..`<h6>` make the path; page chrome is dropped (scripts, styles, `<head>`,
`<nav>`, `<aside>`, `<form>`, the page's `<header>` and `<footer>`, navigation roles, hidden
elements).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePosixPath

from markdown_it import MarkdownIt
from markdown_it.token import Token

MARKDOWN_SUFFIXES = (".md", ".markdown")
TEXT_SUFFIXES = (".txt",)
HTML_SUFFIXES = (".html", ".htm")
DOCUMENT_SUFFIXES = (*MARKDOWN_SUFFIXES, *TEXT_SUFFIXES, *HTML_SUFFIXES)

_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d{1,9}[.)])\s+\S")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_EMPHASIS = re.compile(r"(?<!\w)(\*\*|__|\*|_|`)(?=\S)(.+?)(?<=\S)\1(?!\w)")
_TAG = re.compile(r"<[^>]+>")
_SPACES = re.compile(r"[ \t\r\f\v]+")


@dataclass(frozen=True)
class Section:
    heading_path: tuple[str, ...]
    paragraphs: tuple[str, ...]


@dataclass(frozen=True)
class ParsedDocument:
    title: str
    sections: tuple[Section, ...]

    @property
    def is_empty(self) -> bool:
        return not any(s.paragraphs for s in self.sections)


def parse_document(path: str, text: str) -> ParsedDocument:
    """Parse `text` by the suffix of `path` (one of DOCUMENT_SUFFIXES)."""
    suffix = PurePosixPath(path).suffix.lower()
    if suffix in MARKDOWN_SUFFIXES:
        return parse_markdown(text, default_title=PurePosixPath(path).stem)
    if suffix in HTML_SUFFIXES:
        return parse_html(text, default_title=PurePosixPath(path).stem)
    return parse_text(text, title=PurePosixPath(path).stem)


def clean_inline(text: str) -> str:
    """Markdown inline markup removed (links keep their text), whitespace collapsed."""
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _EMPHASIS.sub(r"\2", text)
    text = _TAG.sub("", text)
    return _SPACES.sub(" ", text).strip()


def _paragraphs(lines: list[str]) -> list[str]:
    """Blank-line separated blocks of plain text, each line cleaned: a block's lines are
    joined with spaces (hard-wrapped text), except that a list item starts a new line."""
    blocks: list[str] = []
    current: list[str] = []
    for line in [*lines, ""]:
        cleaned = clean_inline(line)
        if not cleaned:
            if current:
                blocks.append("\n".join(current))
                current = []
        elif current and not _LIST_ITEM.match(line):
            current[-1] = f"{current[-1]} {cleaned}"
        else:
            current.append(cleaned)
    return blocks


class _SectionBuilder:
    def __init__(self) -> None:
        self.path: list[tuple[int, str]] = []
        self.lines: list[str] = []
        self.paragraphs: list[str] = []
        self.sections: list[Section] = []

    def heading(self, level: int, title: str) -> None:
        self.flush()
        while self.path and self.path[-1][0] >= level:
            self.path.pop()
        self.path.append((level, title))

    def flush(self) -> None:
        paragraphs = [*self.paragraphs, *_paragraphs(self.lines)]
        self.lines = []
        self.paragraphs = []
        if paragraphs:
            heading_path = tuple(t for _, t in self.path)
            self.sections.append(Section(heading_path, tuple(paragraphs)))


_MARKDOWN = MarkdownIt("commonmark").enable("table")


def parse_markdown(text: str, default_title: str) -> ParsedDocument:
    builder = _SectionBuilder()
    title: str | None = None
    tokens = _MARKDOWN.parse(text)
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token.type == "heading_open":
            heading = _inline_text(tokens[index + 1])
            level = int(token.tag[1])
            if heading:
                title = title or (heading if level == 1 else None)
                builder.heading(level, heading)
            index += 3
            continue
        end = _block_end(tokens, index)
        unit = _block_text(tokens[index:end])
        if unit:
            builder.paragraphs.append(unit)
        index = end
    builder.flush()
    return ParsedDocument(title or default_title, tuple(builder.sections))


def _block_end(tokens: list[Token], start: int) -> int:
    """The index after the top-level block that starts at `start`."""
    depth = 0
    for index in range(start, len(tokens)):
        depth += tokens[index].nesting
        if depth <= 0:
            return index + 1
    return len(tokens)


def _block_text(tokens: list[Token]) -> str:
    """One top-level Markdown block as a paragraph: a paragraph's (or quote's) text on one
    line; a list one item per line (nested items indented), a table one row per line (cells
    joined by " | "), code one line per line; HTML blocks without their tags."""
    kind = tokens[0].type
    if kind in ("fence", "code_block"):
        return "\n".join(line.strip() for line in tokens[0].content.splitlines() if line.strip())
    if kind == "html_block":
        return clean_inline(_TAG.sub(" ", tokens[0].content))
    if kind in ("bullet_list_open", "ordered_list_open"):
        return "\n".join(_list_lines(tokens))
    if kind == "table_open":
        return "\n".join(_table_rows(tokens))
    inline = [t for t in tokens if t.type == "inline"]
    return " ".join(filter(None, (_inline_text(t) for t in inline)))


def _list_lines(tokens: list[Token]) -> list[str]:
    items: list[tuple[str, list[str]]] = []
    depth = -1
    for token in tokens:
        if token.type in ("bullet_list_open", "ordered_list_open"):
            depth += 1
        elif token.type in ("bullet_list_close", "ordered_list_close"):
            depth -= 1
        elif token.type == "list_item_open":
            items.append((f"{'  ' * depth}{token.info}{token.markup}", []))
        elif token.type == "inline" and items:
            items[-1][1].append(_inline_text(token))
    return [f"{marker} {' '.join(filter(None, parts))}" for marker, parts in items
            if any(parts)]


def _table_rows(tokens: list[Token]) -> list[str]:
    rows: list[list[str]] = []
    for token in tokens:
        if token.type == "tr_open":
            rows.append([])
        elif token.type == "inline" and rows:
            rows[-1].append(_inline_text(token))
    return [" | ".join(row) for row in rows if any(row)]


def _inline_text(token: Token) -> str:
    """The plain text of an inline token: markup and HTML dropped, links and images keep
    their text, soft line breaks become spaces (hard ones stay line breaks)."""
    parts: list[str] = []
    for child in token.children or ():
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type == "image":
            parts.append(_inline_text(child))
        elif child.type == "softbreak":
            parts.append(" ")
        elif child.type == "hardbreak":
            parts.append("\n")
    lines = (_SPACES.sub(" ", line).strip() for line in "".join(parts).split("\n"))
    return "\n".join(line for line in lines if line)


def parse_text(text: str, title: str) -> ParsedDocument:
    paragraphs = _paragraphs(text.splitlines())
    sections = (Section((), tuple(paragraphs)),) if paragraphs else ()
    return ParsedDocument(title, sections)


_BLOCKS = {"p", "div", "li", "ul", "ol", "br", "tr", "td", "th", "table", "pre", "blockquote",
           "section", "article", "header", "footer", "main", "dd", "dt", "dl", "hr",
           "figure", "figcaption", "details", "summary"}
_DROPPED = {"script", "style", "noscript", "template", "svg", "head", "nav", "aside", "form",
            "iframe", "button", "select", "dialog"}
"""Elements dropped with their content: code, page navigation, sidebars and forms."""
_LANDMARKS = {"header", "footer"}
"""Dropped when they are the page's banner or footer, i.e. not inside `_SECTIONING` (a
`<header>` inside `<article>` holds the article's title and stays)."""
_SECTIONING = {"article", "main", "section", "aside", "nav"}
_DROPPED_ROLES = {"navigation", "banner", "contentinfo", "complementary", "search", "menu",
                  "menubar", "toolbar"}
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
         "source", "track", "wbr"}
_HEADINGS = {f"h{n}": n for n in range(1, 7)}


class _HtmlSections(HTMLParser):
    """Sections of an HTML page. Keeps a stack of open elements (tolerant of unclosed ones) to
    know when text is inside a dropped element (`_DROPPED`, landmark headers and footers,
    `role` navigation/banner/...) or `hidden`."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.builder = _SectionBuilder()
        self.title_tag: str | None = None
        self.first_h1: str | None = None
        self._open: list[tuple[str, bool]] = []
        self._in_title = False
        self._heading: int | None = None
        self._buffer: list[str] = []
        self._title_buffer: list[str] = []

    @property
    def _dropped(self) -> bool:
        return any(drops for _, drops in self._open)

    def _drops(self, tag: str, attrs: list[tuple[str, str | None]]) -> bool:
        values = dict(attrs)
        if tag in _DROPPED or "hidden" in values or values.get("aria-hidden") == "true":
            return True
        if (values.get("role") or "").strip().lower() in _DROPPED_ROLES:
            return True
        return tag in _LANDMARKS and not any(t in _SECTIONING for t, _ in self._open)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
            return
        if tag not in _VOID:
            self._open.append((tag, self._drops(tag, attrs)))
        if self._dropped:
            return
        if tag in _HEADINGS:
            self._break()
            self._heading = _HEADINGS[tag]
        elif tag in _BLOCKS:
            self._break()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCKS and not self._dropped:
            self._break()

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
            self.title_tag = self.title_tag or _SPACES.sub(" ", "".join(self._title_buffer)
                                                           ).strip() or None
            return
        was_dropped = self._dropped
        self._close(tag)
        if was_dropped:
            return
        if tag in _HEADINGS and self._heading is not None:
            self._end_heading(self._heading)
        elif tag in _BLOCKS:
            self._break()

    def _close(self, tag: str) -> None:
        """Pop the innermost open `tag` and everything opened inside it (no-op if not open)."""
        for depth in range(len(self._open) - 1, -1, -1):
            if self._open[depth][0] == tag:
                del self._open[depth:]
                return

    def _end_heading(self, level: int) -> None:
        heading = _SPACES.sub(" ", " ".join("".join(self._buffer).split())).strip()
        self._buffer = []
        if heading:
            if level == 1 and self.first_h1 is None:
                self.first_h1 = heading
            self.builder.heading(level, heading)
        self._heading = None

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self._title_buffer.append(data)
        elif not self._dropped:
            self._buffer.append(data)

    def _break(self) -> None:
        if self._heading is not None:
            return
        text = " ".join("".join(self._buffer).split())
        self._buffer = []
        if text:
            self.builder.lines.extend([text, ""])


def parse_html(text: str, default_title: str) -> ParsedDocument:
    parser = _HtmlSections()
    parser.feed(text)
    parser.close()
    parser._break()
    parser.builder.flush()
    title = parser.title_tag or parser.first_h1 or default_title
    return ParsedDocument(title, tuple(parser.builder.sections))
