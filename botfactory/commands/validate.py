"""`botfactory validate BOT_DIR`: check the whole bot folder and list every problem in it.

The definition (`bot.yml`, `data/`, `domain/`), the workflows against `rpa.yml`, `rpa.yml`
itself, the conversation tests, the frozen NLU test set (`tests/nlu.yml`), the knowledge-base
questions (`tests/kb.yml`) and the knowledge files (`knowledge/`). Each problem is one line
naming its file and line (and field where there is one); warnings (`warning: ...`) do not fail
the check. Exit status: 0 valid, 1 invalid.

The libraries are imported when the command runs, so `botfactory --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.botdef import BotDefinition

EXIT_INVALID = 1
TESTS_DIR = "tests"
KNOWLEDGE_DIR = "knowledge"
KB_CASES_FILE = "kb.yml"


@dataclass
class Findings:
    """What one check found: errors and warnings (one line each), and what it counted."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    counts: list[str] = field(default_factory=list)

    def add(self, other: Findings) -> None:
        self.errors.extend(other.errors)
        self.warnings.extend(other.warnings)
        self.counts.extend(other.counts)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `validate` command."""
    parser = subparsers.add_parser(
        "validate", help="check a bot folder and list every problem in it",
        description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("bot_dir", metavar="BOT_DIR", type=Path, help="the bot folder")
    parser.set_defaults(func=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    """Print every problem (stdout) and return 1, or the warnings and a summary."""
    findings = validate_folder(args.bot_dir)
    for error in findings.errors:
        print(error)
    for warning in findings.warnings:
        print(f"warning: {warning}")
    if findings.errors:
        print(f"error: {len(findings.errors)} issue(s) in {args.bot_dir}", file=sys.stderr)
        return EXIT_INVALID
    print(f"ok: {'; '.join(findings.counts)}")
    return 0


def validate_folder(bot_dir: Path) -> Findings:
    """Every check of `botfactory validate` on one bot folder."""
    findings = check_definition(bot_dir)
    if not bot_dir.is_dir():
        return findings
    checks: tuple[Callable[[Path], Findings], ...] = (
        check_workflows, check_conversation_tests, check_frozen_set, check_kb_cases,
        check_knowledge)
    for check in checks:
        findings.add(check(bot_dir))
    return findings


def check_definition(bot_dir: Path) -> Findings:
    from services.botdef import BotDefinitionError, load_bot

    try:
        bot = load_bot(bot_dir)
    except BotDefinitionError as exc:
        return Findings(errors=[str(issue) for issue in exc.issues])
    return Findings(warnings=[str(w) for w in bot.warnings], counts=[bot_summary(bot)])


def bot_summary(bot: BotDefinition) -> str:
    """`bot 'name' (path): N intents, N examples, N entities`."""
    return (f"bot {bot.name!r} ({bot.path}): {len(bot.intents)} intents, "
            f"{len(bot.examples())} examples, {len(bot.entities)} entities")


def check_workflows(bot_dir: Path) -> Findings:
    from services.botdef.loader import WORKFLOWS_DIR, yaml_files
    from services.botdef.workflows import check_bot_workflows

    errors = [str(issue) for issue in check_bot_workflows(bot_dir)]
    count = len(yaml_files(bot_dir / WORKFLOWS_DIR))
    return Findings(errors=errors, counts=[f"{count} workflows"] if count else [])


def check_conversation_tests(bot_dir: Path) -> Findings:
    from botfactory.conversation_tests import (
        ConversationTestError,
        conversation_test_files,
        load_conversation_tests,
    )

    if not conversation_test_files(bot_dir / TESTS_DIR):
        return Findings()
    try:
        tests = load_conversation_tests(bot_dir / TESTS_DIR)
    except ConversationTestError as exc:
        return Findings(errors=[str(issue) for issue in exc.issues])
    return Findings(counts=[f"{len(tests)} conversation tests"])


def check_frozen_set(bot_dir: Path) -> Findings:
    from botfactory.evaluation.frozen import FrozenSetError, load_frozen

    try:
        examples = load_frozen(bot_dir)
    except FrozenSetError as exc:
        return Findings(errors=[str(exc)])
    return Findings() if examples is None else Findings(
        counts=[f"{len(examples)} frozen NLU test examples"])


def check_kb_cases(bot_dir: Path) -> Findings:
    """tests/kb.yml and the other knowledge-base question files (tests/kb_*.yml, e.g. one per
    language: botfactory.conversation_tests.KB_CASES_PATTERN)."""
    from botfactory.conversation_tests import KB_CASES_PATTERN
    from botfactory.kb.evaluate import load_cases
    from services.knowledge.errors import KnowledgeFormatError

    folder = bot_dir / TESTS_DIR
    paths = [folder / KB_CASES_FILE] if (folder / KB_CASES_FILE).is_file() else []
    if folder.is_dir():
        paths += sorted(p for p in folder.iterdir() if KB_CASES_PATTERN.match(p.name))
    if not paths:
        return Findings()
    errors, count = [], 0
    for path in paths:
        try:
            count += len(load_cases(path))
        except KnowledgeFormatError as exc:
            errors.append(str(exc))
    if errors:
        return Findings(errors=errors)
    return Findings(counts=[f"{count} knowledge-base questions"])


def check_knowledge(bot_dir: Path) -> Findings:
    folder = bot_dir / KNOWLEDGE_DIR
    if not folder.is_dir():
        return Findings()
    from services.knowledge.errors import KnowledgeFormatError
    from services.knowledge.source import load_knowledge

    try:
        kb = load_knowledge(folder)
    except KnowledgeFormatError as exc:
        return Findings(errors=_in_folder(folder, str(exc).splitlines()))
    count = f"knowledge: {len(kb.documents)} documents, {len(kb.faq)} FAQ entries"
    return Findings(warnings=_in_folder(folder, kb.warnings), counts=[count])


def _in_folder(folder: Path, lines: Sequence[str]) -> list[str]:
    """The knowledge library's `file:line: message` lines, their file named from the bot."""
    return [line if line.startswith(str(folder)) else f"{folder}/{line}" for line in lines]
