"""Read public NLU data sets into `Example`s: BIO folders, CSV files, Rasa 3 NLU YAML,
token-per-line (CoNLL-style) files with an intent file beside them.

Every importer raises `DataImportError` (a ValueError) naming the file and line of the
first problem it meets.

Labels read from files become intent names through `IntentNames`: a label that is not a valid
intent name (`INTENT_NAME_PATTERN`, e.g. Banking77's `reverted_card_payment?`) is renamed; two
labels that would become the same name, or a label with no valid character, are errors.
"""

from __future__ import annotations

import csv
import logging
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.botdef.annotation import ENTITY_NAME_RE, parse_annotated
from services.botdef.model import EntityDef, EntitySpan, Example
from services.botdef.schema import INTENT_NAME_PATTERN
from services.botdef.yamlio import YamlSyntaxError, line_of, read_yaml, value_line
from services.common.regexsafety import pattern_issue

log = logging.getLogger(__name__)

BIO_FILES = ("seq.in", "seq.out", "label")
CSV_TEXT_COLUMN = "text"
CSV_INTENT_COLUMNS = ("intent", "category", "label")
RASA_KINDS = ("intent", "synonym", "regex", "lookup")
CONLL_KINDS = frozenset("BIES")  # B-, I-, E-, S- (and O): BIO is BIOES without E- and S-


class DataImportError(ValueError):
    """Input data that cannot be imported; the message names the file and line."""


_INTENT_CHARS = "letters, digits, '_', '.', '#', '-'"


def valid_intent_name(name: str) -> bool:
    """Whether `name` matches the bot definition's `INTENT_NAME_PATTERN`."""
    return re.fullmatch(INTENT_NAME_PATTERN, name) is not None


def intent_name(label: str) -> str | None:
    """`label` made a valid intent name, or None when it has no character to keep.

    A valid name is kept as is. Otherwise accents are dropped (NFKD), each run of characters
    not allowed in a name becomes one '_' (none at either end), and leading characters not
    allowed first ('.', '#', '-') are dropped: `reverted_card_payment?` -> `reverted_card_payment`,
    `top up` -> `top_up`. The allowed characters are those of `INTENT_NAME_PATTERN`.
    """
    if valid_intent_name(label):
        return label
    plain = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode("ascii")
    name = "_".join("".join(c if valid_intent_name("_" + c) else " " for c in plain).split())
    while name and not valid_intent_name(name):
        name = name[1:]
    return name or None


@dataclass
class IntentNames:
    """Labels -> intent names for one import: the same label always gives the same name, and
    two labels never share one. `renamed` holds the labels that changed, in the order met."""

    names: dict[str, str] = field(default_factory=dict)  # label -> intent name
    _labels: dict[str, str] = field(default_factory=dict)  # intent name -> label

    @property
    def renamed(self) -> dict[str, str]:
        return {label: name for label, name in self.names.items() if label != name}

    def __call__(self, label: str, where: str) -> str:
        """The intent name of `label`; DataImportError (at `where`) when there is none."""
        known = self.names.get(label)
        if known is not None:
            return known
        name = intent_name(label)
        if name is None:
            raise DataImportError(
                f"{where}: label {label!r} has no character allowed in an intent name "
                f"({_INTENT_CHARS})"
            )
        first = self._labels.setdefault(name, label)
        if first != label:
            raise DataImportError(
                f"{where}: labels {first!r} and {label!r} would both become intent {name!r}"
            )
        self.names[label] = name
        return name


@contextmanager
def _naming(names: IntentNames | None, source: Path) -> Iterator[IntentNames]:
    """`names`, or a fresh `IntentNames` whose renamed labels are logged (WARNING) once the
    import is done: a caller that passes its own reports them itself."""
    own = IntentNames() if names is None else names
    yield own
    if names is None:
        for label, name in own.renamed.items():
            log.warning("%s: renamed intent %r -> %r", source, label, name)


