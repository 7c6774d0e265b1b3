"""The conversation part of a bot definition: slots, responses and flows.

`build_conversation` checks the merged entries of the `slots`, `responses` and `flows`
sections (JSON Schema per entry, then references and templates) and returns the typed
`ConversationDefinition` that the dialogue engine runs. The format is documented in
docs/bot-definition.md ("Conversation").
"""

from __future__ import annotations

import datetime
import functools
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from jinja2 import ChainableUndefined, Undefined, nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from services.botdef.expressions import ExpressionError
from services.botdef.expressions import money as format_money
from services.botdef.expressions import parse as parse_expression
from services.botdef.expressions import references as expression_references
from services.botdef.model import DefinitionIssue, EntityDef
from services.botdef.schema import DATE_TYPES, ENTRY_SCHEMAS, INTENT_NAME_PATTERN, entry_issues
from services.botdef.yamlio import PathPart, field_path, line_of
from services.common.pii import redact
from services.common.regexsafety import compile_bot_regex, pattern_issue

SlotValue = str | int | float | bool | None

TYPE_ALIASES: Mapping[str, str] = MappingProxyType(
    {"float": "number", "int": "number", "integer": "number", "bool": "boolean",
     "string": "text", "str": "text"}
)
TEMPLATE_VARIABLES = frozenset({"slots", "slot", "workflow"})
"""What a template may read: `slots.NAME`, `slot` (name, label, value, problem: the slot a
question, a re-ask or a correction is about) and `workflow` (name, status, error, outputs)."""
DEFAULT_MAX_ATTEMPTS = 3
MAX_EXPONENT = 64
MAX_PRODUCT_SIZE = 100_000
MAX_CALL_NUMBER = 10_000
"""The largest number a template may pass to a call or filter (range, widths, counts)."""
UNSAFE_FILTERS = ("format", "center", "indent", "wordwrap")
"""Filters left out of templates: they build strings from widths or format specs."""
STEP_KINDS = ("say", "collect", "set", "branch", "call", "workflow", "search", "handoff", "end")
CONDITION_OPS = ("equals", "not_equals", "in", "gt", "lt", "gte", "lte", "present")
_PAYLOAD = re.compile(r"^/(" + INTENT_NAME_PATTERN[1:-1] + r")(\{.*\})?\s*$", re.DOTALL)

SENTIMENT_SLOTS = ("sentiment", "sentiment_score")
"""Built-in slots every bot has, set on each user message from the NLU's sentiment model:
`sentiment` (negative, neutral or positive; unset without a sentiment model) and
`sentiment_score` (its probability). Read-only: a bot may not define slots of these names."""

BUILTIN_RESPONSES: Mapping[str, str] = MappingProxyType({
    "utter_greet": "Hello! How can I help you today?",
    "utter_goodbye": "Goodbye, have a nice day!",
    "utter_thanks": "You're welcome!",
    "utter_help": "Here is what I can help you with:",
    "utter_default": "Sorry, I didn't understand that. Could you rephrase it?",
    "utter_clarify": "Sorry, I'm not sure I understood. Did you mean one of these?",
    "utter_out_of_scope": "Sorry, I can't help with that. Maybe one of these?",
    "utter_invalid": "Sorry, that doesn't look like a valid {{ slot.label }}"
                     "{% if slot.problem %} ({{ slot.problem }}){% endif %}.",
    "utter_collect_failed": "Sorry, I still didn't get that, so let's leave it there. "
                            "What else can I do for you?",
    "utter_corrected": "OK, I've changed the {{ slot.label }} to {{ slot.value }}.",
    "utter_cancelled": "OK, I've cancelled that.",
    "utter_nothing_to_cancel": "OK. What can I do for you?",
    "utter_handoff": "Let me connect you with a human agent. Please wait a moment.",
    "utter_handoff_released": "You're back with the assistant. How can I help?",
    "utter_nlu_unavailable": "Sorry, I'm having trouble understanding right now. "
                             "Please try again in a moment.",
    "utter_workflow_pending": "I'm still working on your previous request, one moment please.",
    "utter_workflow_failed": "Sorry, something went wrong and I couldn't complete that. "
                             "Please try again later.",
})
"""Responses every bot has; a bot's own response of the same name replaces one."""


