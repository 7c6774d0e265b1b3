"""YAML conversation tests: load them (schema-checked, file:line errors) and run them
against a chat client (the running stack, or an in-process engine).

The format is documented in docs/bot-definition.md ("Conversation tests").
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from botfactory.evaluation.frozen import FROZEN_FILE
from services.botdef.model import DefinitionIssue
from services.botdef.schema import DRAFT, INTENT_NAME_PATTERN, check_schema
from services.botdef.yamlio import (
    PathPart,
    YamlSyntaxError,
    field_path,
    line_of,
    read_yaml,
    to_plain,
)

WORKFLOW_STATUSES = ("succeeded", "failed", "compensated")
_SCALAR = {"type": ["string", "number", "boolean", "null"]}
# A slot's expected value: a scalar, or {regex: PATTERN} matched (re.search) against the value
# as text (ids and references differ between the stack and the offline runner).
_SLOT_VALUE = {"oneOf": [_SCALAR, {"type": "object", "required": ["regex"],
                                   "additionalProperties": False,
                                   "properties": {"regex": {"type": "string", "minLength": 1}}}]}
_EXPECTATION = {
    "type": ["string", "object"],
    "minLength": 1,
    "minProperties": 1,
    "additionalProperties": False,
    "properties": {
        "text": {"type": "string", "minLength": 1},
        "regex": {"type": "string", "minLength": 1},
        "buttons": {"type": "array", "items": {"type": "string", "minLength": 1}},
    },
}
_RESULT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "status": {"enum": list(WORKFLOW_STATUSES)},
        "outputs": {"type": "object"},
        "error": {"type": "string"},  # the details (agents, logs)
        "message": {"type": "string"},  # what the customer may be told (a `fail` step's text)
    },
}
_NLU_HINT = {
    "type": ["string", "object"],
    "pattern": INTENT_NAME_PATTERN,
    "required": ["intent"],
    "additionalProperties": False,
    "properties": {
        "intent": {"type": "string"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "entities": {
            "type": ["object", "array"],
            "additionalProperties": {"type": ["string", "number"]},
            "items": {
                "type": "object",
                "required": ["entity", "value"],
                "additionalProperties": False,
                "properties": {
                    "entity": {"type": "string"},
                    "value": {"type": ["string", "number"]},
                    "raw": {"type": "string"},
                },
            },
        },
        "ranking": {"type": "object", "additionalProperties": {"type": "number"}},
        "out_of_scope": {"type": "boolean"},
    },
}
TESTS_FILE_SCHEMA: dict[str, Any] = {
    "$schema": DRAFT,
    "title": "botfactory conversation tests",
    "type": "object",
    "required": ["tests"],
    "additionalProperties": False,
    "properties": {
        "version": {"const": "1"},
        "workflow_results": {"type": "object", "additionalProperties": _RESULT},
        "tests": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "steps"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "description": {"type": "string"},
                    # true: the test needs its `nlu:` results (a confidence, a ranking) that
                    # no real model can be made to give: it runs offline only
                    "offline": {"type": "boolean"},
                    "steps": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/step"}},
                },
            },
        },
    },
    "$defs": {
        "step": {
            "type": "object",
            "required": ["user"],
            "additionalProperties": False,
            "properties": {
                "user": {"type": "string", "minLength": 1},
                "bot": {**_EXPECTATION, "type": ["string", "object", "array"],
                        "items": _EXPECTATION},
                "no_reply": {"type": "boolean"},
                "slots": {"type": "object", "additionalProperties": _SLOT_VALUE},
                "flow": {"type": ["string", "null"]},
                "nlu": _NLU_HINT,
                "workflow_result": _RESULT,
            },
        },
    },
}


class ConversationTestError(ValueError):
    """Conversation test files that cannot be used; `issues` lists every problem."""

    def __init__(self, issues: list[DefinitionIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(issue) for issue in issues))


# -- the tests --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplyExpectation:
    """A reply containing `text` (case-insensitive) or matching `regex` (re.search), with
    buttons whose titles include `buttons`."""

    text: str | None = None
    regex: str | None = None
    buttons: tuple[str, ...] = ()

    def matches(self, reply: Any) -> bool:
        text = str(getattr(reply, "text", ""))
        if self.text is not None and _fold(self.text) not in _fold(text):
            return False
        if self.regex is not None and re.search(self.regex, text) is None:
            return False
        titles = {_fold(title) for title in button_titles(reply)}
        return all(_fold(title) in titles for title in self.buttons)

    def describe(self) -> str:
        what = f"containing {self.text!r}" if self.text is not None else ""
        if self.regex is not None:
            what = f"matching /{self.regex}/"
        if self.buttons:
            what += f" with buttons {list(self.buttons)}"
        return what.strip() or "(any)"


@dataclass(frozen=True)
class NluHint:
    """What NLU should understand of a step's message; used only by offline runners (an
    in-process engine with a fake NLU). The real stack ignores it."""

    intent: str
    confidence: float = 1.0
    entities: tuple[tuple[str, str, str], ...] = ()
    ranking: tuple[tuple[str, float], ...] = ()
    out_of_scope: bool = False


@dataclass(frozen=True)
class ConversationStep:
    """One user message and what must hold after it. `check_flow`: whether `flow` (the
    active flow, None for none) is checked; `slots` None: not checked."""

    user: str
    line: int
    replies: tuple[ReplyExpectation, ...] = ()
    no_reply: bool = False
    slots: dict[str, Any] | None = None
    flow: str | None = None
    check_flow: bool = False
    nlu: NluHint | None = None
    workflow_result: dict[str, Any] | None = None


@dataclass(frozen=True)
class ConversationTest:
    """A named conversation; `workflow_results`: the file's offline workflow results;
    `offline`: it needs its NLU hints, so a client without them (the stack) skips it."""

    name: str
    file: str
    line: int
    steps: tuple[ConversationStep, ...]
    workflow_results: dict[str, dict[str, Any]] = field(default_factory=dict)
    offline: bool = False

    def workflow_result(self, step: ConversationStep, workflow: str) -> dict[str, Any]:
        """The offline result of `workflow` started at `step` (default: succeeded)."""
        found = step.workflow_result or self.workflow_results.get(workflow) or {}
        return {"status": "succeeded", "outputs": {}, "error": None, "message": "", **found}


def load_conversation_tests(path: str | Path) -> list[ConversationTest]:
    """The tests of a YAML file, of every YAML file under a folder, or of a bot folder's
    `tests/`; raises ConversationTestError listing every problem."""
    files = _test_files(Path(path))
    issues: list[DefinitionIssue] = []
    tests: list[ConversationTest] = []
    for file in files:
        tests.extend(_load_file(file, issues))
    _check_names(tests, issues)
    if issues:
        raise ConversationTestError(sorted(issues, key=lambda i: (i.file, i.line)))
    return tests


OTHER_TEST_FILES = frozenset({"kb.yml", FROZEN_FILE.name})
"""Test files of other kinds in a bot's tests/ folder, at any depth: `kb.yml` (the knowledge
base's questions, `botfactory test-kb`), `kb_*.yml` (more of them, e.g. `kb_zh.yml` in another
language: `botfactory test-kb BOT_DIR --cases FILE`) and `nlu.yml` (the frozen NLU test set,
`botfactory gate`). Every other `*.yml` / `*.yaml` file there is a conversation test file."""
KB_CASES_PATTERN = re.compile(r"^kb[_-][\w.-]+\.ya?ml$")


def other_test_file(path: Path) -> bool:
    """Whether `path` is a test file of another kind than conversation tests."""
    return path.name in OTHER_TEST_FILES or KB_CASES_PATTERN.match(path.name) is not None


def conversation_test_files(folder: Path) -> list[Path]:
    """The conversation test files under `folder` (a bot's `tests/`), sorted; [] if none."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file()
                  and not other_test_file(p))