def _read_lines(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise DataImportError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataImportError(f"{path}: cannot read: {exc}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


# -- BIO folders (SNIPS / ATIS joint NLU format) ---------------------------------------------


def import_bio(directory: str | Path, names: IntentNames | None = None) -> list[Example]:
    """Read `seq.in` (tokens), `seq.out` (BIO tags) and `label` (intents), one per line.

    Labels become intent names through `names` (see `IntentNames`)."""
    folder = Path(directory)
    if not folder.is_dir():
        raise DataImportError(f"{folder}: no such directory")
    paths = [folder / name for name in BIO_FILES]
    tokens_lines, tags_lines, labels = (_read_lines(path) for path in paths)
    for path, lines in zip(paths[1:], (tags_lines, labels), strict=True):
        if len(lines) != len(tokens_lines):
            raise DataImportError(
                f"{path}:{min(len(lines), len(tokens_lines)) + 1}: {path.name} has "
                f"{len(lines)} lines but seq.in has {len(tokens_lines)}"
            )
    rows = zip(tokens_lines, tags_lines, labels, strict=True)
    with _naming(names, paths[2]) as namer:
        return [_bio_example(paths, namer, number, *row) for number, row in enumerate(rows, 1)]


def _bio_example(
    paths: Sequence[Path], names: IntentNames, number: int, line: str, tags: str, label: str
) -> Example:
    tokens, tag_list = line.split(), tags.split()
    if not tokens:
        raise DataImportError(f"{paths[0]}:{number}: empty utterance")
    if len(tag_list) != len(tokens):
        raise DataImportError(
            f"{paths[1]}:{number}: {len(tag_list)} tags for {len(tokens)} tokens in seq.in"
        )
    intent = names(label.strip(), f"{paths[2]}:{number}")
    try:
        spans = bio_spans(tokens, tag_list)
    except ValueError as exc:
        raise DataImportError(f"{paths[1]}:{number}: {exc}") from None
    return Example(" ".join(tokens), intent, spans)


def bio_spans(tokens: Sequence[str], tags: Sequence[str]) -> tuple[EntitySpan, ...]:
    """Char spans over `" ".join(tokens)` from BIO tags; an I- without its B- opens a span."""
    spans: list[EntitySpan] = []
    current: EntitySpan | None = None
    offset = 0
    for index, (token, tag) in enumerate(zip(tokens, tags, strict=True)):
        start, end = offset, offset + len(token)
        offset = end + 1
        kind, entity = _split_tag(tag, index)
        if kind == "I" and current is not None and current.entity == entity:
            current = EntitySpan(current.start, end, entity)
            continue
        if current is not None:
            spans.append(current)
        current = EntitySpan(start, end, entity) if kind != "O" else None
    if current is not None:
        spans.append(current)
    return tuple(spans)


def _split_tag(tag: str, index: int) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    kind, _, entity = tag.partition("-")
    if kind not in ("B", "I") or not ENTITY_NAME_RE.fullmatch(entity):
        raise ValueError(
            f"invalid tag {tag!r} for token {index + 1} (expected O, B-<entity> or I-<entity>)"
        )
    return kind, entity


# -- CSV (text,intent / Banking77 text,category) ---------------------------------------------


def import_csv(file: str | Path, names: IntentNames | None = None) -> list[Example]:
    """Read a CSV with a header: `text` and one of `intent`, `category`, `label`.

    Labels become intent names through `names` (see `IntentNames`)."""
    path = Path(file)
    try:
        with path.open(encoding="utf-8-sig", newline="") as stream, _naming(names, path) as namer:
            return _csv_examples(path, csv.DictReader(stream), namer)
    except FileNotFoundError:
        raise DataImportError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataImportError(f"{path}: cannot read: {exc}") from None


def _csv_examples(path: Path, reader: csv.DictReader[str], names: IntentNames) -> list[Example]:
    header = [name.strip().lower() for name in reader.fieldnames or []]
    if not header:
        raise DataImportError(f"{path}:1: empty file (expected a header: text,intent)")
    intent_column = next((c for c in CSV_INTENT_COLUMNS if c in header), None)
    if CSV_TEXT_COLUMN not in header or intent_column is None:
        raise DataImportError(
            f"{path}:1: header {','.join(header)!r} needs a 'text' column and one of "
            f"{', '.join(CSV_INTENT_COLUMNS)}"
        )
    reader.fieldnames = header
    examples = []
    for row in reader:
        where = f"{path}:{reader.line_num}"
        text = (row.get(CSV_TEXT_COLUMN) or "").strip()
        intent = (row.get(intent_column) or "").strip()
        if not text or not intent:
            raise DataImportError(f"{where}: empty {'text' if not text else intent_column}")
        examples.append(Example(text, names(intent, where)))
    return examples


# -- Rasa 3 NLU YAML -------------------------------------------------------------------------


@dataclass
class _RasaData:
    names: IntentNames
    examples: list[Example] = field(default_factory=list)
    synonyms: dict[str, list[str]] = field(default_factory=dict)
    regex: dict[str, list[str]] = field(default_factory=dict)
    lookup: dict[str, list[str]] = field(default_factory=dict)


def import_rasa(
    file: str | Path, names: IntentNames | None = None
) -> tuple[list[Example], list[EntityDef]]:
    """Read the `nlu:` section of a Rasa 3 training data file.

    Intents give examples (their names through `names`, see `IntentNames`); `regex:` and
    `lookup:` items give the entity of that name its patterns / values; each `synonym:` goes
    to the entities whose annotations or lookup values use its canonical value or a variant
    (dropped with a warning when none do).
    """
    path = Path(file)
    doc = _rasa_document(path)
    with _naming(names, path) as namer:
        data = _RasaData(namer)
        for index, item in enumerate(doc["nlu"]):
            _rasa_item(path, doc, index, item, data)
    return data.examples, _rasa_entities(data)


def _rasa_document(path: Path) -> Any:
    try:
        doc = read_yaml(path)
    except FileNotFoundError:
        raise DataImportError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataImportError(f"{path}: cannot read: {exc}") from None
    except YamlSyntaxError as exc:
        raise DataImportError(f"{path}:{exc.line}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("nlu"), list):
        raise DataImportError(f"{path}:1: no 'nlu:' list (not a Rasa NLU training file)")
    return doc


def _rasa_item(path: Path, doc: Any, index: int, item: Any, data: _RasaData) -> None:
    where = f"{path}:{line_of(doc, ['nlu', index])}"
    kind = next((k for k in RASA_KINDS if isinstance(item, dict) and k in item), None)
    if kind is None:
        raise DataImportError(f"{where}: an nlu item needs one of {', '.join(RASA_KINDS)}")
    name = str(item[kind])
    texts = _rasa_examples(path, where, item)
    if kind == "intent":
        data.examples.extend(_rasa_parse(path, data.names(name, where), texts))
    elif kind == "synonym":
        data.synonyms.setdefault(name, []).extend(text for _, text in texts)
    elif kind == "regex":
        _rasa_regex(path, texts)
        data.regex.setdefault(_rasa_entity_name(name, where), []).extend(t for _, t in texts)
    else:
        data.lookup.setdefault(_rasa_entity_name(name, where), []).extend(t for _, t in texts)


def _rasa_entity_name(name: str, where: str) -> str:
    if not ENTITY_NAME_RE.fullmatch(name):
        raise DataImportError(f"{where}: invalid entity name {name!r}")
    return name


def _rasa_examples(path: Path, where: str, item: Any) -> list[tuple[int, str]]:
    """(line, text) of each example of an nlu item: a `- ...` block or a list."""
    examples = item.get("examples")
    if isinstance(examples, list):
        return [_rasa_list_entry(path, examples, i) for i in range(len(examples))]
    if not isinstance(examples, str):
        raise DataImportError(f"{where}: 'examples' must be a '|' block of '- ...' lines")
    first = value_line(item, "examples") + 1
    found = []
    for offset, raw in enumerate(examples.splitlines()):
        text = raw.strip()
        if not text:
            continue
        if not text.startswith("-"):
            raise DataImportError(f"{path}:{first + offset}: expected '- example', got {text!r}")
        found.append((first + offset, text[1:].strip()))
    return found


def _rasa_list_entry(path: Path, examples: Any, index: int) -> tuple[int, str]:
    entry = examples[index]
    text = entry.get("text") if isinstance(entry, dict) else entry
    line = line_of(examples, [index])
    if not isinstance(text, str):
        raise DataImportError(f"{path}:{line}: an example must be a string or have 'text'")
    return line, text.strip()


def _rasa_parse(path: Path, intent: str, texts: Iterable[tuple[int, str]]) -> list[Example]:
    examples = []
    for line, text in texts:
        try:
            example = parse_annotated(text, intent=intent)
        except ValueError as exc:
            raise DataImportError(f"{path}:{line}: {exc}") from None
        if example.text.strip():
            examples.append(example)
    return examples


def _rasa_regex(path: Path, texts: Iterable[tuple[int, str]]) -> None:
    for line, pattern in texts:
        issue = pattern_issue(pattern)  # as the loader will check it
        if issue is not None:
            raise DataImportError(f"{path}:{line}: {issue}")


def _rasa_entities(data: _RasaData) -> list[EntityDef]:
    names = [span.entity for example in data.examples for span in example.entities]
    ordered = list(dict.fromkeys([*names, *data.regex, *data.lookup]))
    synonyms = _assign_synonyms(data, ordered)
    return [
        EntityDef(
            name,
            synonyms.get(name, {}),
            tuple(dict.fromkeys(data.regex.get(name, []))),
            tuple(dict.fromkeys(data.lookup.get(name, []))),
        )
        for name in ordered
    ]


def _assign_synonyms(data: _RasaData, names: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    used = _values_by_entity(data, names)
    out: dict[str, dict[str, list[str]]] = {}
    for canonical, variants in data.synonyms.items():
        keys = {canonical.lower(), *(v.lower() for v in variants)}
        targets = [name for name in names if keys & used[name]]
        if not targets:
            log.warning("synonym %r is used by no entity annotation or lookup; dropped", canonical)
        for name in targets:
            out.setdefault(name, {})[canonical] = list(variants)
    return out


def _values_by_entity(data: _RasaData, names: Sequence[str]) -> dict[str, set[str]]:
    used: dict[str, set[str]] = {name: set() for name in names}
    for example in data.examples:
        for span in example.entities:
            used[span.entity].add(example.text[span.start : span.end].lower())
            if span.value is not None:
                used[span.entity].add(span.value.lower())
    for name, values in data.lookup.items():
        used[name].update(value.lower() for value in values)
    return used


# -- token-per-line files (CoNLL style: CAIS) ------------------------------------------------

# Scripts written without spaces between words: Han (Chinese), kana (Japanese), and the
# CJK and full-width punctuation that goes with them ("。", "，", "？").
_CJK_RANGES = (
    (0x3000, 0x303F),  # CJK symbols and punctuation
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3400, 0x4DBF),  # CJK Unified Ideographs Extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
    (0xFF00, 0xFFEF),  # Halfwidth and Fullwidth Forms
    (0x20000, 0x3134F),  # CJK Unified Ideographs Extensions B-G
)


def is_cjk(char: str) -> bool:
    """Whether `char` belongs to a script written without spaces between words (Han, kana,
    CJK punctuation): such neighbours are joined without a space."""
    code = ord(char)
    return any(low <= code <= high for low, high in _CJK_RANGES)


def guess_language(texts: Iterable[str]) -> str:
    """'zh' when most letters of `texts` are CJK, else 'en': the default `language:` of an
    imported bot (letters only, so digits, punctuation and spaces do not tip the count)."""
    letters = cjk = 0
    for text in texts:
        for char in text:
            if char.isalpha():
                letters += 1
                cjk += is_cjk(char)
    return "zh" if cjk * 2 > letters else "en"


def join_tokens(tokens: Sequence[str], *, characters: bool = False) -> tuple[str, list[int]]:
    """The text of one utterance's tokens and where each token starts in it.

    Character-tokenised text is joined as it stands, so a Latin word spelt letter by letter
    (CAIS's `t f b o y s`) comes back whole and a space token stays the text's space: that is
    an utterance whose tokens are all one character with at least one CJK among them, or any
    utterance when `characters` says the whole file is tokenised so. Otherwise two neighbours
    get one space between them unless both sides are CJK (`我 想 听 tfboys 的 歌` ->
    `我想听 tfboys 的歌`) or one is itself whitespace: Latin-script tokens get spaces.
    """
    glued = all(len(token) == 1 for token in tokens) and (
        characters or any(map(is_cjk, tokens))
    )
    pieces: list[str] = []
    starts: list[int] = []
    length = 0
    for index, token in enumerate(tokens):
        if index and not glued and _spaced(tokens[index - 1], token):
            pieces.append(" ")
            length += 1
        starts.append(length)
        pieces.append(token)
        length += len(token)
    return "".join(pieces), starts


def _spaced(left: str, right: str) -> bool:
    if left.isspace() or right.isspace():
        return False
    return not (is_cjk(left[-1]) and is_cjk(right[0]))


@dataclass
class TagWarnings:
    """I-x / E-x tags that continue no x span, counted over one import. Each opens a span (a
    common slip in published data, as `import_bio` does), so they are reported, not refused."""

    count: int = 0
    first: str = ""  # file:line of the first one

    def add(self, where: str) -> None:
        self.count += 1
        self.first = self.first or where


@dataclass(frozen=True)
class _Token:
    text: str
    kind: str  # B, I, E, S or O
    entity: str  # "" for O
    where: str  # file:line


def import_conll(
    file: str | Path,
    intents_file: str | Path,
    names: IntentNames | None = None,
    warnings: TagWarnings | None = None,
) -> list[Example]:
    """Read a token-per-line file (`token tag`, BIO or BIOES tags, a blank line between
    utterances) and its intent file (one intent per utterance, same order).

    Text comes from `join_tokens` (`characters` when every token of the file is one
    character); spans from the tags (whitespace at a span's ends is left out). Labels become
    intent names through `names` (see `IntentNames`); I-/E- tags that continue no span open
    one and are counted in `warnings` (logged when none is given).
    """
    path, intents_path = Path(file), Path(intents_file)
    utterances = _conll_utterances(path)
    labels = _intent_lines(intents_path)
    if len(labels) != len(utterances):
        raise DataImportError(
            f"{intents_path}:{min(len(labels), len(utterances)) + 1}: {len(labels)} intent "
            f"lines but {path} has {len(utterances)} utterances (one intent per utterance)"
        )
    tally = TagWarnings() if warnings is None else warnings
    characters = all(len(token.text) == 1 for tokens in utterances for token in tokens)
    rows = enumerate(zip(utterances, labels, strict=True), 1)
    with _naming(names, intents_path) as namer:
        examples = [
            _conll_example(tokens, namer(label, f"{intents_path}:{n}"), tally, characters)
            for n, (tokens, label) in rows
        ]
    if warnings is None and tally.count:
        log.warning("%s: %d I-/E- tags continue no span (first at %s); each opened one",
                    path, tally.count, tally.first)
    return examples


def _intent_lines(path: Path) -> list[str]:
    labels = [line.strip() for line in _read_lines(path)]
    for number, label in enumerate(labels, 1):
        if not label:
            raise DataImportError(f"{path}:{number}: empty intent line")
    return labels


def _conll_utterances(path: Path) -> list[list[_Token]]:
    """The tokens of each utterance; blank lines (and CoNLL's `-DOCSTART-`) separate them."""
    utterances: list[list[_Token]] = []
    current: list[_Token] = []
    for number, line in enumerate(_read_lines(path), 1):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if current:
                utterances.append(current)
            current = []
            continue
        current.append(_conll_token(line.rstrip(), f"{path}:{number}"))
    if current:
        utterances.append(current)
    if not utterances:
        raise DataImportError(f"{path}:1: no utterances (expected 'token tag' lines)")
    return utterances


def _conll_token(line: str, where: str) -> _Token:
    """One `token tag` line: tab- or space-separated, the tag last, the token first. A line
    starting with the separator has a space for its token: CAIS writes the text's spaces so."""
    separator = "\t" if "\t" in line else " "
    head, found, tag = line.rpartition(separator)
    if not found or not head:
        raise DataImportError(f"{where}: expected 'token tag', got {line!r}")
    token = head if head.isspace() else head.split(separator)[0]
    if not token:
        raise DataImportError(f"{where}: expected 'token tag', got {line!r}")
    kind, entity = _conll_tag(tag, where)
    return _Token(token, kind, entity, where)


def _conll_tag(tag: str, where: str) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    kind, dash, entity = tag.partition("-")
    if kind not in CONLL_KINDS or not dash or not ENTITY_NAME_RE.fullmatch(entity):
        raise DataImportError(
            f"{where}: unknown tag {tag!r} (expected O, or B-, I-, E-, S- and an entity "
            "name: the BIO or BIOES scheme)"
        )
    return kind, entity


def _conll_example(
    tokens: Sequence[_Token], intent: str, tally: TagWarnings, characters: bool
) -> Example:
    text, starts = join_tokens([token.text for token in tokens], characters=characters)
    trimmed = [_trim(text, span) for span in _tag_spans(tokens, starts, tally)]
    lead = len(text) - len(text.lstrip())
    if not text.strip():
        raise DataImportError(f"{tokens[0].where}: empty utterance (only whitespace tokens)")
    spans = (EntitySpan(s.start - lead, s.end - lead, s.entity) for s in trimmed if s)
    return Example(text.strip(), intent, tuple(spans))


def _tag_spans(
    tokens: Sequence[_Token], starts: Sequence[int], tally: TagWarnings
) -> list[EntitySpan]:
    """Spans from BIO/BIOES tags: I-x / E-x continue an open x span, E-x and S-x close one."""
    spans: list[EntitySpan] = []
    current: EntitySpan | None = None
    for token, start in zip(tokens, starts, strict=True):
        end = start + len(token.text)
        if token.kind in "IE" and current is not None and current.entity == token.entity:
            current = EntitySpan(current.start, end, token.entity)
        else:
            if current is not None:
                spans.append(current)
            current = None if token.kind == "O" else EntitySpan(start, end, token.entity)
            if token.kind in "IE":
                tally.add(token.where)
        if token.kind in "ES" and current is not None:
            spans.append(current)
            current = None
    if current is not None:
        spans.append(current)
    return spans


def _trim(text: str, span: EntitySpan) -> EntitySpan | None:
    """`span` without whitespace at its ends (an annotation cannot start or end with it);
    None when nothing else is left."""
    start, end = span.start, span.end
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return EntitySpan(start, end, span.entity) if start < end else None