# -- the typed definition ---------------------------------------------------------------------


@dataclass(frozen=True)
class ButtonDef:
    """A quick reply: `title` is shown; `payload` is sent back as the user's message."""

    title: str
    payload: str


@dataclass(frozen=True)
class Variation:
    """One way of saying a response: a template `text` and quick-reply buttons."""

    text: str
    buttons: tuple[ButtonDef, ...] = ()


@dataclass(frozen=True)
class ResponseDef:
    name: str
    variations: tuple[Variation, ...]


@dataclass(frozen=True)
class MessageRef:
    """What a step says: a response by name, or an inline variation."""

    response: str | None = None
    inline: Variation | None = None


@dataclass(frozen=True)
class Validation:
    """Rules a slot value must satisfy (all that are set)."""

    regex: str | None = None
    choices: tuple[str | int | float, ...] = ()
    min: float | None = None
    max: float | None = None
    gt: float | None = None
    lt: float | None = None

    def merged(self, override: Validation | None) -> Validation:
        """These rules with those set in `override` replacing them."""
        if override is None:
            return self
        return Validation(
            regex=override.regex if override.regex is not None else self.regex,
            choices=override.choices or self.choices,
            min=override.min if override.min is not None else self.min,
            max=override.max if override.max is not None else self.max,
            gt=override.gt if override.gt is not None else self.gt,
            lt=override.lt if override.lt is not None else self.lt,
        )


@dataclass(frozen=True)
class SlotDef:
    """A slot: its type (text, number, boolean, categorical, entity), how it is filled
    (`entity`: from that entity; `from_text`: from the raw answer to its question) and its
    validation. `keep`: not reset when a flow that uses it starts. `label` (default: the
    name in words) names it in messages.

    A slot whose entity has a lookup list takes only the list's values (and the entity's
    synonyms) unless `lookup_only` is false; a value at least `fuzzy` similar to one of them
    (0..1, case and accents ignored; 1: exact only) is taken as that value. `currencies`
    (number slots): the currencies an amount may be in, by ISO code; an amount naming
    another currency is invalid (never converted)."""

    name: str
    type: str = "text"
    entity: str | None = None
    validation: Validation = Validation()
    initial: SlotValue = None
    ask: MessageRef | None = None
    invalid: MessageRef | None = None
    label: str = ""
    description: str = ""
    from_text: bool = True
    keep: bool = False
    lookup_only: bool = True
    fuzzy: float = 0.8
    currencies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", humanize(self.name))


@dataclass(frozen=True)
class Condition:
    """`op` is one of CONDITION_OPS on `slot` with `value`, or all/any/not of `children`, or
    "expression": `value` is the parsed expression (services/botdef/expressions.py) over
    `slots`, reading the slots in `reads`."""

    op: str
    slot: str = ""
    value: Any = None
    children: tuple[Condition, ...] = ()
    reads: tuple[str, ...] = ()


@dataclass(frozen=True)
class Say:
    message: MessageRef


@dataclass(frozen=True)
class Collect:
    slot: str
    ask: MessageRef
    invalid: MessageRef | None = None
    fallback: MessageRef | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    validation: Validation | None = None


@dataclass(frozen=True)
class SetSlots:
    values: tuple[tuple[str, SlotValue], ...]


@dataclass(frozen=True)
class Branch:
    cases: tuple[tuple[Condition, tuple[Step, ...]], ...]
    otherwise: tuple[Step, ...] = ()


@dataclass(frozen=True)
class Call:
    flow: str


@dataclass(frozen=True)
class WorkflowInput:
    """An input of a workflow: the value of `slot`, or the literal `value` when slot is None."""

    name: str
    slot: str | None = None
    value: Any = None


