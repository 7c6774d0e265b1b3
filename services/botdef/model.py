"""The in-memory form of a bot definition: frozen dataclasses shared by every service."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.botdef.conversation import ConversationDefinition


@dataclass(frozen=True)
class EntitySpan:
    """An entity mention: the char span [start, end) of `Example.text`.

    `value` is the normalised value given in a long-form annotation, else None.
    """

    start: int
    end: int
    entity: str
    value: str | None = None


@dataclass(frozen=True)
class Example:
    """One training utterance of an intent, with its entity spans (sorted by start)."""

    text: str
    intent: str
    entities: tuple[EntitySpan, ...] = ()
    language: str | None = dataclasses.field(default=None, compare=False)
    """The example's language (its file's or intent's `language:`, else the bot's default;
    None for examples not read from a bot folder). Not part of equality: the same text is
    the same example."""


@dataclass(frozen=True)
class Intent:
    """An intent and all its examples (merged over the data files, in file order)."""

    name: str
    examples: tuple[Example, ...]


@dataclass(frozen=True)
class EntityDef:
    """A declared entity: synonyms (canonical -> variants), regex patterns, lookup values."""

    name: str
    synonyms: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    regex: tuple[str, ...] = ()
    lookup: tuple[str, ...] = ()


@dataclass(frozen=True)
class NluSettings:
    """The `nlu:` section of bot.yml (plus the bot's language)."""

    language: str = "en"
    base_model: str | None = None
    # None: chosen when the model is trained, from its held-out split (docs/model-format.md)
    confidence_threshold: float | None = None
    out_of_scope_intent: str = "out_of_scope"
    max_length: int = 64
    epochs: int | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    seed: int | None = None


@dataclass(frozen=True)
class KnowledgeSettings:
    """The `knowledge:` section of bot.yml: how the bot answers from its knowledge base
    (docs/bot-definition.md, "Knowledge base").

    `answer_threshold`: the lowest hit score answered (below it: the normal fallback);
    `faq_intent`: the intent whose messages go to the knowledge base (None: none);
    `on_out_of_scope`: out-of-scope and low-confidence messages try the knowledge base first;
    `max_sentences`: sentences in an answer taken from a document passage; `k`: hits asked for;
    `answer_intents`: intents (FAQ-type: their flows only say things) whose messages also
    search the knowledge base, which answers instead when its best hit reaches
    `answer_threshold` and its calibrated score plus `intent_margin` reaches the intent's
    confidence; `score_calibration`: (slope, intercept) of the Platt scaling that turns a hit
    score into the probability that the hit answers (`botfactory test-kb --calibrate`; None:
    the raw score).
    """

    answer_threshold: float = 0.5
    faq_intent: str | None = "faq"
    on_out_of_scope: bool = True
    max_sentences: int = 2
    k: int = 5
    answer_intents: tuple[str, ...] = ()
    intent_margin: float = 0.0
    score_calibration: tuple[float, float] | None = None


@dataclass(frozen=True)
class BotDefinition:
    """A loaded, validated bot folder.

    `raw` holds the bot.yml mapping as plain Python data, plus the merged `slots`,
    `responses` and `flows` sections of all files and the `workflows` read from the
    `workflows/` folder (name -> definition). `conversation` is the typed, validated form
    of `slots`, `responses` and `flows` (empty when the bot has none). `knowledge` holds the
    `knowledge:` settings, None when bot.yml has no such section (the bot then consults its
    knowledge base only in `search` flow steps, with the default settings).
    """

    name: str
    path: Path
    description: str
    nlu: NluSettings
    intents: tuple[Intent, ...]
    entities: dict[str, EntityDef]
    raw: dict[str, Any]
    conversation: ConversationDefinition = dataclasses.field(
        default_factory=lambda: _empty_conversation()
    )
    knowledge: KnowledgeSettings | None = None
    languages: tuple[str, ...] = ("en",)
    """The languages the bot speaks, the default one first (bot.yml `languages` and
    `default_language`, or its one `language`)."""
    warnings: tuple[DefinitionIssue, ...] = ()
    """Problems that do not stop the bot from loading (`botfactory validate` and `data check`
    print them), e.g. an examples list written as a `[...]` flow sequence."""

    @property
    def redacts_pii(self) -> bool:
        """Whether PII is redacted from this bot's events and transcripts (bot.yml
        `privacy: {redact_pii: false}` turns it off; docs/security.md)."""
        privacy = self.raw.get("privacy")
        return not isinstance(privacy, dict) or privacy.get("redact_pii", True) is not False

    @property
    def default_language(self) -> str:
        """The language of a conversation until the user's own is known (and of the bot's
        texts written without a language)."""
        return self.languages[0]

    @property
    def multilingual(self) -> bool:
        return len(self.languages) > 1

    @property
    def timezone(self) -> str:
        """The IANA timezone date and datetime slots read relative dates in (bot.yml
        `timezone`, default UTC)."""
        return str(self.raw.get("timezone") or "UTC")

    def examples(self) -> list[Example]:
        """All examples: intent order, then file order within an intent."""
        return [example for intent in self.intents for example in intent.examples]

    def intent_names(self) -> list[str]:
        """The intent names in definition order."""
        return [intent.name for intent in self.intents]

    def entities_runtime_config(self) -> dict[str, Any]:
        """What the NLU runtime needs to normalise and match entities.

        `{"synonyms": {entity: {variant_lower: canonical}}, "regex": {entity: [pattern]},
        "lookup": {entity: [value]}}`, each holding only the entities that have some.
        Synonyms come from the declarations and from long-form annotations whose value
        differs from the annotated text; a declared synonym wins over an annotation.
        """
        return {
            "synonyms": _synonym_maps(self),
            "regex": {name: list(e.regex) for name, e in self.entities.items() if e.regex},
            "lookup": {name: list(e.lookup) for name, e in self.entities.items() if e.lookup},
        }


def _empty_conversation() -> ConversationDefinition:
    from services.botdef.conversation import ConversationDefinition

    return ConversationDefinition()


def _synonym_maps(bot: BotDefinition) -> dict[str, dict[str, str]]:
    maps: dict[str, dict[str, str]] = {}
    for example in bot.examples():
        for span in example.entities:
            text = example.text[span.start : span.end]
            if span.value is not None and span.value != text:
                entry = maps.setdefault(span.entity, {})
                entry.setdefault(text.lower(), span.value)
                entry.setdefault(span.value.lower(), span.value)
    for name, entity in bot.entities.items():
        for canonical, variants in entity.synonyms.items():
            entry = maps.setdefault(name, {})
            entry.update({variant.lower(): canonical for variant in variants})
            entry[canonical.lower()] = canonical
    return {name: maps[name] for name in bot.entities if name in maps}


@dataclass(frozen=True)
class DefinitionIssue:
    """One problem found in a bot folder. `line` is 1-based; 0 when no line applies."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class BotDefinitionError(Exception):
    """Raised by `load_bot` with every issue found; `str()` lists them one per line."""

    def __init__(self, issues: list[DefinitionIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))
