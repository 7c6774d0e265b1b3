"""Load and validate a bot folder: `bot.yml`, `data/**/*.yml`, `domain/**/*.yml`,
`workflows/**/*.yml`.

All problems are collected (YAML syntax, JSON Schema, semantic checks), then raised
together as one `BotDefinitionError`.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.botdef.annotation import parse_annotated
from services.botdef.builder import SectionEntry, build_conversation_checked
from services.botdef.conversation import ConversationDefinition, answers_only
from services.botdef.model import (
    BotDefinition,
    BotDefinitionError,
    DefinitionIssue,
    EntityDef,
    Example,
    Intent,
    KnowledgeSettings,
    NluSettings,
)
from services.botdef.schema import (
    BOT_FILE_SCHEMA,
    DATA_FILE_SCHEMA,
    SECTION_KEYS,
    check_schema,
)
from services.botdef.yamlio import (
    PathPart,
    YamlSyntaxError,
    field_path,
    is_flow_list,
    line_of,
    read_yaml,
    to_plain,
)
from services.common.regexsafety import pattern_issue

BOT_FILE = "bot.yml"
DATA_DIR = "data"
DOMAIN_DIR = "domain"
WORKFLOWS_DIR = "workflows"
MIN_EXAMPLES = 2
YAML_SUFFIXES = (".yml", ".yaml")


@dataclass
class _Origin:
    file: str
    line: int
    field: str

    def issue(self, message: str) -> DefinitionIssue:
        return DefinitionIssue(self.file, self.line, self.field, message)

    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class _IntentAcc:
    origin: _Origin
    examples: list[Example] = field(default_factory=list)
    count: int = 0


@dataclass
class _Mention:
    origin: _Origin
    entity: str


@dataclass
class _Section:
    origin: _Origin
    value: Any
    keys: dict[str, _Origin] = field(default_factory=dict)


class _Loader:
    """Accumulates the content of all files of one bot folder, and its issues."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.issues: list[DefinitionIssue] = []
        self.warnings: list[DefinitionIssue] = []
        self.intents: dict[str, _IntentAcc] = {}
        self.entities: dict[str, EntityDef] = {}
        self.entity_origins: dict[str, _Origin] = {}
        self.mentions: list[_Mention] = []
        self.sections: dict[str, _Section] = {}
        self.workflows: dict[str, Any] = {}
        self.intents_complete = True
        self.entities_complete = True
        self.entries: list[SectionEntry] = []
        self.conversation_complete = True
        self.conversation = ConversationDefinition()
        self.languages: tuple[str, ...] = ("en",)
        self.example_languages: dict[str, set[str]] = {}

    # -- files ---------------------------------------------------------------------------

    def read(self, path: Path, schema: dict[str, Any]) -> tuple[Any, set[tuple[PathPart, ...]]]:
        """The document of one file and its paths in schema error (issues recorded).

        The document is None when the file cannot be read or parsed, or is empty.
        """
        file = str(path)
        try:
            doc = read_yaml(path)
        except YamlSyntaxError as exc:
            self.issues.append(DefinitionIssue(file, exc.line, "", str(exc)))
            self.intents_complete = self.entities_complete = False
            return None, set()
        except (OSError, UnicodeDecodeError) as exc:
            self.issues.append(DefinitionIssue(file, 0, "", f"cannot read: {exc}"))
            self.intents_complete = self.entities_complete = False
            return None, set()
        if doc is None and schema is DATA_FILE_SCHEMA:
            return None, set()
        problems, bad = check_schema(doc, file, schema)
        self.issues.extend(problems)
        if not isinstance(doc, dict):
            self.intents_complete = self.entities_complete = False
            return None, bad
        return doc, bad

    def add_document(self, path: Path, doc: Any, bad: set[tuple[PathPart, ...]]) -> None:
        """Add the schema-valid parts of a file (an item with an error is left out)."""
        file = str(path)
        for index, entity in enumerate(self._valid_items(doc, "entities", bad)):
            if entity is not None:
                self._add_entity(file, doc, index, entity)
        language = self._file_language(file, doc, bad)
        for index, intent in enumerate(self._valid_items(doc, "intents", bad)):
            if intent is not None:
                self._add_intent(file, doc, index, intent, language)
        for key in SECTION_KEYS:
            if key in doc and (key,) in bad:
                self.conversation_complete = False
            elif key in doc:
                self._add_section(_Origin(file, line_of(doc, [key]), key), key, doc, doc[key])

    def _valid_items(self, doc: Any, key: str, bad: set[tuple[PathPart, ...]]) -> list[Any]:
        """The items of a list section, None for those in schema error (marks incomplete)."""
        if key not in doc or doc[key] is None:
            return []
        if (key,) in bad:
            self._mark_incomplete(key)
            return []
        items = list(doc[key])
        for index in range(len(items)):
            if (key, index) in bad:
                items[index] = None
                self._mark_incomplete(key)
        return items

    def _mark_incomplete(self, key: str) -> None:
        if key == "intents":
            self.intents_complete = False
        else:
            self.entities_complete = False

    # -- entities ------------------------------------------------------------------------

    def _add_entity(self, file: str, doc: Any, index: int, entity: Any) -> None:
        name = str(entity["name"])
        origin = _Origin(file, line_of(doc, ["entities", index]), f"entities[{index}]")
        if name in self.entities:
            first = self.entity_origins[name]
            self.issues.append(
                origin.issue(f"duplicate entity {name!r} (first at {first.where()})")
            )
            return
        synonyms = self._synonyms(file, doc, index, entity.get("synonyms") or {})
        regex = tuple(str(p) for p in entity.get("regex") or [])
        self._check_regex(file, doc, index, regex)
        lookup = tuple(str(v) for v in entity.get("lookup") or [])
        self.entities[name] = EntityDef(name, synonyms, regex, lookup)
        self.entity_origins[name] = origin

    def _synonyms(self, file: str, doc: Any, index: int, raw: Any) -> dict[str, list[str]]:
        synonyms: dict[str, list[str]] = {}
        seen: dict[str, str] = {}
        for canonical, variants in raw.items():
            path: list[str | int] = ["entities", index, "synonyms", canonical]
            origin = _Origin(file, line_of(doc, path), f"entities[{index}].synonyms.{canonical}")
            if not isinstance(canonical, str):
                self.issues.append(origin.issue(f"canonical value {canonical!r} must be a string"))
                continue
            for variant in [canonical, *variants]:
                other = seen.setdefault(str(variant).lower(), canonical)
                if other != canonical:
                    message = f"variant {variant!r} is also a synonym of {other!r}"
                    self.issues.append(origin.issue(message))
            synonyms[canonical] = [str(v) for v in variants]
        return synonyms

    def _check_regex(self, file: str, doc: Any, index: int, patterns: tuple[str, ...]) -> None:
        for number, pattern in enumerate(patterns):
            origin = _Origin(
                file,
                line_of(doc, ["entities", index, "regex", number]),
                f"entities[{index}].regex[{number}]",
            )
            issue = pattern_issue(pattern)  # user text runs through it: RE2, no ReDoS
            if issue is not None:
                self.issues.append(origin.issue(issue))

    # -- intents -------------------------------------------------------------------------

    def _file_language(self, file: str, doc: Any, bad: set[tuple[PathPart, ...]]) -> str:
        """The language of a data file's examples: its `language:`, else the default."""
        language = doc.get("language") if ("language",) not in bad else None
        if isinstance(language, str) and doc is not None and "name" not in doc:
            if self._language_issue(_Origin(file, line_of(doc, ["language"]), "language"),
                                    language):
                return self.languages[0]
            return language
        return self.languages[0]

    def _language_issue(self, origin: _Origin, language: str) -> bool:
        if language in self.languages:
            return False
        declared = ", ".join(self.languages)
        self.issues.append(origin.issue(
            f"language {language!r} is not one of the bot's languages ({declared}; bot.yml "
            "`language` or `languages`)"))
        return True

    def _add_intent(self, file: str, doc: Any, index: int, intent: Any,
                    language: str | None = None) -> None:
        name = str(intent["name"])
        origin = _Origin(file, line_of(doc, ["intents", index]), f"intents[{index}]")
        own = intent.get("language")
        if isinstance(own, str):
            where = _Origin(file, line_of(doc, ["intents", index, "language"]),
                            f"intents[{index}].language")
            language = own if not self._language_issue(where, own) else language
        language = language or self.languages[0]
        self.example_languages.setdefault(name, set())
        warning = comma_split_warning(file, doc, ["intents", index, "examples"])
        if warning is not None:
            self.warnings.append(warning)
        acc = self.intents.setdefault(name, _IntentAcc(origin))
        for number, text in enumerate(intent["examples"]):
            acc.count += 1
            place = _Origin(
                file,
                line_of(doc, ["intents", index, "examples", number]),
                f"intents[{index}].examples[{number}]",
            )
            if self._add_example(acc, place, name, str(text), language):
                self.example_languages[name].add(language)

    def _add_example(self, acc: _IntentAcc, place: _Origin, intent: str, text: str,
                     language: str | None = None) -> bool:
        try:
            example = parse_annotated(text, intent=intent)
        except ValueError as exc:
            self.issues.append(place.issue(f"malformed annotation: {exc}"))
            return False
        if not example.text.strip():
            self.issues.append(place.issue("example text is empty"))
            return False
        if language is not None:
            example = Example(example.text, example.intent, example.entities, language)
        acc.examples.append(example)
        self.mentions.extend(_Mention(place, span.entity) for span in example.entities)
        return True

    # -- raw sections --------------------------------------------------------------------

    def _add_section(self, origin: _Origin, key: str, doc: Any, value: Any) -> None:
        plain = to_plain(value)
        section = self.sections.get(key)
        if section is None:
            section = self.sections[key] = _Section(origin, type(plain)())
        if isinstance(section.value, list) and isinstance(plain, list):
            section.value.extend(plain)
            self.entries.extend(_list_entries(origin.file, doc, key, plain))
        elif isinstance(section.value, dict) and isinstance(plain, dict):
            self._merge_mapping(section, origin, key, doc, plain)
        else:
            message = f"{key!r} must be of the same kind (mapping or list) in every file"
            self.issues.append(origin.issue(f"{message} (see {section.origin.where()})"))
            self.conversation_complete = False

    def _merge_mapping(
        self, section: _Section, origin: _Origin, key: str, doc: Any, plain: dict[str, Any]
    ) -> None:
        for name, value in plain.items():
            first = section.keys.get(str(name))
            if first is not None:
                message = f"duplicate {key} entry {name!r} (first at {first.where()})"
                self.issues.append(origin.issue(message))
                self.conversation_complete = False
                continue
            section.value[name] = value
            section.keys[str(name)] = origin
            self.entries.append(SectionEntry(key, str(name), value, origin.file, doc, (key, name)))

    def add_workflow(self, path: Path) -> None:
        file = str(path)
        try:
            doc = read_yaml(path)
        except YamlSyntaxError as exc:
            self.issues.append(DefinitionIssue(file, exc.line, "", str(exc)))
            return
        except (OSError, UnicodeDecodeError) as exc:
            self.issues.append(DefinitionIssue(file, 0, "", f"cannot read: {exc}"))
            return
        if not isinstance(doc, dict):
            self.issues.append(DefinitionIssue(file, 1, "", "a workflow file must hold a mapping"))
            return
        name = doc["name"] if isinstance(doc.get("name"), str) else path.stem
        if name in self.workflows:
            self.issues.append(DefinitionIssue(file, 1, "name", f"duplicate workflow {name!r}"))
            return
        self.workflows[name] = to_plain(doc)

    # -- cross-file checks ---------------------------------------------------------------

    def check(self, bot_file: str) -> None:
        if self.entities_complete:
            self._check_mentions()
        if self.intents_complete:
            self._check_intents(bot_file)
        if self.conversation_complete and self.entries:
            self.conversation, issues, warnings = build_conversation_checked(
                self.entries,
                intents=set(self.intents) if self.intents_complete else None,
                entities=self.entities if self.entities_complete else None,
                workflows=set(self.workflows),
                languages=self.languages,
            )
            self.issues.extend(issues)
            self.warnings.extend(warnings)

    def check_languages(self, bot_file: str, bot_doc: Any) -> None:
        """bot.yml `language` / `languages` / `default_language`; sets `self.languages`
        (default first). Run before the data files are read."""
        single, many = bot_doc.get("language"), bot_doc.get("languages")
        default = bot_doc.get("default_language")
        if isinstance(many, list) and many and all(isinstance(c, str) for c in many):
            if isinstance(single, str):
                self.issues.append(DefinitionIssue(
                    bot_file, line_of(bot_doc, ["language"]), "language",
                    "give either `language` (one) or `languages` (several), not both"))
            codes = [str(c) for c in many]
            if isinstance(default, str) and default not in codes:
                self.issues.append(DefinitionIssue(
                    bot_file, line_of(bot_doc, ["default_language"]), "default_language",
                    f"{default!r} is not one of `languages` ({', '.join(codes)})"))
            elif isinstance(default, str):
                codes.remove(default)
                codes.insert(0, default)
            self.languages = tuple(codes)
        elif isinstance(single, str):
            self.languages = (single,)
            if isinstance(default, str) and default != single:
                self.issues.append(DefinitionIssue(
                    bot_file, line_of(bot_doc, ["default_language"]), "default_language",
                    f"{default!r} is not the bot's `language` ({single!r})"))

    def check_example_languages(self) -> None:
        """A multilingual bot: an intent without examples in one of its languages is a
        warning (messages in that language are rarely classified as it)."""
        if len(self.languages) < 2 or not self.intents_complete:
            return
        for name, acc in self.intents.items():
            missing = [c for c in self.languages if c not in self.example_languages.get(name, ())]
            if missing:
                self.warnings.append(acc.origin.issue(
                    f"intent {name!r} has no {', '.join(missing)} examples: messages in "
                    f"{', '.join(missing)} will rarely be classified as it"))

    def check_knowledge(self, bot_file: str, bot_doc: Any) -> None:
        """`knowledge.faq_intent` must name an intent of the bot (when given);
        `knowledge.answer_intents` intents of the bot whose flows only say things (the
        knowledge base never answers in place of a flow that collects, calls, runs a
        workflow or hands off)."""
        section = bot_doc.get("knowledge")
        if not isinstance(section, dict) or not self.intents_complete:
            return
        intent = section.get("faq_intent")
        if isinstance(intent, str) and intent not in self.intents:
            line = line_of(bot_doc, ["knowledge", "faq_intent"])
            message = f"unknown intent {intent!r} (use null for no FAQ intent)"
            self.issues.append(DefinitionIssue(bot_file, line, "knowledge.faq_intent", message))
        for index, name in enumerate(section.get("answer_intents") or ()):
            problem = self._answer_intent_problem(str(name))
            if problem is not None:
                line = line_of(bot_doc, ["knowledge", "answer_intents", index])
                field = f"knowledge.answer_intents[{index}]"
                self.issues.append(DefinitionIssue(bot_file, line, field, problem))

    def check_timezone(self, bot_file: str, bot_doc: Any) -> None:
        """bot.yml `timezone` must be an IANA timezone this system knows."""
        zone = bot_doc.get("timezone")
        if isinstance(zone, str) and not known_timezone(zone):
            self.issues.append(DefinitionIssue(bot_file, line_of(bot_doc, ["timezone"]),
                                               "timezone", f"unknown timezone {zone!r} (an "
                                               "IANA name such as Europe/Berlin or UTC)"))

    def _answer_intent_problem(self, intent: str) -> str | None:
        if intent not in self.intents:
            return f"unknown intent {intent!r}"
        flow = self.conversation.flow_for_intent(intent)
        if flow is not None and not answers_only(flow):
            return (f"intent {intent!r} starts the flow {flow.name!r}, which does more than "
                    "answer (collect, call, workflow or handoff): the knowledge base never "
                    "answers in its place")
        return None

    def _check_mentions(self) -> None:
        declared = ", ".join(sorted(self.entities)) or "none"
        for mention in self.mentions:
            if mention.entity not in self.entities:
                message = f"unknown entity {mention.entity!r} (declared: {declared})"
                self.issues.append(mention.origin.issue(message))

    def _check_intents(self, bot_file: str) -> None:
        if not self.intents:
            message = "the bot defines no intents (add an `intents:` list under data/)"
            self.issues.append(DefinitionIssue(bot_file, 0, "", message))
        for name, acc in self.intents.items():
            if acc.count < MIN_EXAMPLES:
                message = (
                    f"intent {name!r} has {acc.count} example(s); "
                    f"at least {MIN_EXAMPLES} are needed"
                )
                self.issues.append(acc.origin.issue(message))