@dataclass(frozen=True)
class RunWorkflow:
    name: str
    inputs: tuple[WorkflowInput, ...] = ()
    save: tuple[tuple[str, str], ...] = ()
    started: MessageRef | None = None
    on_success: MessageRef | None = None
    on_failure: MessageRef | None = None


@dataclass(frozen=True)
class Search:
    """Answer from the knowledge base. `query`: a template (None: the text of the message
    being handled); `not_found`: said when nothing scores above the answer threshold;
    `save`: a boolean slot set to whether an answer was given."""

    query: str | None = None
    not_found: MessageRef | None = None
    save: str | None = None


@dataclass(frozen=True)
class Handoff:
    message: MessageRef | None = None


@dataclass(frozen=True)
class End:
    pass


Step = Say | Collect | SetSlots | Branch | Call | RunWorkflow | Search | Handoff | End


@dataclass(frozen=True)
class FlowDef:
    name: str
    title: str
    description: str = ""
    triggers: tuple[str, ...] = ()
    steps: tuple[Step, ...] = ()


@dataclass(frozen=True)
class ConversationDefinition:
    """The slots, responses and flows of a bot; `triggers` maps an intent to its flow."""

    slots: Mapping[str, SlotDef] = field(default_factory=dict)
    responses: Mapping[str, ResponseDef] = field(default_factory=dict)
    flows: Mapping[str, FlowDef] = field(default_factory=dict)
    triggers: Mapping[str, str] = field(default_factory=dict)

    def flow_for_intent(self, intent: str) -> FlowDef | None:
        name = self.triggers.get(intent)
        return self.flows[name] if name is not None else None


# -- shared helpers (also used by the dialogue engine) ----------------------------------------


def answers_only(flow: FlowDef) -> bool:
    """Whether the flow only answers (says, sets slots, searches, ends): no question, call,
    workflow or handoff, so another answer may stand in for it."""
    return _answer_steps(flow.steps)


def _answer_steps(steps: tuple[Step, ...]) -> bool:
    for step in steps:
        if isinstance(step, Branch):
            branches = [body for _, body in step.cases] + [step.otherwise]
            if not all(_answer_steps(body) for body in branches):
                return False
        elif not isinstance(step, Say | SetSlots | Search | End):
            return False
    return True


