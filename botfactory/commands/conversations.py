"""`botfactory test-conversations BOT_DIR`: run the bot's YAML conversation tests (user says X →
bot replies matching Y, slots Z, flow F active; format: docs/bot-definition.md) against the
running stack, or with --offline through the dialogue engine in-process, and print a
pass/fail report.

--offline needs no stack, no model and no key: NLU comes from each step's `nlu:` hint, a
button payload (`/affirm`) or a training example of the bot with the same text (else the
message is not understood), and workflows complete at once with the tests'
`workflow_result(s)` (default: succeeded). See botfactory/offline_chat.py.

Messages go through the gateway's HTTP API (--gateway, --api-key: a key for the bot);
slots and the active flow are read from the dialogue service's admin gRPC (--dialogue
HOST:PORT). Each test runs in a new conversation (ids `convtest-<run>-<n>`, unique per run);
asynchronous bot messages (workflow results) count as replies of the step that started the
workflow, so the RPA runner must be running for tests with workflows. `nlu:` hints and
`workflow_result(s)` of the test files are for the offline runner: the stack ignores them,
and skips the tests marked `offline: true` (they need a given confidence or ranking), which
the report lists as SKIP.

Exit status: 0 when every test passes, 1 when any fails, 2 when the tests could not run (bad
arguments or test files, the gateway or the dialogue service unreachable, the key refused).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botfactory.chat_client import DEFAULT_DIALOGUE, ChatClientError, HttpChatClient
from botfactory.conversation_tests import (
    ConversationTest,
    ConversationTestError,
    TestReport,
    load_conversation_tests,
    run_conversation_tests,
)

if TYPE_CHECKING:
    from services.botdef import BotDefinition

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
EXIT_FAILED = 1
EXIT_USAGE = 2
PREFIX = "convtest"


class UsageError(Exception):
    """The tests cannot run: reported as `error: ...` with exit status 2."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "test-conversations", help="run a bot's conversation tests against the running stack",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bot_dir", metavar="BOT_DIR", type=Path, help="the bot folder")
    parser.add_argument("--tests", type=Path, default=None, metavar="PATH",
                        help="a test file or folder (default: BOT_DIR/tests)")
    parser.add_argument("--offline", action="store_true",
                        help="run through the dialogue engine in-process: no stack, no model, "
                             "no key (NLU from the steps' nlu: hints and the bot's examples)")
    parser.add_argument("--bot", default=None,
                        help="the bot id on the stack (default: the bot's name in bot.yml)")
    parser.add_argument("--gateway", default=os.environ.get("BOTFACTORY_GATEWAY_URL",
                                                            DEFAULT_GATEWAY),
                        help="gateway URL (default: $BOTFACTORY_GATEWAY_URL or %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("BOTFACTORY_API_KEY"),
                        help="API key for the bot (default: $BOTFACTORY_API_KEY)")
    parser.add_argument("--dialogue", default=os.environ.get("BOTFACTORY_DIALOGUE_ADDRESS",
                                                             DEFAULT_DIALOGUE),
                        metavar="HOST:PORT",
                        help="the dialogue service's admin gRPC address "
                             "(default: $BOTFACTORY_DIALOGUE_ADDRESS or %(default)s)")
    parser.add_argument("--report", type=Path, default=None, metavar="FILE",
                        help="also write the report to FILE (JSON when it ends in .json)")
    parser.add_argument("--select", default=None, metavar="TEXT",
                        help="run only the tests whose name contains TEXT")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="per request (default: %(default)s)")
    parser.add_argument("--workflow-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="how long a step waits for the workflows it started "
                             "(default: %(default)s)")
    parser.add_argument("--record-version", default=None, metavar="VERSION",
                        help="record the outcome on this bot version (its files must be "
                             "BOT_DIR's) as the check conversation_tests (docs/versions.md)")
    parser.add_argument("--nats", default=os.environ.get("BOTFACTORY_NATS_URL",
                                                         "nats://127.0.0.1:4222"),
                        help="with --record-version: NATS URL (default: $BOTFACTORY_NATS_URL "
                             "or %(default)s)")
    parser.set_defaults(func=run_test_conversations)


@dataclass(frozen=True)
class Plan:
    bot: str
    tests: list[ConversationTest]
    initial_slots: dict[str, Any]
    definition: BotDefinition