def _test_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if (path / "bot.yml").is_file():
        path = path / "tests"
    if not path.is_dir():
        raise ConversationTestError([DefinitionIssue(str(path), 0, "", "no such file or folder")])
    files = conversation_test_files(path)
    if not files:
        raise ConversationTestError([DefinitionIssue(str(path), 0, "", "no YAML test files")])
    return files


def _load_file(path: Path, issues: list[DefinitionIssue]) -> list[ConversationTest]:
    file = str(path)
    try:
        doc = read_yaml(path)
    except YamlSyntaxError as exc:
        issues.append(DefinitionIssue(file, exc.line, "", str(exc)))
        return []
    except (OSError, UnicodeDecodeError) as exc:
        issues.append(DefinitionIssue(file, 0, "", f"cannot read: {exc}"))
        return []
    problems, _ = check_schema(doc, file, TESTS_FILE_SCHEMA)
    if problems:
        issues.extend(problems)
        return []
    results = to_plain(doc.get("workflow_results") or {})
    return [_test(file, doc, index, results, issues) for index in range(len(doc["tests"]))]


def _test(
    file: str, doc: Any, index: int, results: dict[str, Any], issues: list[DefinitionIssue]
) -> ConversationTest:
    raw = doc["tests"][index]
    steps = []
    for number, step in enumerate(raw["steps"]):
        where: list[PathPart] = ["tests", index, "steps", number]
        steps.append(_step(to_plain(step), file, line_of(doc, where), where, issues))
    line = line_of(doc, ["tests", index])
    return ConversationTest(str(raw["name"]), file, line, tuple(steps), results,
                            offline=bool(raw.get("offline", False)))


