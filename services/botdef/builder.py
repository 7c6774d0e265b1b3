"""Building the typed conversation: `build_conversation` checks the merged entries of the
`slots`, `responses` and `flows` sections (JSON Schema per entry, then references, conditions
and templates) and returns the `ConversationDefinition` the dialogue engine runs."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.botdef import conversation as typed
from services.botdef.conversation import (
    BUILTIN_RESPONSES,
    CONDITION_OPS,
    DEFAULT_MAX_ATTEMPTS,
    SENTIMENT_SLOTS,
    TYPE_ALIASES,
    humanize,
    parse_payload,
)
from services.botdef.expressions import ExpressionError
from services.botdef.expressions import parse as parse_expression
from services.botdef.expressions import references as expression_references
from services.botdef.model import DefinitionIssue, EntityDef
from services.botdef.schema import ENTRY_SCHEMAS, LANGUAGE_PATTERN, entry_issues
from services.botdef.slotrules import format_number, value_problem
from services.botdef.templates import template_environment, template_problems
from services.botdef.yamlio import PathPart, field_path, line_of
from services.common.regexsafety import pattern_issue

_LANGUAGE_KEY = re.compile(LANGUAGE_PATTERN)
STEP_KINDS = ("say", "collect", "set", "branch", "call", "workflow", "search", "handoff", "end")


@dataclass(frozen=True)
class SectionEntry:
    """One entry of a conversation section as written in a file, before merging.

    `prefix` is its path in the file's document `doc` (`("flows", "transfer")` for a
    mapping entry, `("flows", 2)` for a list item); `name` is the key or the item's
    `name` (flows also accept `id`), None when a list item has none.
    """

    section: str
    name: str | None
    value: Any
    file: str
    doc: Any
    prefix: tuple[PathPart, ...]

    def issue(self, path: Sequence[PathPart], message: str) -> DefinitionIssue:
        full = [*self.prefix, *path]
        return DefinitionIssue(self.file, line_of(self.doc, full), field_path(full), message)

    def where(self) -> str:
        return f"{self.file}:{line_of(self.doc, self.prefix)}"


def build_conversation(
    entries: Sequence[SectionEntry],
    *,
    intents: Collection[str] | None,
    entities: Mapping[str, EntityDef] | None,
    workflows: Collection[str] = (),
    languages: Sequence[str] = ("en",),
) -> tuple[typed.ConversationDefinition, list[DefinitionIssue]]:
    """The typed conversation of the merged entries, and every problem found.

    `intents` / `entities`: the bot's, or None when they are incomplete (the checks of
    references to them are then skipped). Workflow names are checked only when the bot has
    some workflows. References are checked only when every entry passed its schema.
    `languages`: the bot's languages, the default first (a message written per language
    must have the default one and only these; one missing another declared language is a
    warning, `conversation_warnings`, and says the default language's text there).
    """
    return build_conversation_checked(entries, intents=intents, entities=entities,
                                      workflows=workflows, languages=languages)[:2]


def build_conversation_checked(
    entries: Sequence[SectionEntry],
    *,
    intents: Collection[str] | None,
    entities: Mapping[str, EntityDef] | None,
    workflows: Collection[str] = (),
    languages: Sequence[str] = ("en",),
) -> tuple[typed.ConversationDefinition, list[DefinitionIssue], list[DefinitionIssue]]:
    """`build_conversation`, plus the warnings (missing translations)."""
    builder = _Builder(intents, entities, workflows, tuple(languages) or ("en",))
    return builder.build(entries), builder.issues, builder.warnings


class _Builder:
    def __init__(
        self,
        intents: Collection[str] | None,
        entities: Mapping[str, EntityDef] | None,
        workflows: Collection[str],
        languages: tuple[str, ...] = ("en",),
    ) -> None:
        self.languages = languages
        self.warnings: list[DefinitionIssue] = []
        self.intents = intents
        self.entities = entities
        self.workflows = workflows
        self.issues: list[DefinitionIssue] = []
        self.env = template_environment()
        self.slots: dict[str, typed.SlotDef] = {}
        self.response_names: set[str] = set()
        self.flow_names: set[str] = set()
        self.calls: dict[str, list[tuple[str, SectionEntry, list[PathPart]]]] = {}

    def build(self, entries: Sequence[SectionEntry]) -> typed.ConversationDefinition:
        named = self._named(entries)
        if self.issues:
            return typed.ConversationDefinition()
        self.response_names = {name for name, _ in named["responses"]}
        self.flow_names = {name for name, _ in named["flows"]}
        for name, entry in named["slots"]:
            if name in SENTIMENT_SLOTS:
                self.add(entry, [], f"slot name {name!r} is reserved: the built-in slot set "
                                    "from the sentiment of the user's last message")
        builtin = _sentiment_slots()
        self.slots = {**builtin, **{name: typed.SlotDef(name) for name, _ in named["slots"]}}
        self.slots = {**builtin, **{name: self._slot(name, entry)
                                    for name, entry in named["slots"]}}
        responses = {name: self._response(name, entry) for name, entry in named["responses"]}
        flows = {name: self._flow(name, entry) for name, entry in named["flows"]}
        self._check_cycles()
        return typed.ConversationDefinition(self.slots, responses, flows, self._triggers(named))

    def add(self, entry: SectionEntry, path: Sequence[PathPart], message: str) -> None:
        self.issues.append(entry.issue(path, message))

    # -- names and schema ------------------------------------------------------------------

    def _named(self, entries: Sequence[SectionEntry]) -> dict[str, list[tuple[str, SectionEntry]]]:
        named: dict[str, list[tuple[str, SectionEntry]]] = {s: [] for s in ENTRY_SCHEMAS}
        first: dict[tuple[str, str], SectionEntry] = {}
        for entry in entries:
            problems = entry_issues(
                entry.value, entry.doc, entry.file, entry.prefix, ENTRY_SCHEMAS[entry.section]
            )
            self.issues.extend(problems)
            if problems:
                continue
            if entry.name is None:
                self.add(entry, [], f"an item of the `{entry.section}` list needs a `name`")
                continue
            seen = first.setdefault((entry.section, entry.name), entry)
            if seen is not entry:
                what = entry.section.rstrip("s")
                self.add(entry, [], f"duplicate {what} {entry.name!r} (first at {seen.where()})")
                continue
            named[entry.section].append((entry.name, entry))
        return named

    # -- slots -------------------------------------------------------------------------------

    def _slot(self, name: str, entry: SectionEntry) -> typed.SlotDef:
        raw = entry.value if isinstance(entry.value, dict) else {"type": entry.value}
        slot_type = TYPE_ALIASES.get(str(raw.get("type", "text")), str(raw.get("type", "text")))
        slot = typed.SlotDef(
            name=name,
            type=slot_type,
            entity=raw.get("entity"),
            validation=self._validation(entry, [], raw),
            initial=raw.get("initial"),
            ask=self._message(entry, ["ask"], raw.get("ask")),
            invalid=self._message(entry, ["invalid"], raw.get("invalid")),
            label=self._in_languages(entry, ["label"], raw.get("label")) or humanize(name),
            labels=self._translations(raw.get("label")),
            description=str(raw.get("description", "")),
            from_text=bool(raw.get("from_text", True)),
            keep=bool(raw.get("keep", False)),
            lookup_only=bool(raw.get("lookup_only", True)),
            fuzzy=float(raw.get("fuzzy", 0.8)),
            currencies=tuple(str(c).upper() for c in raw.get("currencies", ())),
        )
        self._check_slot(entry, slot, raw)
        return slot

    def _check_slot(self, entry: SectionEntry, slot: typed.SlotDef, raw: dict[str, Any]) -> None:
        if slot.type == "categorical" and not slot.validation.choices:
            self.add(entry, [], "a categorical slot needs `choices`")
        if slot.type == "entity" and slot.entity is None:
            self.add(entry, [], "an entity slot needs `entity` (the entity that fills it)")
        entities = self.entities
        if slot.entity is not None and entities is not None and slot.entity not in entities:
            known = ", ".join(sorted(entities)) or "none"
            self.add(entry, ["entity"], f"unknown entity {slot.entity!r} (declared: {known})")
        ranged = [key for key in ("min", "max", "gt", "lt", "currencies") if key in raw]
        if ranged and slot.type != "number":
            what = "currencies apply" if ranged[0] == "currencies" else "a range applies"
            self.add(entry, [ranged[0]], f"{what} to number slots only")
        problem = value_problem(slot, slot.initial)
        if problem is not None:
            self.add(entry, ["initial"], f"invalid initial value {slot.initial!r}: {problem}")

    def _validation(
        self, entry: SectionEntry, path: list[PathPart], raw: dict[str, Any]
    ) -> typed.Validation:
        regex = raw.get("regex")
        issue = None if regex is None else pattern_issue(regex)  # RE2: no ReDoS
        if issue is not None:
            self.add(entry, [*path, "regex"], issue)
            regex = None
        rules = typed.Validation(
            regex=regex,
            choices=tuple(raw.get("choices") or ()),
            min=_number(raw.get("min")),
            max=_number(raw.get("max")),
            gt=_number(raw.get("gt")),
            lt=_number(raw.get("lt")),
        )
        low = rules.min if rules.min is not None else rules.gt
        high = rules.max if rules.max is not None else rules.lt
        if low is not None and high is not None and low > high:
            self.add(entry, path, f"empty range: {format_number(low)} > {format_number(high)}")
        return rules

    # -- responses and templates -------------------------------------------------------------

    def _response(self, name: str, entry: SectionEntry) -> typed.ResponseDef:
        raw = entry.value
        per_language = self._per_language(entry, [], raw)
        if per_language is not None:
            default, *others = [
                (code, self._variations(entry, [code], value)) for code, value in per_language
            ]
            return typed.ResponseDef(name, default[1], tuple(others))
        return typed.ResponseDef(name, self._variations(entry, [], raw))

    def _variations(
        self, entry: SectionEntry, where: list[PathPart], raw: Any
    ) -> tuple[typed.Variation, ...]:
        if isinstance(raw, dict) and "variations" in raw:
            if "text" in raw or "buttons" in raw:
                self.add(entry, [], "give either `text` (and `buttons`) or `variations`")
            items: list[tuple[list[PathPart], Any]] = [
                ([*where, "variations", i], v) for i, v in enumerate(raw["variations"])
            ]
        elif isinstance(raw, list):
            items = [([*where, i], v) for i, v in enumerate(raw)]
        elif isinstance(raw, dict) and "text" not in raw:
            self.add(entry, where, "a response needs `text` or `variations`")
            items = []
        else:
            items = [(where, raw)]
        return tuple(self._variation(entry, path, value) for path, value in items)

    # -- languages ---------------------------------------------------------------------------

    def _per_language(
        self, entry: SectionEntry, path: list[PathPart], raw: Any
    ) -> list[tuple[str, Any]] | None:
        """A value written per language (`{en: ..., zh: ...}`): its (language, value) pairs,
        the default language first; None when `raw` is not written so. Checks that the
        languages are the bot's and that the default one is there (the others missing: a
        warning)."""
        if not isinstance(raw, dict):
            return None
        codes = [key for key in raw if _LANGUAGE_KEY.fullmatch(str(key))]
        if not codes:
            return None
        default = self.languages[0]
        declared = ", ".join(self.languages)
        others = [key for key in raw if key not in codes]
        if others:
            self.add(entry, path, f"give either one message per language ({', '.join(codes)})"
                                  f" or {', '.join(map(str, others))}, not both")
        for code in codes:
            if code not in self.languages:
                self.add(entry, [*path, code], f"language {code!r} is not one of the bot's "
                                               f"languages ({declared}; bot.yml `languages`)")
        if default not in codes:
            self.add(entry, path, f"no {default!r} text: a message written per language needs "
                                  f"the bot's default language {default!r}")
            return [(default, raw[codes[0]])]
        missing = [code for code in self.languages if code not in codes]
        if missing:
            self.warnings.append(entry.issue(
                path, f"no {', '.join(missing)} translation: the {default} text is said in "
                      f"{', '.join(missing)} conversations"))
        ordered = [default, *(c for c in codes if c != default and c in self.languages)]
        return [(code, raw[code]) for code in ordered]

    def _in_languages(self, entry: SectionEntry, path: list[PathPart], raw: Any) -> str | None:
        """A title or label: a string, or the default language's of `{en: ..., zh: ...}`."""
        per_language = self._per_language(entry, path, raw)
        if per_language is not None:
            return str(per_language[0][1])
        return None if raw is None else str(raw)

    def _translations(self, raw: Any) -> typed.Translations:
        if not isinstance(raw, dict):
            return ()
        return tuple((str(code), str(text)) for code, text in raw.items()
                     if code != self.languages[0] and code in self.languages)

    def _variation(self, entry: SectionEntry, path: list[PathPart], raw: Any) -> typed.Variation:
        text_path = path if isinstance(raw, str) else [*path, "text"]
        if isinstance(raw, str):
            raw = {"text": raw}
        self._check_template(entry, text_path, str(raw["text"]))
        buttons = []
        for index, button in enumerate(raw.get("buttons") or []):
            where = [*path, "buttons", index]
            self._check_template(entry, [*where, "title"], str(button["title"]))
            self._check_payload(entry, [*where, "payload"], str(button["payload"]))
            buttons.append(typed.ButtonDef(str(button["title"]), str(button["payload"])))
        return typed.Variation(str(raw["text"]), tuple(buttons))

    def _check_template(self, entry: SectionEntry, path: list[PathPart], source: str) -> None:
        for problem in template_problems(self.env, source, set(self.slots)):
            self.add(entry, path, problem)

    def _check_payload(self, entry: SectionEntry, path: list[PathPart], payload: str) -> None:
        if not payload.startswith("/"):
            return
        parsed = parse_payload(payload)
        if parsed is None:
            self.add(entry, path, f"malformed payload {payload!r} (use /intent or "
                                  '/intent{"entity": "value"})')
        elif self.intents is not None and parsed[0] not in self.intents:
            self.add(entry, path, f"payload names unknown intent {parsed[0]!r}")

    def _message(
        self, entry: SectionEntry, path: list[PathPart], raw: Any
    ) -> typed.MessageRef | None:
        """A response name (defined or built in; an unknown `utter_*` name is an error),
        else inline template text; or an inline `{text, buttons}` mapping."""
        if raw is None or isinstance(raw, bool):
            return None
        per_language = self._per_language(entry, path, raw)
        if per_language is not None:
            variations = [(code, self._variation(entry, [*path, code], value))
                          for code, value in per_language]
            return typed.MessageRef(inline=variations[0][1], translations=tuple(variations[1:]))
        if isinstance(raw, dict):
            if "text" not in raw:
                self.add(entry, path, "a message needs `text` (or one message per language: "
                                      "{en: ..., zh: ...})")
                return None
            return typed.MessageRef(inline=self._variation(entry, path, raw))
        text = str(raw)
        if text in self.response_names or text in BUILTIN_RESPONSES:
            return typed.MessageRef(response=text)
        if re.fullmatch(r"utter_\w+", text):
            self.add(entry, path, f"unknown response {text!r}")
            return None
        self._check_template(entry, path, text)
        return typed.MessageRef(inline=typed.Variation(text))

    # -- flows -------------------------------------------------------------------------------

    def _flow(self, name: str, entry: SectionEntry) -> typed.FlowDef:
        raw = entry.value
        trigger = raw.get("trigger") or []
        triggers = tuple([trigger] if isinstance(trigger, str) else trigger)
        if self.intents is not None:
            for index, intent in enumerate(triggers):
                if intent not in self.intents:
                    where: list[PathPart] = ["trigger"]
                    if not isinstance(trigger, str):
                        where.append(index)
                    self.add(entry, where, f"unknown intent {intent!r}")
        steps = self._steps(entry, name, ["steps"], raw.get("steps") or [])
        if not raw.get("steps"):
            self.add(entry, [], f"flow {name!r} has no steps")
        title = self._in_languages(entry, ["title"], raw.get("title"))
        return typed.FlowDef(name, title or humanize(name).capitalize(),
                             str(raw.get("description", "")), triggers, steps,
                             titles=self._translations(raw.get("title")))

    def _triggers(self, named: dict[str, list[tuple[str, SectionEntry]]]) -> dict[str, str]:
        triggers: dict[str, str] = {}
        for name, entry in named["flows"]:
            trigger = entry.value.get("trigger") or []
            for intent in [trigger] if isinstance(trigger, str) else trigger:
                other = triggers.setdefault(intent, name)
                if other != name:
                    self.add(entry, ["trigger"], f"intent {intent!r} already triggers flow "
                                                 f"{other!r}")
        return triggers

    def _steps(
        self, entry: SectionEntry, flow: str, path: list[PathPart], raw: list[Any]
    ) -> tuple[typed.Step, ...]:
        steps = (self._step(entry, flow, [*path, i], item) for i, item in enumerate(raw))
        return tuple(step for step in steps if step is not None)

    def _step(
        self, entry: SectionEntry, flow: str, path: list[PathPart], raw: Any
    ) -> typed.Step | None:
        if isinstance(raw, str):
            if raw in ("end", "handoff"):
                return typed.End() if raw == "end" else typed.Handoff()
            message = self._message(entry, path, raw)
            return typed.Say(message) if message is not None else None
        kind, value = next(iter(raw.items()))
        where = [*path, kind]
        if kind == "say":
            message = self._message(entry, where, value)
            return typed.Say(message) if message is not None else None
        if kind == "collect":
            return self._collect(entry, where, value)
        if kind == "set":
            return self._set(entry, where, value)
        if kind == "branch":
            return self._branch(entry, flow, where, value)
        if kind == "call":
            return self._call(entry, flow, where, str(value))
        if kind == "workflow":
            return self._workflow(entry, where, value)
        if kind == "search":
            return self._search(entry, where, value)
        if kind == "handoff":
            return typed.Handoff(self._message(entry, where, value))
        return typed.End()

    def _slot_ref(self, entry: SectionEntry, path: list[PathPart], name: str, *,
                  writes: bool = False) -> bool:
        if writes and name in SENTIMENT_SLOTS:
            self.add(entry, path, f"slot {name!r} is built in and read-only (set from the "
                                  "sentiment of the user's last message)")
            return False
        if name in self.slots:
            return True
        known = ", ".join(sorted(n for n in self.slots if n not in SENTIMENT_SLOTS)) or "none"
        self.add(entry, path, f"unknown slot {name!r} (defined: {known}; built in: "
                              f"{', '.join(SENTIMENT_SLOTS)})")
        return False

    def _collect(self, entry: SectionEntry, path: list[PathPart], raw: Any) -> typed.Collect | None:
        raw = {"slot": raw} if isinstance(raw, str) else raw
        name = str(raw["slot"])
        if not self._slot_ref(entry, [*path, "slot"] if len(raw) > 1 else path, name, writes=True):
            return None
        slot = self.slots[name]
        ask = self._message(entry, [*path, "ask"], raw.get("ask")) or slot.ask
        if ask is None and f"utter_ask_{name}" in self.response_names:
            ask = typed.MessageRef(response=f"utter_ask_{name}")
        if ask is None:
            self.add(entry, path, f"no question to ask for slot {name!r}: give `ask` here or "
                                  f"on the slot, or define the response 'utter_ask_{name}'")
            return None
        override = raw.get("validation")
        return typed.Collect(
            slot=name,
            ask=ask,
            invalid=self._message(entry, [*path, "invalid"], raw.get("invalid")) or slot.invalid,
            fallback=self._message(entry, [*path, "fallback"], raw.get("fallback")),
            max_attempts=int(raw.get("max_attempts", DEFAULT_MAX_ATTEMPTS)),
            validation=None if override is None else self._validation(
                entry, [*path, "validation"], override),
        )

    def _set(
        self, entry: SectionEntry, path: list[PathPart], raw: dict[str, Any]
    ) -> typed.SetSlots:
        values: list[tuple[str, typed.SlotValue]] = []
        for name, value in raw.items():
            if not self._slot_ref(entry, [*path, name], name, writes=True):
                continue
            problem = value_problem(self.slots[name], value)
            if problem is not None:
                self.add(entry, [*path, name], f"invalid value {value!r}: {problem}")
            values.append((name, value))
        return typed.SetSlots(tuple(values))

    def _branch(
        self, entry: SectionEntry, flow: str, path: list[PathPart], raw: list[dict[str, Any]]
    ) -> typed.Branch:
        cases: list[tuple[typed.Condition, tuple[typed.Step, ...]]] = []
        otherwise: tuple[typed.Step, ...] = ()
        for index, case in enumerate(raw):
            where = [*path, index]
            if "else" in case:
                if len(case) > 1 or index != len(raw) - 1:
                    self.add(entry, where, "`else` must be alone, in the last case")
                otherwise = self._steps(entry, flow, [*where, "else"], case["else"])
                continue
            if "if" not in case or "then" not in case:
                self.add(entry, where, "a case needs `if` and `then` (or is a last `else`)")
                continue
            condition = self._condition(entry, [*where, "if"], case["if"])
            steps = self._steps(entry, flow, [*where, "then"], case["then"])
            if condition is not None:
                cases.append((condition, steps))
        return typed.Branch(tuple(cases), otherwise)

    def _condition(
        self, entry: SectionEntry, path: list[PathPart], raw: dict[str, Any] | str
    ) -> typed.Condition | None:
        if isinstance(raw, str):
            return self._expression(entry, path, raw)
        combinators = [key for key in ("all", "any", "not") if key in raw]
        if combinators:
            if len(raw) > 1:
                self.add(entry, path, f"`{combinators[0]}` must be the only key of a condition")
                return None
            op = combinators[0]
            items = [raw[op]] if op == "not" else raw[op]
            where = [[*path, op]] if op == "not" else [[*path, op, i] for i in range(len(items))]
            children = [self._condition(entry, w, c) for w, c in zip(where, items, strict=True)]
            if any(child is None for child in children):
                return None
            return typed.Condition(op, children=tuple(c for c in children if c is not None))
        return self._comparison(entry, path, raw)

    def _expression(
        self, entry: SectionEntry, path: list[PathPart], source: str
    ) -> typed.Condition | None:
        """`if: "slots.amount > 100 and slots.confirmed"`: the workflow expression language,
        reading only `slots.NAME` of declared slots."""
        try:
            node = parse_expression(source)
        except ExpressionError as exc:
            self.add(entry, path, f"invalid expression {source!r}: {exc}")
            return None
        names: list[str] = []
        for reference in expression_references(node):
            if reference[0] != "slots" or len(reference) < 2:
                self.add(entry, path, f"an `if` expression reads slots as `slots.NAME`, not "
                                      f"{'.'.join(reference)!r}")
                return None
            if not self._slot_ref(entry, path, reference[1]):
                return None
            names.append(reference[1])
        return typed.Condition("expression", value=node, reads=tuple(dict.fromkeys(names)))

    def _comparison(
        self, entry: SectionEntry, path: list[PathPart], raw: dict[str, Any]
    ) -> typed.Condition | None:
        ops = [key for key in CONDITION_OPS if key in raw]
        if "slot" not in raw or len(ops) != 1:
            self.add(entry, path, "a condition needs `slot` and exactly one of: "
                                  + ", ".join(CONDITION_OPS) + " (or all / any / not)")
            return None
        if not self._slot_ref(entry, [*path, "slot"], str(raw["slot"])):
            return None
        slot = self.slots[str(raw["slot"])]
        op, value = ops[0], raw[ops[0]]
        if op in ("equals", "not_equals", "in") and slot.type == "categorical":
            for item in value if op == "in" else [value]:
                if value_problem(slot, item) is not None:
                    self.add(entry, [*path, op], f"{item!r} is not a choice of slot {slot.name!r}")
        return typed.Condition(op, slot.name, value)

    def _call(
        self, entry: SectionEntry, flow: str, path: list[PathPart], target: str
    ) -> typed.Call:
        if target not in self.flow_names:
            known = ", ".join(sorted(self.flow_names))
            self.add(entry, path, f"unknown flow {target!r} (defined: {known})")
        else:
            self.calls.setdefault(flow, []).append((target, entry, path))
        return typed.Call(target)

    def _workflow(self, entry: SectionEntry, path: list[PathPart], raw: Any) -> typed.RunWorkflow:
        raw = {"name": raw} if isinstance(raw, str) else raw
        name = str(raw["name"])
        if self.workflows and name not in self.workflows:
            known = ", ".join(sorted(self.workflows))
            where = [*path, "name"] if len(raw) > 1 else path
            self.add(entry, where, f"unknown workflow {name!r} (defined: {known})")
        save = []
        for output, slot in (raw.get("save") or {}).items():
            if self._slot_ref(entry, [*path, "save", output], slot, writes=True):
                save.append((str(output), str(slot)))
        return typed.RunWorkflow(
            name=name,
            inputs=self._inputs(entry, [*path, "inputs"], raw.get("inputs") or []),
            save=tuple(save),
            started=self._message(entry, [*path, "started"], raw.get("started")),
            on_success=self._message(entry, [*path, "on_success"], raw.get("on_success")),
            on_failure=self._message(entry, [*path, "on_failure"], raw.get("on_failure")),
        )

    def _search(self, entry: SectionEntry, path: list[PathPart], raw: Any) -> typed.Search:
        """`search: {}` / `search:` (the message's text), `search: QUERY` or
        `search: {query, not_found, save}`."""
        where = path if isinstance(raw, str) else [*path, "query"]
        raw = {"query": raw} if isinstance(raw, str) else raw or {}
        query = raw.get("query")
        if query is not None:
            self._check_template(entry, where, str(query))
        save = raw.get("save")
        known = save is not None and self._slot_ref(entry, [*path, "save"], save, writes=True)
        if known and self.slots[save].type != "boolean":
            self.add(entry, [*path, "save"], f"slot {save!r} must be a boolean slot "
                                             "(it is set to whether an answer was found)")
        return typed.Search(
            query=None if query is None else str(query),
            not_found=self._message(entry, [*path, "not_found"], raw.get("not_found")),
            save=None if save is None else str(save),
        )

    def _inputs(
        self, entry: SectionEntry, path: list[PathPart], raw: list[str] | dict[str, Any]
    ) -> tuple[typed.WorkflowInput, ...]:
        pairs = [(s, s, [*path, i]) for i, s in enumerate(raw)] if isinstance(raw, list) else [
            (k, v, [*path, k]) for k, v in raw.items()
        ]
        inputs = []
        for name, source, where in pairs:
            if isinstance(source, dict):
                inputs.append(typed.WorkflowInput(str(name), value=source["value"]))
            elif self._slot_ref(entry, where, str(source)):
                inputs.append(typed.WorkflowInput(str(name), slot=str(source)))
        return tuple(inputs)

    def _check_cycles(self) -> None:
        for flow, calls in self.calls.items():
            for target, entry, path in calls:
                chain = self._reaches(target, flow, [flow, target], set())
                if chain is not None:
                    self.add(entry, path, "call cycle: " + " -> ".join(chain))

    def _reaches(
        self, start: str, goal: str, chain: list[str], seen: set[str]
    ) -> list[str] | None:
        if start == goal:
            return chain
        seen.add(start)
        for target, _, _ in self.calls.get(start, []):
            if target not in seen:
                found = self._reaches(target, goal, [*chain, target], seen)
                if found is not None:
                    return found
        return None


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _sentiment_slots() -> dict[str, typed.SlotDef]:
    """The built-in `sentiment` and `sentiment_score` slots (SENTIMENT_SLOTS)."""
    return {
        "sentiment": typed.SlotDef("sentiment", type="text", from_text=False, keep=True,
                             description="sentiment of the user's last message: negative, "
                                         "neutral or positive"),
        "sentiment_score": typed.SlotDef("sentiment_score", type="number", from_text=False,
                                   keep=True, description="probability of that sentiment"),
    }