def load_bot(path: str | Path) -> BotDefinition:
    """Load, validate and merge a bot folder; raises BotDefinitionError listing all issues."""
    root = Path(path)
    loader = _Loader(root)
    bot_path = root / BOT_FILE
    if not bot_path.is_file():
        where = str(root) if not root.is_dir() else str(bot_path)
        what = "not a bot folder (no such directory)" if not root.is_dir() else "missing bot.yml"
        raise BotDefinitionError([DefinitionIssue(where, 0, "", what)])
    bot_doc, bad = loader.read(bot_path, BOT_FILE_SCHEMA)
    if bot_doc is not None:
        loader.check_languages(str(bot_path), bot_doc)
        loader.add_document(bot_path, bot_doc, bad)
    for data_path in [*yaml_files(root / DATA_DIR), *yaml_files(root / DOMAIN_DIR)]:
        doc, bad = loader.read(data_path, DATA_FILE_SCHEMA)
        if doc is not None:
            loader.add_document(data_path, doc, bad)
    for workflow_path in yaml_files(root / WORKFLOWS_DIR):
        loader.add_workflow(workflow_path)
    loader.check(str(bot_path))
    loader.check_example_languages()
    if isinstance(bot_doc, dict):
        loader.check_knowledge(str(bot_path), bot_doc)
        loader.check_timezone(str(bot_path), bot_doc)
    if loader.issues or bot_doc is None:
        raise BotDefinitionError(sorted(loader.issues, key=lambda i: (i.file, i.line)))
    return _build(root, bot_doc, loader)


