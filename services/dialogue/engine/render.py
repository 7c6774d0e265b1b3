"""Response rendering: sandboxed Jinja templates compiled once, variations chosen by seed."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from jinja2 import Environment, Template
from jinja2.exceptions import SecurityError

from services.botdef import (
    BUILTIN_RESPONSES,
    BUILTIN_TRANSLATIONS,
    Branch,
    ButtonDef,
    Collect,
    ConversationDefinition,
    Handoff,
    MessageRef,
    RunWorkflow,
    Say,
    Search,
    Step,
    Variation,
    template_environment,
)
from services.dialogue.engine.api import Button, Reply

MAX_RENDERED_CHARS = 20_000
"""A rendered message longer than this is not sent (the template's plain text is)."""
_EXPRESSION = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)


@dataclass(frozen=True)
class _Text:
    """A compiled template, and its output when it has no Jinja syntax (no `{`): such a
    template renders the same in every context, so it is rendered once, here."""

    template: Template
    static: str | None

    @classmethod
    def compile(cls, env: Environment, source: str) -> _Text:
        template = env.from_string(source)
        return cls(template, _render(template, source, {}) if "{" not in source else None)

    def render(self, source: str, context: dict[str, Any]) -> str:
        return self.static if self.static is not None else _render(self.template, source,
                                                                   context)


@dataclass(frozen=True)
class _Compiled:
    source: str
    text: _Text
    buttons: tuple[tuple[_Text, str], ...]


class Renderer:
    """Renders responses (by name, the bot's or a built-in one) and inline messages, in
    one of the bot's `languages` (the default first).

    A response in a language: the bot's own in that language, else the bot's own in the
    default language (a response written without languages says the same in all), else the
    built-in one in that language, else the English built-in one.

    Everything is compiled in the constructor; `render` only reads, so one Renderer can
    serve many threads.
    """

    def __init__(self, conversation: ConversationDefinition, help_buttons: list[Button],
                 languages: tuple[str, ...] = ("en",),
                 help_buttons_in: Mapping[str, list[Button]] | None = None) -> None:
        env = template_environment()
        self._env = env
        self._default = languages[0]
        responses: dict[tuple[str, str], tuple[_Compiled, ...]] = {}
        for language in languages:
            builtin = BUILTIN_TRANSLATIONS.get(language.split("-")[0], {})
            buttons_in = (help_buttons_in or {}).get(language, help_buttons)
            for name, text in BUILTIN_RESPONSES.items():
                buttons = buttons_in if name == "utter_help" else []
                variation = Variation(builtin.get(name, text),
                                      tuple(ButtonDef(b.title, b.payload) for b in buttons))
                responses[(language, name)] = (self._compile(variation),)
            for name, response in conversation.responses.items():
                responses[(language, name)] = tuple(
                    self._compile(v) for v in response.variations_in(language))
        self._responses: Mapping[tuple[str, str], tuple[_Compiled, ...]] = MappingProxyType(
            responses)
        inline = {v: self._compile(v) for v in _inline_variations(conversation)}
        self._inline: Mapping[Variation, _Compiled] = MappingProxyType(inline)

    def _compile(self, variation: Variation) -> _Compiled:
        buttons = tuple((_Text.compile(self._env, b.title), b.payload)
                        for b in variation.buttons)
        return _Compiled(variation.text, _Text.compile(self._env, variation.text), buttons)

    def has(self, name: str) -> bool:
        return (self._default, name) in self._responses

    def render(
        self,
        message: MessageRef | str,
        context: dict[str, Any],
        seed: str,
        extra_buttons: list[Button] | None = None,
        *,
        language: str | None = None,
    ) -> Reply:
        """The reply for `message` (a response name or a MessageRef) in `context`, in
        `language` (one of the bot's; None: the default one).

        The variation is chosen by `seed` (same seed, same variation). A template that
        fails at run time is sent with its expressions left out.
        """
        compiled = self._pick(message, seed, language or self._default)
        text = compiled.text.render(compiled.source, context)
        buttons = [Button(t.render("", context), payload) for t, payload in compiled.buttons]
        return Reply(text=text.strip(), buttons=[*buttons, *(extra_buttons or [])])

    def _pick(self, message: MessageRef | str, seed: str, language: str) -> _Compiled:
        if isinstance(message, MessageRef) and message.inline is not None:
            inline = message.inline_in(language) or message.inline
            found = self._inline.get(inline)
            return found if found is not None else self._compile(inline)
        name = message if isinstance(message, str) else str(message.response)
        if (language, "utter_default") not in self._responses:
            language = self._default
        variations = (self._responses.get((language, name))
                      or self._responses[(language, "utter_default")])
        return variations[choose(seed, len(variations))]


def choose(seed: str, count: int) -> int:
    """A stable index in [0, count) for `seed` (the same in every process)."""
    digest = hashlib.sha256(seed.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


def _render(template: Template, source: str, context: dict[str, Any]) -> str:
    try:
        parts: list[str] = []
        size = 0
        for chunk in template.generate(context):  # stops a loop that writes too much
            size += len(chunk)
            if size > MAX_RENDERED_CHARS:
                raise SecurityError(f"a message longer than {MAX_RENDERED_CHARS} characters")
            parts.append(chunk)
        return "".join(parts)
    except Exception:  # a bot's template must not break the conversation
        return _EXPRESSION.sub("", source)


def _inline_variations(conversation: ConversationDefinition) -> Iterator[Variation]:
    refs: list[MessageRef | None] = []
    for slot in conversation.slots.values():
        refs.extend((slot.ask, slot.invalid))
    for flow in conversation.flows.values():
        refs.extend(_step_messages(flow.steps))
    for ref in refs:
        if ref is not None and ref.inline is not None:
            yield ref.inline
            yield from (variation for _, variation in ref.translations)


def _step_messages(steps: tuple[Step, ...]) -> Iterator[MessageRef | None]:
    for step in steps:
        if isinstance(step, Say):
            yield step.message
        elif isinstance(step, Collect):
            yield from (step.ask, step.invalid, step.fallback)
        elif isinstance(step, RunWorkflow):
            yield from (step.started, step.on_success, step.on_failure)
        elif isinstance(step, Handoff):
            yield step.message
        elif isinstance(step, Search):
            yield step.not_found
            if step.query is not None:
                yield MessageRef(inline=Variation(step.query))
        elif isinstance(step, Branch):
            for _, case in step.cases:
                yield from _step_messages(case)
            yield from _step_messages(step.otherwise)