def _step(
    raw: dict[str, Any],
    file: str,
    line: int,
    where: list[PathPart],
    issues: list[DefinitionIssue],
) -> ConversationStep:
    bot = raw.get("bot")
    items = bot if isinstance(bot, list) else [] if bot is None else [bot]
    expectations = tuple(_expectation(item) for item in items)
    patterns = [([*where, "bot", number], e.regex) for number, e in enumerate(expectations)]
    patterns += [([*where, "slots", name], value["regex"])
                 for name, value in (raw.get("slots") or {}).items() if isinstance(value, dict)]
    for path, pattern in patterns:
        if pattern is not None and _bad_regex(pattern):
            issues.append(DefinitionIssue(file, line, field_path(path),
                                          f"invalid regex {pattern!r}"))
    if raw.get("no_reply") and expectations:
        issues.append(DefinitionIssue(file, line, field_path(where),
                                      "`no_reply` and `bot` exclude each other"))
    return ConversationStep(
        user=str(raw["user"]),
        line=line,
        replies=expectations,
        no_reply=bool(raw.get("no_reply", False)),
        slots=raw.get("slots"),
        flow=raw.get("flow"),
        check_flow="flow" in raw,
        nlu=_hint(raw["nlu"], str(raw["user"])) if "nlu" in raw else None,
        workflow_result=raw.get("workflow_result"),
    )


def _expectation(raw: Any) -> ReplyExpectation:
    if isinstance(raw, str):
        return ReplyExpectation(text=raw)
    return ReplyExpectation(raw.get("text"), raw.get("regex"), tuple(raw.get("buttons") or ()))


def _bad_regex(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return True
    return False


def _hint(raw: Any, text: str) -> NluHint:
    if isinstance(raw, str):
        return NluHint(raw)
    entities = raw.get("entities") or {}
    pairs = ([(e["entity"], e["value"], e.get("raw")) for e in entities]
             if isinstance(entities, list) else [(k, v, None) for k, v in entities.items()])
    return NluHint(
        intent=str(raw["intent"]),
        confidence=float(raw.get("confidence", 1.0)),
        entities=tuple((str(e), str(v), str(r if r is not None else v)) for e, v, r in pairs),
        ranking=tuple((str(k), float(v)) for k, v in (raw.get("ranking") or {}).items()),
        out_of_scope=bool(raw.get("out_of_scope", False)),
    )


def _check_names(tests: list[ConversationTest], issues: list[DefinitionIssue]) -> None:
    seen: dict[str, ConversationTest] = {}
    for test in tests:
        first = seen.setdefault(test.name, test)
        if first is not test:
            message = f"duplicate test name {test.name!r} (first at {first.file}:{first.line})"
            issues.append(DefinitionIssue(test.file, test.line, "name", message))


# -- running ----------------------------------------------------------------------------------


class ChatClient(Protocol):
    """A way to talk to a bot. `send` returns the replies the message caused (objects with
    `.text` and `.buttons`, each button with `.title` or a "title" key), including those
    of workflows it started; `state` returns {"slots": {...}, "active_flow": str | None}."""

    async def start(self, conversation_id: str) -> None: ...

    async def send(self, conversation_id: str, text: str) -> Sequence[Any]: ...

    async def state(self, conversation_id: str) -> Mapping[str, Any]: ...


@runtime_checkable
class ScriptedClient(Protocol):
    """A client that wants to know which test a conversation runs (offline clients use
    the steps' NLU hints and workflow results)."""

    def bind(self, conversation_id: str, test: ConversationTest) -> None: ...


SKIPPED_OFFLINE = "offline only: needs the NLU results its steps give (`offline: true`)"


@dataclass(frozen=True)
class TestResult:
    """The outcome of one test: `failures` empty when it passed; `steps_run` counts the
    steps done (a run stops at the first failing step); `skipped`: why it did not run."""

    __test__: ClassVar[bool] = False

    test: ConversationTest
    steps_run: int
    failures: tuple[str, ...] = ()
    skipped: str | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def mark(self) -> str:
        return "SKIP" if self.skipped else "PASS" if self.passed else "FAIL"


@dataclass(frozen=True)
class TestReport:
    """All results; `render()` is a pass/fail table."""

    __test__: ClassVar[bool] = False

    results: tuple[TestResult, ...]

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)

    @property
    def failed(self) -> list[TestResult]:
        return [result for result in self.results if not result.passed]

    @property
    def skipped(self) -> list[TestResult]:
        return [result for result in self.results if result.skipped]

    def render(self) -> str:
        width = max([len(r.test.name) for r in self.results] + [4])
        lines = [f"{'':4}  {'test':<{width}}  steps"]
        for result in self.results:
            steps = f"{result.steps_run}/{len(result.test.steps)}"
            lines.append(f"{result.mark:4}  {result.test.name:<{width}}  {steps}")
            lines.extend(f"{'':6}{failure}" for failure in result.failures)
            if result.skipped:
                lines.append(f"{'':6}{result.skipped}")
        skipped = len(self.skipped)
        done = len(self.results) - len(self.failed) - skipped
        summary = f"{done} passed, {len(self.failed)} failed"
        if skipped:
            summary += f", {skipped} skipped"
        lines.append(f"{summary}, {len(self.results)} total")
        return "\n".join(lines)


