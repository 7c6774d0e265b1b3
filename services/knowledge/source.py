"""Loading and validating a bot's `knowledge/` folder (docs/knowledge.md).

`load_knowledge(folder)` reads `knowledge.yml` (settings), `faq.yml` (FAQ entries) and every
document (`*.md`, `*.markdown`, `*.txt`, `*.html`, `*.htm`, any depth), splits the documents
into passages and returns a `KnowledgeBase`. Every problem names its file (and line): errors
(invalid YAML or fields, binary, non-UTF-8 or too large documents) are raised together as one
`KnowledgeFormatError`; warnings (empty documents, duplicate passages or questions, ignored
files) are returned with the result.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.botdef.yamlio import YamlSyntaxError, field_path, line_of, read_yaml, to_plain
from services.knowledge.documents import DOCUMENT_SUFFIXES, parse_document
from services.knowledge.errors import KnowledgeFormatError
from services.knowledge.splitting import split_passages

SETTINGS_FILE = "knowledge.yml"
FAQ_FILE = "faq.yml"
FORMAT_VERSION = "1"
MAX_DOCUMENT_BYTES = 2_000_000
"""A larger document is refused: split it into several files."""
MIN_PASSAGE_CHARS, MAX_PASSAGE_CHARS = 100, 10_000
FAQ_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")
URL = re.compile(r"^https?://\S+$")
SETTINGS_KEYS = {"version", "max_passage_chars", "bm25_weight", "urls"}
FAQ_KEYS = {"id", "questions", "answer", "buttons", "url"}


@dataclass(frozen=True)
class KnowledgeSettings:
    max_passage_chars: int = 800
    bm25_weight: float = 0.3
    urls: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Button:
    title: str
    payload: str


@dataclass(frozen=True)
class FaqEntry:
    id: str
    questions: tuple[str, ...]
    answer: str
    buttons: tuple[Button, ...] = ()
    url: str | None = None


@dataclass(frozen=True)
class Passage:
    document: str
    title: str
    heading_path: tuple[str, ...]
    position: int
    text: str
    url: str | None = None


@dataclass(frozen=True)
class KnowledgeBase:
    settings: KnowledgeSettings
    faq: tuple[FaqEntry, ...]
    passages: tuple[Passage, ...]
    documents: tuple[str, ...]
    warnings: tuple[str, ...] = ()


@dataclass
class _Problems:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    def warn(self, where: str, message: str) -> None:
        self.warnings.append(f"{where}: {message}")


def load_knowledge(folder: Path) -> KnowledgeBase:
    """The knowledge base in `folder` (a bot's `knowledge/`); raises KnowledgeFormatError."""
    if not folder.is_dir():
        raise KnowledgeFormatError(f"{folder}: no such knowledge folder")
    problems = _Problems()
    settings = _load_settings(folder / SETTINGS_FILE, problems)
    faq = _load_faq(folder / FAQ_FILE, problems)
    passages, documents = _load_documents(folder, settings, problems)
    _check_urls(folder / SETTINGS_FILE, settings, documents, problems)
    if not problems.errors and not faq and not passages:
        problems.error(str(folder), f"nothing to index: no {FAQ_FILE} entries and no "
                                    f"documents ({', '.join(DOCUMENT_SUFFIXES)})")
    if problems.errors:
        raise KnowledgeFormatError("\n".join(problems.errors))
    return KnowledgeBase(settings, tuple(faq), tuple(passages), tuple(documents),
                         tuple(problems.warnings))


def _read_yaml_file(path: Path, problems: _Problems) -> Any:
    try:
        return read_yaml(path)
    except YamlSyntaxError as exc:
        problems.error(f"{path.name}:{exc.line}", str(exc))
    except UnicodeDecodeError as exc:
        problems.error(path.name, f"not UTF-8 text ({exc.reason} at byte {exc.start})")
    except OSError as exc:
        problems.error(path.name, f"cannot read: {exc.strerror or exc}")
    return None


def _check_version(doc: Any, name: str, problems: _Problems) -> None:
    version = doc.get("version", FORMAT_VERSION)
    if str(version) != FORMAT_VERSION:
        problems.error(f"{name}:{line_of(doc, ['version'])}",
                       f"version {version!r} is not supported (expected \"{FORMAT_VERSION}\")")


def _unknown_keys(doc: Mapping[str, Any], allowed: set[str], where: str, root: Any,
                  path: list[str | int], problems: _Problems) -> None:
    for key in doc:
        if key not in allowed:
            problems.error(f"{where}:{line_of(root, [*path, key])}",
                           f"{field_path([*path, key])}: unknown key {key!r} "
                           f"(allowed: {', '.join(sorted(allowed))})")


def _load_settings(path: Path, problems: _Problems) -> KnowledgeSettings:
    if not path.is_file():
        return KnowledgeSettings()
    doc = _read_yaml_file(path, problems)
    if doc is None:
        return KnowledgeSettings()
    if not isinstance(doc, dict):
        problems.error(path.name, "must be a mapping of settings")
        return KnowledgeSettings()
    _check_version(doc, path.name, problems)
    _unknown_keys(doc, SETTINGS_KEYS, path.name, doc, [], problems)
    defaults = KnowledgeSettings()
    size = doc.get("max_passage_chars", defaults.max_passage_chars)
    if (not isinstance(size, int) or isinstance(size, bool)
            or not MIN_PASSAGE_CHARS <= size <= MAX_PASSAGE_CHARS):
        problems.error(f"{path.name}:{line_of(doc, ['max_passage_chars'])}",
                       f"max_passage_chars must be an integer {MIN_PASSAGE_CHARS}.."
                       f"{MAX_PASSAGE_CHARS}, got {size!r}")
        size = defaults.max_passage_chars
    weight = doc.get("bm25_weight", defaults.bm25_weight)
    if not isinstance(weight, int | float) or isinstance(weight, bool) or not 0 <= weight <= 1:
        problems.error(f"{path.name}:{line_of(doc, ['bm25_weight'])}",
                       f"bm25_weight must be a number 0..1, got {weight!r}")
        weight = defaults.bm25_weight
    urls = _urls(doc, path.name, problems)
    return KnowledgeSettings(int(size), float(weight), urls)


def _urls(doc: Any, name: str, problems: _Problems) -> dict[str, str]:
    raw = doc.get("urls") or {}
    if not isinstance(raw, dict):
        problems.error(f"{name}:{line_of(doc, ['urls'])}",
                       "urls must map document paths to links")
        return {}
    urls: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(value, str) or not URL.match(value):
            problems.error(f"{name}:{line_of(doc, ['urls', key])}",
                           f"urls[{key!r}] must be an http(s) URL, got {value!r}")
            continue
        urls[str(key)] = value
    return urls


def _check_urls(path: Path, settings: KnowledgeSettings, documents: list[str],
                problems: _Problems) -> None:
    known = set(documents)
    for document in settings.urls:
        if document not in known:
            problems.warn(path.name, f"urls: no document {document!r} (paths are relative to "
                                     "knowledge/, like docs/cards/fees.md)")


def _load_faq(path: Path, problems: _Problems) -> list[FaqEntry]:
    if not path.is_file():
        return []
    doc = _read_yaml_file(path, problems)
    if doc is None:
        return []
    if not isinstance(doc, dict) or not isinstance(doc.get("faq"), list):
        problems.error(path.name, "must be a mapping with a list `faq:` of entries")
        return []
    _check_version(doc, path.name, problems)
    _unknown_keys(doc, {"version", "faq"}, path.name, doc, [], problems)
    entries: list[FaqEntry] = []
    seen_ids: set[str] = set()
    seen_questions: dict[str, str] = {}
    for index, raw in enumerate(doc["faq"]):
        entry = _faq_entry(raw, index, doc, path.name, problems)
        if entry is None:
            continue
        where = f"{path.name}:{line_of(doc, ['faq', index])}"
        if entry.id in seen_ids:
            problems.error(where, f"duplicate FAQ id {entry.id!r}")
            continue
        seen_ids.add(entry.id)
        for question in entry.questions:
            other = seen_questions.setdefault(_normalise(question), entry.id)
            if other != entry.id:
                problems.warn(where, f"question {question!r} of {entry.id!r} is also a "
                                     f"question of {other!r}")
        entries.append(entry)
    return entries


def _faq_entry(raw: Any, index: int, root: Any, name: str,
               problems: _Problems) -> FaqEntry | None:
    where = f"{name}:{line_of(root, ['faq', index])}"
    if not isinstance(raw, dict):
        problems.error(where, f"faq[{index}] must be a mapping (id, questions, answer)")
        return None
    _unknown_keys(raw, FAQ_KEYS, name, root, ["faq", index], problems)
    entry_id = raw.get("id")
    if not isinstance(entry_id, str) or not FAQ_ID.match(entry_id):
        problems.error(where, f"faq[{index}].id must match [a-z0-9][a-z0-9-]*, got {entry_id!r}")
        return None
    questions = raw.get("questions")
    if (not isinstance(questions, list) or not questions
            or not all(isinstance(q, str) and q.strip() for q in questions)):
        problems.error(where, f"{entry_id}: questions must be a non-empty list of texts")
        return None
    answer = raw.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        problems.error(where, f"{entry_id}: answer must be a non-empty text")
        return None
    url = raw.get("url")
    if url is not None and (not isinstance(url, str) or not URL.match(url)):
        problems.error(where, f"{entry_id}: url must be an http(s) URL, got {url!r}")
        url = None
    buttons = _buttons(raw.get("buttons"), where, entry_id, problems)
    return FaqEntry(entry_id, tuple(q.strip() for q in questions), answer.strip(),
                    buttons, url)


def _buttons(raw: Any, where: str, entry_id: str, problems: _Problems) -> tuple[Button, ...]:
    if raw is None:
        return ()
    plain = to_plain(raw)
    if not isinstance(plain, list) or not all(
            isinstance(b, dict) and isinstance(b.get("title"), str)
            and isinstance(b.get("payload"), str) for b in plain):
        problems.error(where, f"{entry_id}: buttons must be a list of {{title, payload}}")
        return ()
    return tuple(Button(b["title"], b["payload"]) for b in plain)


def _load_documents(folder: Path, settings: KnowledgeSettings,
                    problems: _Problems) -> tuple[list[Passage], list[str]]:
    passages: list[Passage] = []
    documents: list[str] = []
    seen: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if not path.is_file() or relative in (SETTINGS_FILE, FAQ_FILE) or any(
                part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if path.suffix.lower() not in DOCUMENT_SUFFIXES:
            problems.warn(relative, "ignored: not a document type "
                                    f"({', '.join(DOCUMENT_SUFFIXES)})")
            continue
        text = _read_document(path, relative, problems)
        if text is None:
            continue
        found = _document_passages(relative, text, settings, problems)
        if found:
            documents.append(relative)
        for passage in found:
            key = _normalise(passage.text)
            first = seen.setdefault(key, f"{passage.document} passage {passage.position}")
            if first != f"{passage.document} passage {passage.position}":
                problems.warn(relative, f"passage {passage.position} duplicates {first}; "
                                        "indexed once")
                continue
            passages.append(passage)
    return _renumbered(passages), documents


def _renumbered(passages: list[Passage]) -> list[Passage]:
    """Positions 0.. per document after duplicates were dropped."""
    counts: dict[str, int] = {}
    result = []
    for passage in passages:
        position = counts.get(passage.document, 0)
        counts[passage.document] = position + 1
        result.append(Passage(passage.document, passage.title, passage.heading_path, position,
                              passage.text, passage.url))
    return result


def _read_document(path: Path, relative: str, problems: _Problems) -> str | None:
    try:
        size = path.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            problems.error(relative, f"{size / 1e6:.1f} MB; the limit is "
                                     f"{MAX_DOCUMENT_BYTES / 1e6:.0f} MB per document (split it "
                                     "into several files)")
            return None
        data = path.read_bytes()
    except OSError as exc:
        problems.error(relative, f"cannot read: {exc.strerror or exc}")
        return None
    if b"\x00" in data:
        problems.error(relative, "binary file (NUL bytes); documents must be UTF-8 text "
                                 f"({', '.join(DOCUMENT_SUFFIXES)})")
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.error(relative, f"not UTF-8 text (invalid byte 0x{data[exc.start]:02x} at "
                                 f"offset {exc.start}); save it as UTF-8")
        return None


def _document_passages(relative: str, text: str, settings: KnowledgeSettings,
                       problems: _Problems) -> list[Passage]:
    parsed = parse_document(relative, text)
    if parsed.is_empty:
        problems.warn(relative, "empty document (no text); skipped")
        return []
    url = settings.urls.get(relative)
    passages: list[Passage] = []
    for section in parsed.sections:
        for chunk in split_passages(section.paragraphs, settings.max_passage_chars):
            passages.append(Passage(relative, parsed.title, section.heading_path,
                                    len(passages), chunk, url))
    return passages


def _normalise(text: str) -> str:
    return " ".join(text.casefold().split())