def run_test_conversations(args: argparse.Namespace) -> int:
    try:
        plan = prepare(args)
        report, conversations = asyncio.run(run(plan, args))
    except (UsageError, ChatClientError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # never a traceback; the message says what went wrong
        print(f"error: the tests could not run: {exc!r}", file=sys.stderr)
        return EXIT_USAGE
    text = render(report, conversations)
    print(text)
    if args.report is not None:
        try:
            where = "offline" if args.offline else args.gateway
            write_report(args.report, report, conversations, plan.bot, where, text)
        except OSError as exc:
            print(f"error: cannot write the report: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.record_version and record_on_version(args, report, plan.bot) != 0:
        return EXIT_USAGE
    return 0 if report.passed else EXIT_FAILED


def record_on_version(args: argparse.Namespace, report: TestReport, bot: str) -> int:
    """Record the run's outcome on `--record-version` as its `conversation_tests` check."""
    from botfactory.commands.models import _audit, _run, actor
    from services.common.definitions import read_folder

    files = read_folder(args.bot_dir)
    total, failed = len(report.results), len(report.failed)
    where = "offline" if args.offline else args.gateway
    detail = f"{total - failed} of {total} passed ({where})"

    async def work(bus: Any) -> Any:
        from services.common import audit
        from services.common.botversions import CheckResult, VersionConflict, VersionStore

        store = VersionStore(bus)
        version = await store.get(bot, args.record_version)
        if version.files != files:
            raise VersionConflict(f"{args.bot_dir} is not the definition of {version.id}: "
                                  "not recorded")
        result = await store.record_check(version.bot, version.id, CheckResult(
            "conversation_tests", report.passed, detail, actor()))
        await _audit(bus, audit.VERSION_CHECKED, {
            "bot_id": version.bot, "version": version.id, "check": result.name,
            "passed": result.passed})
        return result

    code, result = _run(args.nats, work)
    if code == 0:
        print(f"recorded on {args.record_version}: conversation_tests "
              f"{'passed' if result.passed else 'failed'} ({detail})")
    return code


def prepare(args: argparse.Namespace) -> Plan:
    """The bot id, the tests to run and the bot's initial slot values (bad input: UsageError)."""
    from services.botdef import load_bot
    from services.botdef.model import BotDefinitionError

    if not args.offline:
        _check_stack_args(args)
    if args.timeout <= 0 or args.workflow_timeout <= 0:
        raise UsageError("--timeout and --workflow-timeout must be > 0")
    try:
        bot = load_bot(args.bot_dir)
    except BotDefinitionError as exc:
        raise UsageError(f"{args.bot_dir} is not a valid bot folder:\n{exc}") from None
    try:
        tests = load_conversation_tests(args.tests if args.tests is not None else args.bot_dir)
    except ConversationTestError as exc:
        raise UsageError(f"invalid conversation tests:\n{exc}") from None
    if args.select:
        tests = [t for t in tests if args.select.casefold() in t.name.casefold()]
    if not tests:
        raise UsageError(f"no test name contains {args.select!r}")
    slots = {name: slot.initial for name, slot in bot.conversation.slots.items()}
    return Plan(args.bot or bot.name, tests, slots, bot)


def _check_stack_args(args: argparse.Namespace) -> None:
    if not args.api_key:
        raise UsageError("give --api-key or set BOTFACTORY_API_KEY (or run --offline)")
    if not str(args.gateway).startswith(("http://", "https://")):
        raise UsageError(f"--gateway must be an http(s) URL, got {args.gateway!r}")


async def run(plan: Plan, args: argparse.Namespace) -> tuple[TestReport, list[str]]:
    """The report, and the conversation id each test ran in."""
    if args.offline:
        from botfactory.offline_chat import EngineClient

        offline = EngineClient(plan.definition)
        report = await run_conversation_tests(plan.tests, offline, prefix=PREFIX)
        return report, aligned(report, list(offline.trackers))
    async with HttpChatClient(args.gateway, args.api_key, plan.bot, args.dialogue,
                              initial_slots=plan.initial_slots, timeout_s=args.timeout,
                              workflow_timeout_s=args.workflow_timeout) as client:
        report = await run_conversation_tests(plan.tests, client, prefix=PREFIX)
        return report, aligned(report, client.started)


def aligned(report: TestReport, started: list[str]) -> list[str]:
    """The conversation id of each result ("" for a test skipped: it started none)."""
    ids = iter(started)
    return ["" if result.skipped else next(ids, "") for result in report.results]


def render(report: TestReport, conversations: list[str]) -> str:
    """The pass/fail table, then where to look for each failure (its conversation id)."""
    lines = [report.render()]
    failed = [(r.test.name, conversation) for r, conversation
              in zip(report.results, conversations, strict=False) if not r.passed]
    if failed:
        lines.append("failed conversations (see their transcripts):")
        lines.extend(f"  {name}: {conversation}" for name, conversation in failed)
    return "\n".join(lines)


def write_report(path: Path, report: TestReport, conversations: list[str], bot: str,
                 gateway: str, text: str) -> None:
    if path.suffix.lower() != ".json":
        path.write_text(text + "\n", encoding="utf-8")
        return
    padded = conversations + [""] * (len(report.results) - len(conversations))
    data = {
        "bot": bot,
        "gateway": gateway,
        "passed": report.passed,
        "total": len(report.results),
        "failed": len(report.failed),
        "skipped": len(report.skipped),
        "tests": [{
            "name": result.test.name,
            "file": result.test.file,
            "line": result.test.line,
            "passed": result.passed,
            "skipped": result.skipped,
            "steps": len(result.test.steps),
            "steps_run": result.steps_run,
            "conversation_id": conversation,
            "failures": list(result.failures),
        } for result, conversation in zip(report.results, padded, strict=True)],
    }
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