async def run_conversation_tests(
    tests: Sequence[ConversationTest], client: ChatClient, *, prefix: str = "convtest"
) -> TestReport:
    """Run each test in a new conversation (id `PREFIX-RUN-N`, RUN random per call); a
    client that takes no hints (not a ScriptedClient) skips the `offline` tests."""
    run = uuid.uuid4().hex[:8]
    results = [
        await _run_test(test, client, f"{prefix}-{run}-{index + 1}")
        for index, test in enumerate(tests)
    ]
    return TestReport(tuple(results))


async def _run_test(
    test: ConversationTest, client: ChatClient, conversation_id: str
) -> TestResult:
    if not isinstance(client, ScriptedClient):
        if test.offline:  # the stack's NLU cannot be told what to understand
            return TestResult(test, 0, skipped=SKIPPED_OFFLINE)
    else:
        client.bind(conversation_id, test)
    try:
        await client.start(conversation_id)
    except Exception as exc:
        return TestResult(test, 0, (f"could not start the conversation: {exc!r}",))
    for number, step in enumerate(test.steps, 1):
        try:
            problems = await _run_step(step, client, conversation_id)
        except Exception as exc:
            problems = [f"error: {exc!r}"]
        if problems:
            head = f"step {number} ({Path(test.file).name}:{step.line}) user: {step.user!r}"
            return TestResult(test, number, (head, *(f"  {p}" for p in problems)))
    return TestResult(test, len(test.steps))


async def _run_step(step: ConversationStep, client: ChatClient, conversation_id: str) -> list[str]:
    replies = list(await client.send(conversation_id, step.user))
    problems = check_replies(step, replies)
    if step.slots is not None or step.check_flow:
        problems.extend(check_state(step, await client.state(conversation_id)))
    return problems


def check_replies(step: ConversationStep, replies: Sequence[Any]) -> list[str]:
    """Each expectation must match a reply, in order (other replies may come between)."""
    texts = " | ".join(repr(str(getattr(r, "text", ""))) for r in replies) or "no reply"
    if step.no_reply:
        return [] if not replies else [f"expected no reply; got {texts}"]
    position = 0
    for expectation in step.replies:
        found = next((i for i in range(position, len(replies))
                      if expectation.matches(replies[i])), None)
        if found is None:
            return [f"expected a reply {expectation.describe()}; got {texts}"]
        position = found + 1
    return []


def check_state(step: ConversationStep, state: Mapping[str, Any]) -> list[str]:
    problems = []
    slots = state.get("slots") or {}
    for name, expected in (step.slots or {}).items():
        actual = slots.get(name)
        if not same_value(actual, expected):
            want = (f"a value matching /{expected['regex']}/" if isinstance(expected, Mapping)
                    else repr(expected))
            problems.append(f"slot {name}: expected {want}, got {actual!r}")
    if step.check_flow and state.get("active_flow") != step.flow:
        problems.append(f"active flow: expected {step.flow!r}, got {state.get('active_flow')!r}")
    return problems


def same_value(actual: Any, expected: Any) -> bool:
    """Slot values compare numbers by value and text case-insensitively; an expected
    {regex: PATTERN} matches a set value whose text it finds (re.search)."""
    numbers = (int, float)
    if isinstance(expected, Mapping):
        return actual is not None and re.search(str(expected["regex"]), str(actual)) is not None
    if isinstance(actual, bool) or isinstance(expected, bool):
        return actual is expected
    if isinstance(actual, numbers) and isinstance(expected, numbers):
        return float(actual) == float(expected)
    if isinstance(actual, str) and isinstance(expected, str):
        return _fold(actual) == _fold(expected)
    return bool(actual == expected)


def button_titles(reply: Any) -> list[str]:
    titles = []
    for button in getattr(reply, "buttons", None) or []:
        title = button.get("title") if isinstance(button, Mapping) else getattr(button, "title", "")
        titles.append(str(title))
    return titles


def _fold(text: str) -> str:
    return " ".join(text.casefold().split())