def comma_split_warning(file: str, doc: Any, path: list[PathPart]) -> DefinitionIssue | None:
    """A warning when the examples list at `path` is a `[...]` flow sequence of several items,
    not all quoted: there an unquoted comma ends an example (`[nothing else, bye]` is two)."""
    node: Any = doc
    for part in path:
        node = node[part]
    if not is_flow_list(node) or len(node) < 2 or _all_quoted(Path(file), node):
        return None
    shown = ", ".join(repr(str(item)) for item in node[:3]) + (", ..." if len(node) > 3 else "")
    message = (f"examples written as a [...] list: a comma outside quotes splits an example "
               f"in two ({len(node)} examples read: {shown}); write one example per `- ` "
               "line, or quote each example")
    return DefinitionIssue(file, line_of(doc, path), field_path(path), message)


def _all_quoted(path: Path, node: Any) -> bool:
    """Whether every item of a flow list starts with a quote in the file's text."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    for index in range(len(node)):
        line, column = node.lc.item(index)
        if line >= len(lines) or lines[line][column:column + 1] not in ("'", '"'):
            return False
    return True


def _list_entries(file: str, doc: Any, key: str, items: list[Any]) -> list[SectionEntry]:
    """The entries of a section written as a list: each named by its `name` (or a flow's
    `id`)."""
    entries = []
    for index, item in enumerate(items):
        name = None
        if isinstance(item, dict):
            name = item.get("name") or (item.get("id") if key == "flows" else None)
        entries.append(SectionEntry(key, None if name is None else str(name), item, file, doc,
                                    (key, index)))
    return entries


def yaml_files(directory: Path) -> list[Path]:
    """The YAML files under `directory` (recursive), sorted by relative path."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file()]
    return sorted(found, key=lambda p: p.relative_to(directory).as_posix())


