"""A bot definition prepared for the engine: programs, matchers, renderer, intent sets.

Built once per bot and only read afterwards (shared by every turn and thread).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from services.botdef import (
    DATE_TYPES,
    BotDefinition,
    ConversationDefinition,
    FlowDef,
    KnowledgeSettings,
    SlotDef,
    answers_only,
    humanize,
)
from services.common import langid
from services.dialogue.engine.api import Button
from services.dialogue.engine.dates import Clock, warm_up
from services.dialogue.engine.program import (
    Instruction,
    collected_slots,
    compile_flow,
    entity_filled_slots,
    referenced_slots,
)
from services.dialogue.engine.render import Renderer
from services.dialogue.engine.values import EntityMatcher

GREET = frozenset({"greet", "greeting", "hello"})
GOODBYE = frozenset({"goodbye", "bye"})
THANKS = frozenset({"thanks", "thank_you", "thankyou"})
HELP = frozenset({"help"})
HANDOFF = frozenset({"human_handoff", "handoff", "agent", "talk_to_human"})
CANCEL = frozenset({"cancel", "stop"})
AFFIRM = frozenset({"affirm", "yes", "confirm"})
DENY = frozenset({"deny", "no"})
CANCEL_TEXTS = frozenset({"cancel", "stop", "stop it", "cancel that", "cancel it", "abort",
                          "取消", "算了", "取消吧", "不要了", "停止", "不办了",
                          "quit", "never mind", "nevermind", "forget it"})
BUILTIN_REPLIES: Mapping[str, str] = MappingProxyType({
    **{intent: "utter_greet" for intent in GREET},
    **{intent: "utter_goodbye" for intent in GOODBYE},
    **{intent: "utter_thanks" for intent in THANKS},
    **{intent: "utter_help" for intent in HELP},
})
"""Intents answered out of the box when no flow is triggered by them (response names)."""
BUILTIN_TITLES: Mapping[str, str] = MappingProxyType({
    "greet": "Say hello", "goodbye": "Say goodbye", "thanks": "Say thanks",
    "help": "What can you do?", "human_handoff": "Talk to a person",
})
BUILTIN_TITLES_IN: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "zh": {"greet": "打个招呼", "goodbye": "说再见", "thanks": "说谢谢", "help": "你能做什么？",
           "human_handoff": "转人工客服"},
})
HELP_BUTTONS = 6


@dataclass(frozen=True)
class CompiledBot:
    bot_id: str
    conversation: ConversationDefinition
    programs: Mapping[str, tuple[Instruction, ...]]
    resets: Mapping[str, frozenset[str]]
    referenced: Mapping[str, frozenset[str]]
    fillable: Mapping[str, frozenset[str]]
    """Per flow, the slots a message's entities fill (program.entity_filled_slots)."""
    matchers: Mapping[str, EntityMatcher]
    renderer: Renderer
    threshold: float
    out_of_scope_intent: str
    intents: frozenset[str]
    handoff_after: int
    max_depth: int
    knowledge: KnowledgeSettings
    """The `knowledge:` settings (the defaults when bot.yml has none: for `search` steps)."""
    knowledge_policy: bool
    """Whether messages try the knowledge base (bot.yml has a `knowledge:` section)."""
    answer_intents: frozenset[str]
    """`knowledge.answer_intents` whose flows only answer (the loader refuses others; a
    transactional flow is never answered in place of, whatever the settings say)."""
    timezone: str = "UTC"
    language: str = "en"
    """Where date slots read relative dates, and the bot's default language (bot.yml)."""
    languages: tuple[str, ...] = ("en",)
    """The bot's languages, the default first: a conversation's language is detected among
    them (services/common/langid.py) when there are several."""

    @classmethod
    def build(cls, bot: BotDefinition, *, handoff_after: int, max_depth: int) -> CompiledBot:
        conversation = bot.conversation
        programs = {name: compile_flow(flow) for name, flow in conversation.flows.items()}
        synonyms = bot.entities_runtime_config()["synonyms"]
        matchers = {name: EntityMatcher.of(entity, synonyms.get(name, {}))
                    for name, entity in bot.entities.items()}
        if any(slot.type in DATE_TYPES for slot in conversation.slots.values()):
            for language in bot.languages:
                warm_up(Clock(0.0, bot.timezone, language))
        if bot.multilingual:
            langid.warm_up()
        return cls(
            bot_id=bot.name,
            conversation=conversation,
            programs=MappingProxyType(programs),
            resets=MappingProxyType({n: _resets(conversation, p) for n, p in programs.items()}),
            referenced=MappingProxyType({n: referenced_slots(p) for n, p in programs.items()}),
            fillable=MappingProxyType({n: entity_filled_slots(p) for n, p in programs.items()}),
            matchers=MappingProxyType(matchers),
            renderer=Renderer(conversation, _help_buttons(conversation), bot.languages,
                              {language: _help_buttons(conversation, language)
                               for language in bot.languages}),
            # None: the model's own threshold, chosen at training (the NLU's out_of_scope)
            threshold=bot.nlu.confidence_threshold or 0.0,
            out_of_scope_intent=bot.nlu.out_of_scope_intent,
            intents=frozenset(bot.intent_names()) | frozenset(conversation.triggers)
            | BUILTIN_REPLIES.keys() | HANDOFF | CANCEL | AFFIRM | DENY,
            handoff_after=handoff_after,
            max_depth=max_depth,
            knowledge=bot.knowledge or KnowledgeSettings(),
            knowledge_policy=bot.knowledge is not None,
            answer_intents=_answer_intents(bot),
            timezone=bot.timezone,
            language=bot.default_language,
            languages=bot.languages,
        )

    def slot(self, name: str) -> SlotDef:
        return self.conversation.slots[name]

    def matcher(self, slot: SlotDef) -> EntityMatcher | None:
        return self.matchers.get(slot.entity) if slot.entity is not None else None

    def flow_for(self, intent: str) -> FlowDef | None:
        return self.conversation.flow_for_intent(intent)

    def handles(self, intent: str) -> bool:
        """Whether the bot does something for `intent` (a flow or a built-in answer)."""
        return (self.flow_for(intent) is not None or intent in BUILTIN_REPLIES
                or intent in HANDOFF)

    def title(self, intent: str, language: str | None = None) -> str:
        flow = self.flow_for(intent)
        if flow is not None:
            return flow.title_in(language)
        builtin = BUILTIN_TITLES_IN.get((language or "").split("-")[0], {}).get(intent)
        return builtin or BUILTIN_TITLES.get(intent) or humanize(intent).capitalize()


def _resets(
    conversation: ConversationDefinition, program: tuple[Instruction, ...]
) -> frozenset[str]:
    """The slots reset when the flow starts: those it collects, and the entity-filled ones
    it uses (they come from the triggering message), except slots marked `keep`."""
    slots = conversation.slots
    used = {name for name in referenced_slots(program) if slots[name].entity is not None}
    return frozenset(n for n in collected_slots(program) | used if not slots[n].keep)


def _answer_intents(bot: BotDefinition) -> frozenset[str]:
    if bot.knowledge is None:
        return frozenset()
    conversation = bot.conversation
    return frozenset(
        intent for intent in bot.knowledge.answer_intents
        if (flow := conversation.flow_for_intent(intent)) is None or answers_only(flow))


def _help_buttons(conversation: ConversationDefinition,
                  language: str | None = None) -> list[Button]:
    buttons = [Button(flow.title_in(language), f"/{flow.triggers[0]}")
               for flow in conversation.flows.values() if flow.triggers]
    return buttons[:HELP_BUTTONS]
