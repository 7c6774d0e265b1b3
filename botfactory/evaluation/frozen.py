"""A bot's frozen NLU test set: `BOT_DIR/tests/nlu.yml`.

The same format as a data file's `intents:` list (inline entity annotations included), but
under `tests/`, which `load_bot` never reads: training cannot see it. `botfactory gate` scores
candidates on it, `botfactory data check` reports any of its texts that leaked into the
training data. Change it rarely and on purpose: scores are only comparable on the same set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.botdef import Example, parse_annotated
from services.botdef.yamlio import YamlSyntaxError, line_of, read_yaml, to_plain

FROZEN_FILE = Path("tests") / "nlu.yml"


class FrozenSetError(ValueError):
    """The file is not a valid intents list (the message names file and problem)."""


def frozen_path(bot_dir: Path) -> Path:
    return Path(bot_dir) / FROZEN_FILE


def load_examples(path: Path) -> list[Example]:
    """The examples of an intents file (`intents: [{name, examples: [...]}]`); raises
    FrozenSetError naming the file, line and field of the first problem."""
    try:
        document: Any = read_yaml(path)
    except YamlSyntaxError as exc:
        raise FrozenSetError(f"{path}:{exc.line}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FrozenSetError(f"{path}: cannot read: {exc}") from None
    intents = document.get("intents") if isinstance(document, dict) else None
    if not isinstance(intents, list):
        raise FrozenSetError(f"{path}:{line_of(document, [])}: expected a mapping with an "
                             "`intents:` list")
    examples: list[Example] = []
    for index, intent in enumerate(intents):
        examples.extend(_intent_examples(path, document, index, intent))
    return examples


def _intent_examples(path: Path, document: Any, index: int, intent: Any) -> list[Example]:
    if not isinstance(intent, dict) or not isinstance(intent.get("name"), str) \
            or not isinstance(intent.get("examples"), list):
        line = line_of(document, ["intents", index])
        raise FrozenSetError(f"{path}:{line}: intents[{index}]: needs a name and an examples "
                             "list")
    examples = []
    for number, text in enumerate(to_plain(intent["examples"])):
        try:
            examples.append(parse_annotated(str(text), intent=intent["name"]))
        except ValueError as exc:
            line = line_of(document, ["intents", index, "examples", number])
            raise FrozenSetError(f"{path}:{line}: intents[{index}].examples[{number}]: "
                                 f"{exc}") from None
    return examples


def load_frozen(bot_dir: Path) -> list[Example] | None:
    """The bot's frozen test examples; None when it has no frozen set."""
    path = frozen_path(bot_dir)
    return load_examples(path) if path.is_file() else None