class _Sandbox(ImmutableSandboxedEnvironment):
    """Also refuses what would build huge values or run for long: `*` and `**` with huge
    results (`'x' * 10**9`), `%` formatting of strings (`'%0999999999d' % 1`), `str.format`,
    and any call or filter given a number above MAX_CALL_NUMBER (`'x'.ljust(10**9)`,
    `'x'|center(10**9)`, `range(10**6)`) or returning a string longer than MAX_PRODUCT_SIZE."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is too large")
        sequence = isinstance(left, str | list | tuple) or isinstance(right, str | list | tuple)
        if operator == "*" and sequence and _size(left) * _size(right) > MAX_PRODUCT_SIZE:
            raise SecurityError("the product would be too large")
        if operator == "%" and isinstance(left, str):
            raise SecurityError("% formatting of strings is not allowed")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(__obj, "__name__", "")
        if name in ("format", "format_map"):  # str.format, wrapped by the sandbox
            raise SecurityError("str.format is not allowed")
        _check_arguments(args, kwargs)
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str) and name in ("replace", "join") and args:
            if name == "join":
                args = (list(args[0]), *args[1:])
            _check_growth(name, owner if name == "replace" else args[0],
                          args[:2] if name == "replace" else (owner,))
        return _check_result(super().call(__context, __obj, *args, **kwargs))


def _check_arguments(args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int | float) and not isinstance(value, bool) and \
                abs(value) > MAX_CALL_NUMBER:
            raise SecurityError(f"argument {value} is too large (at most {MAX_CALL_NUMBER})")


def _check_result(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_PRODUCT_SIZE:
        raise SecurityError("the result would be too large")
    return value


def _check_growth(name: str, value: Any, args: Sequence[Any]) -> None:
    """Refuse a `replace` or `join` whose result would exceed MAX_PRODUCT_SIZE, before it
    is built (`'ab'|replace('a', 'x' * 99999)|replace('x', 'y' * 99999)`)."""
    if name == "replace" and isinstance(value, str) and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        size = len(value) + (value.count(old) if old else len(value) + 1) * len(new)
    elif name == "join" and isinstance(value, list):
        separator = str(args[0]) if args else ""
        size = sum(len(str(item)) for item in value) + len(separator) * len(value)
    else:
        return
    if size > MAX_PRODUCT_SIZE:
        raise SecurityError("the result would be too large")


def _guarded_filter(name: str, function: Any) -> Any:
    """A filter that refuses huge numeric arguments and huge string results."""

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_arguments(args[1:], kwargs)  # args[0]: the value or the context
        if name in ("replace", "join") and len(args) >= 2:  # (eval context, value, ...)
            value = list(args[1]) if name == "join" and not isinstance(args[1], str) \
                else args[1]
            _check_growth(name, value, args[2:])
            args = (args[0], value, *args[2:])
        return _check_result(function(*args, **kwargs))

    return guarded


def _size(value: Any) -> int:
    if isinstance(value, str | list | tuple):
        return max(len(value), 1)
    if isinstance(value, int) and not isinstance(value, bool):
        return max(abs(value), 1)
    return 1


def template_environment() -> ImmutableSandboxedEnvironment:
    """The sandboxed Jinja environment of response templates.

    No loader (no include/import), no access to private attributes or mutation of values,
    no huge products or powers; a missing value renders empty, None renders empty,
    booleans as yes/no. Filter `money` formats a number with thousands separators and 2
    decimals; `redact_pii` masks card numbers, IBANs, e-mail addresses and phone numbers.
    """
    env = _Sandbox(undefined=ChainableUndefined, finalize=_finalize, autoescape=False)
    env.filters["money"] = money
    env.filters["redact_pii"] = _redact_pii
    for name in UNSAFE_FILTERS:
        env.filters.pop(name, None)
    env.filters = {name: _guarded_filter(name, f) for name, f in env.filters.items()}
    env.globals.pop("lipsum", None)
    return env


def _redact_pii(value: Any) -> Any:
    """`{{ slots.recipient | redact_pii }}`: a value with card numbers, IBANs, e-mail addresses
    and phone numbers masked, for messages that echo what the user gave (docs/security.md)."""
    if value is None or isinstance(value, Undefined):
        return ""
    return redact(value) if isinstance(value, str) else value


def _finalize(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def money(value: Any, places: int = 2) -> str:
    """The `money` filter: `expressions.money` (a missing value renders empty)."""
    return "" if isinstance(value, Undefined) else format_money(value, places)


def parse_payload(text: str) -> tuple[str, dict[str, str]] | None:
    """A button payload `/intent` or `/intent{"entity": "value", ...}`: (intent, entities).

    None when `text` is not such a payload (or its JSON part is not a mapping of strings).
    """
    match = _PAYLOAD.match(text.strip())
    if match is None:
        return None
    if not match.group(2):
        return match.group(1), {}
    try:
        data = json.loads(match.group(2))
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    return match.group(1), {str(k): str(v) for k, v in data.items() if v is not None}


def humanize(name: str) -> str:
    """`check_balance` -> `check balance`."""
    return name.replace("_", " ").replace("-", " ").strip()


def value_problem(slot: SlotDef, value: Any, validation: Validation | None = None) -> str | None:
    """Why `value` is not a valid value of `slot` (None: it is; None is always valid)."""
    if value is None:
        return None
    rules = slot.validation.merged(validation)
    problem = _type_problem(slot.type, value)
    if problem is not None:
        return problem
    if slot.type == "number":
        return _range_problem(rules, float(value)) or _choice_problem(rules, value)
    problem = _choice_problem(rules, value)
    if problem is None and rules.regex is not None and isinstance(value, str):
        matched = compile_bot_regex(rules.regex).fullmatch(value) is not None
        return None if matched else "it doesn't have the expected format"
    return problem


def _type_problem(slot_type: str, value: Any) -> str | None:
    if slot_type == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else "it must be a number"
    if slot_type == "boolean":
        return None if isinstance(value, bool) else "it must be yes or no"
    if slot_type in DATE_TYPES:
        return None if _iso_date(slot_type, value) else f"it must be an ISO {slot_type}"
    return None if isinstance(value, str) else "it must be text"


def _iso_date(slot_type: str, value: Any) -> bool:
    """Whether `value` is an ISO date (date slots) or timestamp (datetime slots) text."""
    if not isinstance(value, str):
        return False
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return False
    return slot_type == "datetime" or (len(value) == 10 and parsed.time() == datetime.time())


def _range_problem(rules: Validation, number: float) -> str | None:
    if rules.min is not None and number < rules.min:
        return f"it must be at least {format_number(rules.min)}"
    if rules.gt is not None and number <= rules.gt:
        return f"it must be more than {format_number(rules.gt)}"
    if rules.max is not None and number > rules.max:
        return f"it must be at most {format_number(rules.max)}"
    if rules.lt is not None and number >= rules.lt:
        return f"it must be less than {format_number(rules.lt)}"
    return None


def _choice_problem(rules: Validation, value: Any) -> str | None:
    if not rules.choices:
        return None
    folded = [str(c).casefold() for c in rules.choices]
    if isinstance(value, str) and value.casefold() in folded:
        return None
    if not isinstance(value, str) and any(value == c for c in rules.choices):
        return None
    return f"it must be one of: {', '.join(str(c) for c in rules.choices)}"


def format_number(number: float) -> str:
    """`10000.0` -> `10,000`, `0.5` -> `0.5`."""
    return f"{int(number):,}" if float(number).is_integer() else f"{number:,}"


# -- building and checking --------------------------------------------------------------------


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
) -> tuple[ConversationDefinition, list[DefinitionIssue]]:
    """The typed conversation of the merged entries, and every problem found.

    `intents` / `entities`: the bot's, or None when they are incomplete (the checks of
    references to them are then skipped). Workflow names are checked only when the bot has
    some workflows. References are checked only when every entry passed its schema.
    """
    builder = _Builder(intents, entities, workflows)
    return builder.build(entries), builder.issues


class _Builder:
    def __init__(
        self,
        intents: Collection[str] | None,
        entities: Mapping[str, EntityDef] | None,
        workflows: Collection[str],
    ) -> None:
        self.intents = intents
        self.entities = entities
        self.workflows = workflows
        self.issues: list[DefinitionIssue] = []
        self.env = template_environment()
        self.slots: dict[str, SlotDef] = {}
        self.response_names: set[str] = set()
        self.flow_names: set[str] = set()
        self.calls: dict[str, list[tuple[str, SectionEntry, list[PathPart]]]] = {}

    def build(self, entries: Sequence[SectionEntry]) -> ConversationDefinition:
        named = self._named(entries)
        if self.issues:
            return ConversationDefinition()
        self.response_names = {name for name, _ in named["responses"]}
        self.flow_names = {name for name, _ in named["flows"]}
        for name, entry in named["slots"]:
            if name in SENTIMENT_SLOTS:
                self.add(entry, [], f"slot name {name!r} is reserved: the built-in slot set "
                                    "from the sentiment of the user's last message")
        builtin = _sentiment_slots()
        self.slots = {**builtin, **{name: SlotDef(name) for name, _ in named["slots"]}}
        self.slots = {**builtin, **{name: self._slot(name, entry)
                                    for name, entry in named["slots"]}}
        responses = {name: self._response(name, entry) for name, entry in named["responses"]}
        flows = {name: self._flow(name, entry) for name, entry in named["flows"]}
        self._check_cycles()
        return ConversationDefinition(self.slots, responses, flows, self._triggers(named))

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

    def _slot(self, name: str, entry: SectionEntry) -> SlotDef:
        raw = entry.value if isinstance(entry.value, dict) else {"type": entry.value}
        slot_type = TYPE_ALIASES.get(str(raw.get("type", "text")), str(raw.get("type", "text")))
        slot = SlotDef(
            name=name,
            type=slot_type,
            entity=raw.get("entity"),
            validation=self._validation(entry, [], raw),
            initial=raw.get("initial"),
            ask=self._message(entry, ["ask"], raw.get("ask")),
            invalid=self._message(entry, ["invalid"], raw.get("invalid")),
            label=str(raw.get("label") or humanize(name)),
            description=str(raw.get("description", "")),
            from_text=bool(raw.get("from_text", True)),
            keep=bool(raw.get("keep", False)),
            lookup_only=bool(raw.get("lookup_only", True)),
            fuzzy=float(raw.get("fuzzy", 0.8)),
            currencies=tuple(str(c).upper() for c in raw.get("currencies", ())),
        )
        self._check_slot(entry, slot, raw)
        return slot

    def _check_slot(self, entry: SectionEntry, slot: SlotDef, raw: dict[str, Any]) -> None:
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
    ) -> Validation:
        regex = raw.get("regex")
        issue = None if regex is None else pattern_issue(regex)  # RE2: no ReDoS
        if issue is not None:
            self.add(entry, [*path, "regex"], issue)
            regex = None
        rules = Validation(
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

    def _response(self, name: str, entry: SectionEntry) -> ResponseDef:
        raw = entry.value
        if isinstance(raw, dict) and "variations" in raw:
            if "text" in raw or "buttons" in raw:
                self.add(entry, [], "give either `text` (and `buttons`) or `variations`")
            items: list[tuple[list[PathPart], Any]] = [
                (["variations", i], v) for i, v in enumerate(raw["variations"])
            ]
        elif isinstance(raw, list):
            items = [([i], v) for i, v in enumerate(raw)]
        elif isinstance(raw, dict) and "text" not in raw:
            self.add(entry, [], "a response needs `text` or `variations`")
            items = []
        else:
            items = [([], raw)]
        variations = tuple(self._variation(entry, path, value) for path, value in items)
        return ResponseDef(name, variations)

    def _variation(self, entry: SectionEntry, path: list[PathPart], raw: Any) -> Variation:
        text_path = path if isinstance(raw, str) else [*path, "text"]
        if isinstance(raw, str):
            raw = {"text": raw}
        self._check_template(entry, text_path, str(raw["text"]))
        buttons = []
        for index, button in enumerate(raw.get("buttons") or []):
            where = [*path, "buttons", index]
            self._check_template(entry, [*where, "title"], str(button["title"]))
            self._check_payload(entry, [*where, "payload"], str(button["payload"]))
            buttons.append(ButtonDef(str(button["title"]), str(button["payload"])))
        return Variation(str(raw["text"]), tuple(buttons))

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

    def _message(self, entry: SectionEntry, path: list[PathPart], raw: Any) -> MessageRef | None:
        """A response name (defined or built in; an unknown `utter_*` name is an error),
        else inline template text; or an inline `{text, buttons}` mapping."""
        if raw is None or isinstance(raw, bool):
            return None
        if isinstance(raw, dict):
            return MessageRef(inline=self._variation(entry, path, raw))
        text = str(raw)
        if text in self.response_names or text in BUILTIN_RESPONSES:
            return MessageRef(response=text)
        if re.fullmatch(r"utter_\w+", text):
            self.add(entry, path, f"unknown response {text!r}")
            return None
        self._check_template(entry, path, text)
        return MessageRef(inline=Variation(text))

    # -- flows -------------------------------------------------------------------------------

    def _flow(self, name: str, entry: SectionEntry) -> FlowDef:
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
        return FlowDef(name, str(raw.get("title") or humanize(name).capitalize()),
                       str(raw.get("description", "")), triggers, steps)

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
    ) -> tuple[Step, ...]:
        steps = (self._step(entry, flow, [*path, i], item) for i, item in enumerate(raw))
        return tuple(step for step in steps if step is not None)

    def _step(self, entry: SectionEntry, flow: str, path: list[PathPart], raw: Any) -> Step | None:
        if isinstance(raw, str):
            if raw in ("end", "handoff"):
                return End() if raw == "end" else Handoff()
            message = self._message(entry, path, raw)
            return Say(message) if message is not None else None
        kind, value = next(iter(raw.items()))
        where = [*path, kind]
        if kind == "say":
            message = self._message(entry, where, value)
            return Say(message) if message is not None else None
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
            return Handoff(self._message(entry, where, value))
        return End()

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

    def _collect(self, entry: SectionEntry, path: list[PathPart], raw: Any) -> Collect | None:
        raw = {"slot": raw} if isinstance(raw, str) else raw
        name = str(raw["slot"])
        if not self._slot_ref(entry, [*path, "slot"] if len(raw) > 1 else path, name, writes=True):
            return None
        slot = self.slots[name]
        ask = self._message(entry, [*path, "ask"], raw.get("ask")) or slot.ask
        if ask is None and f"utter_ask_{name}" in self.response_names:
            ask = MessageRef(response=f"utter_ask_{name}")
        if ask is None:
            self.add(entry, path, f"no question to ask for slot {name!r}: give `ask` here or "
                                  f"on the slot, or define the response 'utter_ask_{name}'")
            return None
        override = raw.get("validation")
        return Collect(
            slot=name,
            ask=ask,
            invalid=self._message(entry, [*path, "invalid"], raw.get("invalid")) or slot.invalid,
            fallback=self._message(entry, [*path, "fallback"], raw.get("fallback")),
            max_attempts=int(raw.get("max_attempts", DEFAULT_MAX_ATTEMPTS)),
            validation=None if override is None else self._validation(
                entry, [*path, "validation"], override),
        )

    def _set(self, entry: SectionEntry, path: list[PathPart], raw: dict[str, Any]) -> SetSlots:
        values: list[tuple[str, SlotValue]] = []
        for name, value in raw.items():
            if not self._slot_ref(entry, [*path, name], name, writes=True):
                continue
            problem = value_problem(self.slots[name], value)
            if problem is not None:
                self.add(entry, [*path, name], f"invalid value {value!r}: {problem}")
            values.append((name, value))
        return SetSlots(tuple(values))

    def _branch(
        self, entry: SectionEntry, flow: str, path: list[PathPart], raw: list[dict[str, Any]]
    ) -> Branch:
        cases: list[tuple[Condition, tuple[Step, ...]]] = []
        otherwise: tuple[Step, ...] = ()
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
        return Branch(tuple(cases), otherwise)

    def _condition(
        self, entry: SectionEntry, path: list[PathPart], raw: dict[str, Any] | str
    ) -> Condition | None:
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
            return Condition(op, children=tuple(c for c in children if c is not None))
        return self._comparison(entry, path, raw)

    def _expression(
        self, entry: SectionEntry, path: list[PathPart], source: str
    ) -> Condition | None:
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
        return Condition("expression", value=node, reads=tuple(dict.fromkeys(names)))

    def _comparison(
        self, entry: SectionEntry, path: list[PathPart], raw: dict[str, Any]
    ) -> Condition | None:
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
        return Condition(op, slot.name, value)

    def _call(self, entry: SectionEntry, flow: str, path: list[PathPart], target: str) -> Call:
        if target not in self.flow_names:
            known = ", ".join(sorted(self.flow_names))
            self.add(entry, path, f"unknown flow {target!r} (defined: {known})")
        else:
            self.calls.setdefault(flow, []).append((target, entry, path))
        return Call(target)

    def _workflow(self, entry: SectionEntry, path: list[PathPart], raw: Any) -> RunWorkflow:
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
        return RunWorkflow(
            name=name,
            inputs=self._inputs(entry, [*path, "inputs"], raw.get("inputs") or []),
            save=tuple(save),
            started=self._message(entry, [*path, "started"], raw.get("started")),
            on_success=self._message(entry, [*path, "on_success"], raw.get("on_success")),
            on_failure=self._message(entry, [*path, "on_failure"], raw.get("on_failure")),
        )

    def _search(self, entry: SectionEntry, path: list[PathPart], raw: Any) -> Search:
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
        return Search(
            query=None if query is None else str(query),
            not_found=self._message(entry, [*path, "not_found"], raw.get("not_found")),
            save=None if save is None else str(save),
        )

    def _inputs(
        self, entry: SectionEntry, path: list[PathPart], raw: list[str] | dict[str, Any]
    ) -> tuple[WorkflowInput, ...]:
        pairs = [(s, s, [*path, i]) for i, s in enumerate(raw)] if isinstance(raw, list) else [
            (k, v, [*path, k]) for k, v in raw.items()
        ]
        inputs = []
        for name, source, where in pairs:
            if isinstance(source, dict):
                inputs.append(WorkflowInput(str(name), value=source["value"]))
            elif self._slot_ref(entry, where, str(source)):
                inputs.append(WorkflowInput(str(name), slot=str(source)))
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


def template_problems(
    env: ImmutableSandboxedEnvironment, source: str, slots: Collection[str]
) -> list[str]:
    """What is wrong with a response template: syntax, include/import, unknown variables
    or slots (`slots.NAME` / `slots["NAME"]` must name a defined slot)."""
    try:
        tree = env.parse(source)
        env.from_string(source)
    except TemplateError as exc:
        return [f"template error: {exc}"]
    problems = [
        f"`{type(node).__name__.lower()}` is not allowed in a template"
        for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport,
                                   nodes.Macro, nodes.CallBlock))
    ]
    problems.extend(_unsafe_template_parts(tree))
    allowed = TEMPLATE_VARIABLES | set(env.globals)
    for name in sorted(_free_names(tree) - allowed):
        problems.append(f"unknown template variable {name!r} (use slots.NAME)")
    for slot in sorted(_slot_references(tree) - set(slots)):
        problems.append(f"template uses unknown slot {slot!r}")
    return problems


def _unsafe_template_parts(tree: nodes.Template) -> list[str]:
    """Runaway rendering, refused when the bot is loaded: loops inside loops and recursive
    loops (with macros, refused by the caller, the only ways to run long without writing;
    what a template writes is bounded when it is rendered). Private attributes
    (`''.__class__`) are left to the sandbox: they render empty."""
    problems: list[str] = []
    for loop in tree.find_all(nodes.For):
        if loop.recursive:
            problems.append("recursive loops are not allowed in a template")
        if any(True for _ in loop.find_all(nodes.For)):
            problems.append("loops inside loops are not allowed in a template")
    return problems


def _free_names(tree: nodes.Template) -> set[str]:
    assigned = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    return {n.name for n in tree.find_all(nodes.Name) if n.ctx == "load"} - assigned


def _slot_references(tree: nodes.Template) -> set[str]:
    found: set[str] = set()
    for node in tree.find_all(nodes.Getattr):
        if isinstance(node.node, nodes.Name) and node.node.name == "slots":
            found.add(node.attr)
    for item in tree.find_all(nodes.Getitem):
        if isinstance(item.node, nodes.Name) and item.node.name == "slots":
            arg = item.arg
            if isinstance(arg, nodes.Const) and isinstance(arg.value, str):
                found.add(arg.value)
    return found


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _sentiment_slots() -> dict[str, SlotDef]:
    """The built-in `sentiment` and `sentiment_score` slots (SENTIMENT_SLOTS)."""
    return {
        "sentiment": SlotDef("sentiment", type="text", from_text=False, keep=True,
                             description="sentiment of the user's last message: negative, "
                                         "neutral or positive"),
        "sentiment_score": SlotDef("sentiment_score", type="number", from_text=False,
                                   keep=True, description="probability of that sentiment"),
    }
