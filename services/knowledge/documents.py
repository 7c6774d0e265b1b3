"""Documents of a knowledge folder parsed into sections: Markdown, plain text and HTML.

A section is the paragraphs under one heading path (outermost heading first). Markdown: the
first `# ` heading is the title, `#`..`######` headings make the path, fenced code stays
text. Plain text: the title is the file name, no headings. HTML: the title is `<title>` or the
first `<h1>`, `<h1>`..`<h6>` make the path; page chrome is dropped (scripts, styles, `<head>`,
`<nav>`, `<aside>`, `<form>`, the page's `<header>` and `<footer>`, navigation roles, hidden
elements).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePosixPath

MARKDOWN_SUFFIXES = (".md", ".markdown")
TEXT_SUFFIXES = (".txt",)
HTML_SUFFIXES = (".html", ".htm")
DOCUMENT_SUFFIXES = (*MARKDOWN_SUFFIXES, *TEXT_SUFFIXES, *HTML_SUFFIXES)

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
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
    """Blank-line separated blocks; lines of a block joined by newlines (list items stay
    apart), each line cleaned."""
    blocks: list[str] = []
    current: list[str] = []
    for line in [*lines, ""]:
        cleaned = clean_inline(line)
        if cleaned:
            current.append(cleaned)
        elif current:
            blocks.append("\n".join(current))
            current = []
    return blocks


class _SectionBuilder:
    def __init__(self) -> None:
        self.path: list[tuple[int, str]] = []
        self.lines: list[str] = []
        self.sections: list[Section] = []

    def heading(self, level: int, title: str) -> None:
        self.flush()
        while self.path and self.path[-1][0] >= level:
            self.path.pop()
        self.path.append((level, title))

    def flush(self) -> None:
        paragraphs = _paragraphs(self.lines)
        self.lines = []
        if paragraphs:
            heading_path = tuple(t for _, t in self.path)
            self.sections.append(Section(heading_path, tuple(paragraphs)))


def parse_markdown(text: str, default_title: str) -> ParsedDocument:
    builder = _SectionBuilder()
    title: str | None = None
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match is None:
            builder.lines.append(line)
            continue
        heading = clean_inline(match.group(2))
        if not heading:
            continue
        level = len(match.group(1))
        if title is None and level == 1:
            title = heading
        builder.heading(level, heading)
    builder.flush()
    return ParsedDocument(title or default_title, tuple(builder.sections))


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
