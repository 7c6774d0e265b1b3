"""The typed conversation of a bot definition: slots, responses, flows and their steps.

The dataclasses the dialogue engine runs, built from the `slots`, `responses` and `flows`
sections by `services.botdef.builder` (docs/bot-definition.md, "Conversation"). Beside them:
`services.botdef.templates` (the sandboxed Jinja of responses) and `services.botdef.slotrules`
(slot values: types, validation).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from services.botdef.schema import INTENT_NAME_PATTERN

SlotValue = str | int | float | bool | None

TYPE_ALIASES: Mapping[str, str] = MappingProxyType(
    {"float": "number", "int": "number", "integer": "number", "bool": "boolean",
     "string": "text", "str": "text"}
)
DEFAULT_MAX_ATTEMPTS = 3
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

BUILTIN_TRANSLATIONS: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "zh": MappingProxyType({
        "utter_greet": "您好！请问有什么可以帮您？",
        "utter_goodbye": "再见，祝您生活愉快！",
        "utter_thanks": "不客气！",
        "utter_help": "我可以帮您办理以下业务：",
        "utter_default": "抱歉，我没有听懂。您能换个说法吗？",
        "utter_clarify": "抱歉，我不太确定您的意思。您是想办理以下哪一项？",
        "utter_out_of_scope": "抱歉，这个我帮不上忙。您是不是想办理以下业务？",
        "utter_invalid": "抱歉，这个{{ slot.label }}看起来不对"
                         "{% if slot.problem %}（{{ slot.problem }}）{% endif %}。",
        "utter_collect_failed": "抱歉，我还是没明白，这件事我们先到这里。"
                                "还有什么可以帮您？",
        "utter_corrected": "好的，已将{{ slot.label }}改为{{ slot.value }}。",
        "utter_cancelled": "好的，已经取消了。",
        "utter_nothing_to_cancel": "好的。还有什么可以帮您？",
        "utter_handoff": "正在为您转接人工客服，请稍候。",
        "utter_handoff_released": "您已回到智能助手。有什么可以帮您？",
        "utter_nlu_unavailable": "抱歉，我现在暂时无法理解您的消息，请稍后再试。",
        "utter_workflow_pending": "我还在处理您上一个请求，请稍等。",
        "utter_workflow_failed": "抱歉，出了点问题，没能完成。请稍后再试。",
    }),
})
"""The built-in responses in other languages than English (a multilingual bot's conversation
in such a language says these; a language left out says the English ones)."""


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


Translations = tuple[tuple[str, str], ...]
"""(language, text) pairs: a flow's title or a slot's label in the bot's other languages."""


@dataclass(frozen=True)
class ResponseDef:
    """A response: its variations in the bot's default language, and in other languages
    (`translations`: (language, variations) pairs; a language left out says `variations`)."""

    name: str
    variations: tuple[Variation, ...]
    translations: tuple[tuple[str, tuple[Variation, ...]], ...] = ()

    def variations_in(self, language: str | None) -> tuple[Variation, ...]:
        """The variations said in `language` (the default language's when it has none)."""
        return next((found for code, found in self.translations if code == language),
                    self.variations)


@dataclass(frozen=True)
class MessageRef:
    """What a step says: a response by name, or an inline variation (in the default
    language; `translations`: (language, variation) pairs for the bot's other languages)."""

    response: str | None = None
    inline: Variation | None = None
    translations: tuple[tuple[str, Variation], ...] = ()

    def inline_in(self, language: str | None) -> Variation | None:
        """The inline variation in `language` (the default language's when it has none)."""
        return next((found for code, found in self.translations if code == language),
                    self.inline)


def translated(default: str, translations: Translations, language: str | None) -> str:
    """`default`, or its translation into `language` when there is one."""
    return next((text for code, text in translations if code == language), default)


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
    labels: Translations = ()
    """The label in the bot's other languages ((language, label) pairs)."""

    def label_in(self, language: str | None) -> str:
        return translated(self.label, self.labels, language)

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
    titles: Translations = ()
    """The title in the bot's other languages ((language, title) pairs)."""

    def title_in(self, language: str | None) -> str:
        return translated(self.title, self.titles, language)


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