def _build(root: Path, bot_doc: Any, loader: _Loader) -> BotDefinition:
    raw = {k: v for k, v in to_plain(bot_doc).items() if k not in ("intents", "entities")}
    raw.update({key: section.value for key, section in loader.sections.items()})
    raw["workflows"] = loader.workflows
    intents = tuple(Intent(name, tuple(acc.examples)) for name, acc in loader.intents.items())
    return BotDefinition(
        name=str(bot_doc["name"]),
        path=root,
        description=str(bot_doc.get("description", "")),
        nlu=nlu_settings(to_plain(bot_doc.get("nlu") or {}), loader.languages[0]),
        intents=intents,
        entities=dict(loader.entities),
        raw=raw,
        conversation=loader.conversation,
        knowledge=knowledge_settings(to_plain(bot_doc["knowledge"]))
        if isinstance(bot_doc.get("knowledge"), dict) else None,
        warnings=tuple(loader.warnings),
        languages=loader.languages,
    )


def known_timezone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def nlu_settings(nlu: dict[str, Any], language: str = "en") -> NluSettings:
    """NluSettings from a validated `nlu:` mapping (absent keys take the defaults)."""
    defaults = NluSettings()
    threshold = nlu.get("confidence_threshold")
    rate = nlu.get("learning_rate")
    return NluSettings(
        language=language,
        base_model=nlu.get("base_model"),
        confidence_threshold=float(threshold) if threshold is not None else None,
        out_of_scope_intent=str(nlu.get("out_of_scope_intent", defaults.out_of_scope_intent)),
        max_length=int(nlu.get("max_length", defaults.max_length)),
        epochs=nlu.get("epochs"),
        learning_rate=float(rate) if rate is not None else None,
        batch_size=nlu.get("batch_size"),
        seed=nlu.get("seed"),
    )


def knowledge_settings(section: dict[str, Any]) -> KnowledgeSettings:
    """KnowledgeSettings from a validated `knowledge:` mapping (absent keys: the defaults)."""
    defaults = KnowledgeSettings()
    faq_intent = section.get("faq_intent", defaults.faq_intent)
    return KnowledgeSettings(
        answer_threshold=float(section.get("answer_threshold", defaults.answer_threshold)),
        faq_intent=None if faq_intent is None else str(faq_intent),
        on_out_of_scope=bool(section.get("on_out_of_scope", defaults.on_out_of_scope)),
        max_sentences=int(section.get("max_sentences", defaults.max_sentences)),
        k=int(section.get("k", defaults.k)),
        answer_intents=tuple(str(i) for i in section.get("answer_intents") or ()),
        intent_margin=float(section.get("intent_margin", defaults.intent_margin)),
        score_calibration=_score_calibration(section.get("score_calibration")),
    )


def _score_calibration(raw: Any) -> tuple[float, float] | None:
    if not isinstance(raw, dict):
        return None
    return float(raw["slope"]), float(raw["intercept"])
