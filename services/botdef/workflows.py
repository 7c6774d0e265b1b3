"""Workflow definitions of a bot folder (`workflows/*.yml`) and its RPA settings (`rpa.yml`):
typed model and validation (the JSON Schema: `workflow_schema`; the host allow-list:
`hosts`). docs/workflows.md describes the format.

`parse_workflows(bot.raw["workflows"], settings)` turns the loader's raw workflows into
`WorkflowDef`s and lists every problem (schema, step ids, goto targets, expression syntax and
references, secrets outside the fields that may hold them, literal hosts off the allow-list,
unknown subworkflows). Shared library code: the RPA runner executes these definitions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jmespath
import jmespath.exceptions

from services.botdef.expressions import (
    ExpressionError,
    Node,
    parse,
    references,
    value_templates,
)
from services.botdef.hosts import HostAllowList as HostAllowList  # (re-exported)
from services.botdef.loader import WORKFLOWS_DIR, yaml_files
from services.botdef.model import BotDefinitionError, DefinitionIssue
from services.botdef.schema import check_schema
from services.botdef.workflow_schema import RPA_SCHEMA, WORKFLOW_SCHEMA
from services.botdef.yamlio import PathPart, YamlSyntaxError, line_of, read_yaml, to_plain

RPA_FILE = "rpa.yml"
STEP_KINDS = ("http", "set", "transform", "branch", "wait", "subworkflow", "approval", "notify",
              "browser", "fail")
BROWSER_ACTIONS = ("goto", "fill", "select", "click", "wait_for", "extract_text")
SCOPE_ROOTS = frozenset({"inputs", "steps", "vars", "run", "settings", "secrets"})
END = "end"
DEFAULT_MAX_STEPS = 100
MAX_DEPTH = 5  # subworkflows nested deeper than this fail
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

# -- model -------------------------------------------------------------------------------------


def parse_duration(value: Any) -> float:
    """Seconds from `90`, `1.5`, `500ms`, `2s`, `5m`, `1h`, `1d`; raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError(f"not a duration: {value!r} (e.g. 500ms, 2s, 5m, 1h)")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError(f"negative duration: {value!r}")
    return seconds


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts of a step: delay before attempt n+1 = min(initial * coefficient^(n-1), max)."""

    max_attempts: int = 1
    initial_interval: float = 0.5
    backoff_coefficient: float = 2.0
    max_interval: float = 30.0
    non_retryable_statuses: tuple[int, ...] = ()

    def delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failed attempt (1-based)."""
        exponent = max(0, failures - 1)
        try:
            raw = self.initial_interval * self.backoff_coefficient ** exponent
        except OverflowError:
            raw = self.max_interval
        return float(min(raw, self.max_interval))

    def allows_another(self, attempts: int) -> bool:
        return attempts < self.max_attempts


DEFAULT_HTTP_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.2, max_interval=5.0)
DEFAULT_COMPENSATION_RETRY = RetryPolicy(max_attempts=5, initial_interval=0.2, max_interval=5.0)


@dataclass(frozen=True)
class HttpSpec:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    body: str | None = None
    expect: tuple[int, ...] = ()  # empty: any 2xx
    outputs: dict[str, str] = field(default_factory=dict)  # name -> JMESPath

    def expected(self, status: int) -> bool:
        return status in self.expect if self.expect else 200 <= status < 300


@dataclass(frozen=True)
class BrowserAction:
    kind: str  # one of BROWSER_ACTIONS
    selector: str = ""
    value: str = ""  # goto: the URL; fill/select: the value; wait_for: the state
    output: str = ""


@dataclass(frozen=True)
class BrowserSpec:
    actions: tuple[BrowserAction, ...]


@dataclass(frozen=True)
class AssignSpec:
    """`set` (into the run's `vars`) or `transform` (the step's outputs): name -> expression
    (a non-string value is a literal)."""

    values: dict[str, Any]


@dataclass(frozen=True)
class BranchCase:
    condition: Any  # expression source, a boolean literal, or None for `else`
    goto: str


@dataclass(frozen=True)
class BranchSpec:
    cases: tuple[BranchCase, ...]


@dataclass(frozen=True)
class WaitSpec:
    seconds: float


@dataclass(frozen=True)
class SubworkflowSpec:
    name: str
    inputs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Escalation:
    timeout: float
    approvers: tuple[str, ...] = ()
    message: str = ""


@dataclass(frozen=True)
class ApprovalSpec:
    timeout: float
    message: str = ""
    approvers: tuple[str, ...] = ()
    notify: str | None = None
    escalation: tuple[Escalation, ...] = ()
    on_timeout: str = "reject"


@dataclass(frozen=True)
class NotifySpec:
    text: str


@dataclass(frozen=True)
class FailSpec:
    message: str


Spec = (HttpSpec | BrowserSpec | AssignSpec | BranchSpec | WaitSpec | SubworkflowSpec
        | ApprovalSpec | NotifySpec | FailSpec)


@dataclass(frozen=True)
class StepDef:
    id: str
    kind: str
    spec: Spec
    when: Any = None  # expression source or boolean; None: always
    timeout: float | None = None  # per attempt
    retry: RetryPolicy = RetryPolicy()
    non_idempotent: bool = False
    compensate: StepDef | None = None


@dataclass(frozen=True)
class InputDef:
    name: str
    type: str = "any"
    required: bool = True
    default: Any = None


@dataclass(frozen=True)
class WorkflowDef:
    name: str
    steps: tuple[StepDef, ...]
    inputs: tuple[InputDef, ...] = ()
    outputs: dict[str, Any] = field(default_factory=dict)  # name -> expression (or literal)
    max_steps: int = DEFAULT_MAX_STEPS
    description: str = ""

    def position(self, step_id: str) -> int:
        for index, step in enumerate(self.steps):
            if step.id == step_id:
                return index
        raise KeyError(step_id)

    def step(self, step_id: str) -> StepDef:
        return self.steps[self.position(step_id)]


# -- RPA settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RpaSettings:
    """A bot's `rpa.yml`: the host allow-list and named settings (`{{ settings.NAME }}`)."""

    allowed_hosts: HostAllowList = field(default_factory=HostAllowList)
    settings: dict[str, Any] = field(default_factory=dict)

    def with_overrides(self, overrides: Mapping[str, Any]) -> RpaSettings:
        return RpaSettings(self.allowed_hosts, {**self.settings, **overrides})


def parse_rpa_settings(doc: Any, file: str = RPA_FILE
                       ) -> tuple[RpaSettings, list[DefinitionIssue]]:
    """The settings and the issues of an `rpa.yml` document. With issues, the settings are
    those of its valid parts (`allowed_hosts` and `settings` without an error), so that the
    workflows can still be checked against them."""
    if doc is None:
        return RpaSettings(), []
    issues, bad = check_schema(doc, file, RPA_SCHEMA)
    if not isinstance(doc, dict):
        return RpaSettings(), issues
    plain = to_plain(doc)
    valid = {key: plain.get(key) for key in ("allowed_hosts", "settings")
             if not any(path[:1] == (key,) for path in bad)}
    hosts = tuple(str(h) for h in valid.get("allowed_hosts") or ())
    return RpaSettings(HostAllowList(hosts), dict(valid.get("settings") or {})), issues


def load_rpa_settings(bot_dir: Path) -> RpaSettings:
    """The bot folder's `rpa.yml` (empty settings when absent); raises BotDefinitionError."""
    path = bot_dir / RPA_FILE
    if not path.is_file():
        return RpaSettings()
    try:
        doc = read_yaml(path)
    except YamlSyntaxError as exc:
        raise BotDefinitionError([DefinitionIssue(str(path), exc.line, "", str(exc))]) from None
    settings, issues = parse_rpa_settings(doc, str(path))
    if issues:
        raise BotDefinitionError(issues)
    return settings


# -- parsing and validation --------------------------------------------------------------------


_WHERE_PART = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


def where_path(where: str) -> list[PathPart]:
    """`steps[2].http.url` -> `["steps", 2, "http", "url"]`."""
    return [int(index) if index else key for index, key in _WHERE_PART.findall(where)]


class _Checker:
    """Builds one workflow and collects its issues (file = `workflows/<name>` unless given).

    A document read with line information (`read_yaml`) gives each issue its line."""

    def __init__(self, name: str, doc: Any, settings: RpaSettings, known: Iterable[str],
                 file: str | None = None) -> None:
        self.name = name
        self.doc = doc
        self.file = file or f"workflows/{name}"
        self.settings = settings
        self.known = set(known)
        self.issues: list[DefinitionIssue] = []
        self.step_ids: set[str] = set()
        self.inputs: set[str] | None = None

    def issue(self, where: str, message: str) -> None:
        line = line_of(self.doc, where_path(where)) if hasattr(self.doc, "lc") else 0
        self.issues.append(DefinitionIssue(self.file, line, where, message))

    def build(self) -> WorkflowDef | None:
        problems, _ = check_schema(self.doc, self.file, WORKFLOW_SCHEMA)
        if problems:
            self.issues.extend(problems)
            return None
        raw = to_plain(self.doc)
        inputs = tuple(_input(k, v) for k, v in (raw.get("inputs") or {}).items())
        self.inputs = {i.name for i in inputs} if "inputs" in raw else None
        ids = [str(s["id"]) for s in raw["steps"]]
        self.step_ids = set(ids)
        for duplicate in sorted({i for i in ids if ids.count(i) > 1}):
            self.issue("steps", f"duplicate step id {duplicate!r}")
        if END in self.step_ids:
            self.issue("steps", f"{END!r} is reserved (goto: end finishes the run)")
        steps = tuple(self.step(index, s) for index, s in enumerate(raw["steps"]))
        outputs = dict(raw.get("outputs") or {})
        for key, value in outputs.items():
            self.expression(f"outputs.{key}", value)
        return WorkflowDef(self.name, steps, inputs, outputs,
                           int(raw.get("max_steps", DEFAULT_MAX_STEPS)),
                           str(raw.get("description", "")))

    def step(self, index: int, raw: dict[str, Any], compensation: bool = False) -> StepDef:
        where = f"steps[{index}]" + (".compensate" if compensation else "")
        kinds = [k for k in STEP_KINDS if k in raw]
        step_id = str(raw.get("id", f"{index}"))
        if len(kinds) != 1:
            self.issue(where, f"a step needs exactly one of {', '.join(STEP_KINDS)}"
                       f" (found {', '.join(kinds) or 'none'})")
            return StepDef(step_id, "fail", FailSpec("invalid step"))
        kind = kinds[0]
        spec = self.spec(f"{where}.{kind}", kind, raw[kind], compensation)
        when = raw.get("when")
        if when is not None:
            self.expression(f"{where}.when", when)
        retry = self.retry(f"{where}.retry", raw.get("retry"), kind, compensation)
        compensate = None
        if "compensate" in raw:
            compensate = self.step(index, {"id": f"{step_id}", **raw["compensate"]}, True)
        return StepDef(step_id, kind, spec, when, self.duration(f"{where}.timeout",
                       raw.get("timeout")), retry, bool(raw.get("non_idempotent", False)),
                       compensate)

    def spec(self, where: str, kind: str, raw: Any, compensation: bool) -> Spec:
        builder = getattr(self, f"_{kind}")
        spec: Spec = builder(where, raw)
        return spec

    # -- kinds ---------------------------------------------------------------------------

    def _http(self, where: str, raw: dict[str, Any]) -> HttpSpec:
        spec = HttpSpec(method=str(raw.get("method", "GET")).upper(), url=str(raw["url"]),
                        headers=dict(raw.get("headers") or {}), query=dict(raw.get("query") or {}),
                        json=raw.get("json"), body=raw.get("body"),
                        expect=tuple(raw.get("expect") or ()),
                        outputs=dict(raw.get("outputs") or {}))
        if spec.json is not None and spec.body is not None:
            self.issue(where, "give `json` or `body`, not both")
        self.url(f"{where}.url", spec.url)
        for name, value in [("headers", spec.headers), ("query", spec.query),
                            ("json", spec.json), ("body", spec.body)]:
            self.templates(f"{where}.{name}", value, secrets=True)
        for name, source in spec.outputs.items():
            try:
                jmespath.compile(source)
            except jmespath.exceptions.JMESPathError as exc:
                self.issue(f"{where}.outputs.{name}", f"invalid JMESPath {source!r}: {exc}")
        return spec

    def _browser(self, where: str, raw: dict[str, Any]) -> BrowserSpec:
        actions = []
        for index, item in enumerate(raw["actions"]):
            kind, value = next(iter(item.items()))
            action = _action(kind, value)
            place = f"{where}.actions[{index}].{kind}"
            if kind == "goto":
                self.url(place, action.value)
            else:
                self.templates(place, action.selector, secrets=False)
                self.templates(place, action.value, secrets=kind in ("fill", "select"))
            actions.append(action)
        return BrowserSpec(tuple(actions))

    def _set(self, where: str, raw: dict[str, Any]) -> AssignSpec:
        for key, value in raw.items():
            self.expression(f"{where}.{key}", value)
        return AssignSpec(dict(raw))

    _transform = _set

    def _branch(self, where: str, raw: list[dict[str, Any]]) -> BranchSpec:
        cases = []
        for index, case in enumerate(raw):
            target = str(case.get("goto", case.get("else")))
            condition = case.get("if")
            if "if" in case:
                self.expression(f"{where}[{index}].if", condition)
            if target != END and target not in self.step_ids:
                self.issue(f"{where}[{index}]", f"goto: unknown step {target!r}")
            cases.append(BranchCase(condition, target))
        return BranchSpec(tuple(cases))

    def _wait(self, where: str, raw: Any) -> WaitSpec:
        value = raw.get("duration") if isinstance(raw, dict) else raw
        return WaitSpec(self.duration(where, value) or 0.0)

    def _subworkflow(self, where: str, raw: dict[str, Any]) -> SubworkflowSpec:
        name = str(raw["name"])
        if name not in self.known:
            self.issue(where, f"unknown workflow {name!r} (defined: "
                       f"{', '.join(sorted(self.known)) or 'none'})")
        inputs = dict(raw.get("inputs") or {})
        self.templates(f"{where}.inputs", inputs, secrets=False)
        return SubworkflowSpec(name, inputs)

    def _approval(self, where: str, raw: dict[str, Any]) -> ApprovalSpec:
        levels = tuple(Escalation(self.duration(f"{where}.escalation[{i}].timeout",
                                                e["timeout"]) or 0.0,
                                  tuple(e.get("approvers") or ()), str(e.get("message", "")))
                       for i, e in enumerate(raw.get("escalation") or ()))
        spec = ApprovalSpec(self.duration(f"{where}.timeout", raw["timeout"]) or 0.0,
                            str(raw.get("message", "")), tuple(raw.get("approvers") or ()),
                            raw.get("notify"), levels, str(raw.get("on_timeout", "reject")))
        for name in ("message", "notify"):
            self.templates(f"{where}.{name}", raw.get(name), secrets=False)
        return spec

    def _notify(self, where: str, raw: Any) -> NotifySpec:
        text = str(raw["text"] if isinstance(raw, dict) else raw)
        self.templates(where, text, secrets=False)
        return NotifySpec(text)

    def _fail(self, where: str, raw: str) -> FailSpec:
        self.templates(where, raw, secrets=False)
        return FailSpec(str(raw))

    # -- checks --------------------------------------------------------------------------

    def retry(self, where: str, raw: Any, kind: str, compensation: bool) -> RetryPolicy:
        base = DEFAULT_COMPENSATION_RETRY if compensation else (
            DEFAULT_HTTP_RETRY if kind == "http" else RetryPolicy())
        if not raw:
            return base
        initial = self.duration(f"{where}.initial_interval", raw.get("initial_interval"))
        maximum = self.duration(f"{where}.max_interval", raw.get("max_interval"))
        return RetryPolicy(
            max_attempts=int(raw.get("max_attempts", base.max_attempts)),
            initial_interval=base.initial_interval if initial is None else initial,
            backoff_coefficient=float(raw.get("backoff_coefficient",
                                              base.backoff_coefficient)),
            max_interval=base.max_interval if maximum is None else maximum,
            non_retryable_statuses=tuple(raw.get("non_retryable_statuses") or ()))

    def duration(self, where: str, raw: Any) -> float | None:
        if raw is None:
            return None
        try:
            return parse_duration(raw)
        except ValueError as exc:
            self.issue(where, str(exc))
            return None

    def expression(self, where: str, value: Any) -> None:
        """A string is an expression; other values are literals."""
        if not isinstance(value, str):
            return
        try:
            node = parse(value)
        except ExpressionError as exc:
            self.issue(where, str(exc))
            return
        self.check_references(where, node, secrets=False)

    def templates(self, where: str, value: Any, *, secrets: bool) -> None:
        try:
            found = list(value_templates(value))
        except ExpressionError as exc:
            self.issue(where, str(exc))
            return
        for template in found:
            for node in template.expressions():
                self.check_references(where, node, secrets=secrets)

    def check_references(self, where: str, node: Node, *, secrets: bool) -> None:
        for path in references(node):
            root = path[0]
            if root not in SCOPE_ROOTS:
                self.issue(where, f"unknown name {root!r} (use one of "
                           f"{', '.join(sorted(SCOPE_ROOTS))})")
            elif root == "secrets" and not secrets:
                self.issue(where, "secrets may only be used in http headers, query, json, body "
                           "and url, and in browser fill/select values")
            elif root == "steps" and len(path) > 1 and path[1] not in self.step_ids:
                self.issue(where, f"unknown step {path[1]!r}")
            elif root == "inputs" and len(path) > 1 and self.inputs is not None \
                    and path[1] not in self.inputs:
                self.issue(where, f"unknown input {path[1]!r} (declared: "
                           f"{', '.join(sorted(self.inputs)) or 'none'})")
            elif root == "settings" and len(path) > 1 and \
                    path[1] not in self.settings.settings:
                self.issue(where, f"unknown setting {path[1]!r} (rpa.yml settings: "
                           f"{', '.join(sorted(self.settings.settings)) or 'none'})")

    def url(self, where: str, url: str) -> None:
        self.templates(where, url, secrets=True)
        if "{{" in url:
            return
        if not self.settings.allowed_hosts.allows(url):
            self.issue(where, f"{url!r} is not an http(s) URL on the bot's allow-list "
                       f"(rpa.yml allowed_hosts)")


def _input(name: str, raw: Any) -> InputDef:
    if isinstance(raw, str):
        return InputDef(name, raw)
    return InputDef(name, str(raw.get("type", "any")), bool(raw.get("required", True)),
                    raw.get("default"))


def _action(kind: str, value: Any) -> BrowserAction:
    if isinstance(value, dict):
        return BrowserAction(kind, str(value.get("selector", "")),
                             str(value.get("value", value.get("state", ""))),
                             str(value.get("output", "")))
    if kind == "goto":
        return BrowserAction(kind, value=str(value))
    return BrowserAction(kind, selector=str(value), value="visible" if kind == "wait_for" else "")


def parse_workflow(name: str, doc: Any, settings: RpaSettings = RpaSettings(),
                   known: Iterable[str] = (), file: str | None = None
                   ) -> tuple[WorkflowDef | None, list[DefinitionIssue]]:
    """One workflow from its document; (None, issues) when its structure is invalid. Issues
    name `file` (default `workflows/<name>`), and their line when `doc` has line information
    (as `read_yaml` gives)."""
    checker = _Checker(name, doc, settings, known or (name,), file)
    workflow = checker.build()
    if workflow is not None and isinstance(to_plain(doc).get("name"), str) \
            and to_plain(doc)["name"] != name:
        checker.issue("name", f"workflow is named {to_plain(doc)['name']!r}, keyed {name!r}")
    return workflow, checker.issues


def parse_workflows(raw: Mapping[str, Any], settings: RpaSettings = RpaSettings()
                    ) -> dict[str, WorkflowDef]:
    """All workflows of a bot (`bot.raw["workflows"]`); raises BotDefinitionError listing
    every problem."""
    workflows: dict[str, WorkflowDef] = {}
    issues: list[DefinitionIssue] = []
    for name, doc in raw.items():
        workflow, found = parse_workflow(name, doc, settings, raw.keys())
        issues.extend(found)
        if workflow is not None:
            workflows[name] = workflow
    if issues:
        raise BotDefinitionError(issues)
    return workflows


def check_bot_workflows(bot_dir: Path) -> list[DefinitionIssue]:
    """Every problem of a bot folder's `rpa.yml` and `workflows/*.yml`, each naming its file,
    line and field (`botfactory validate`). Files that are not YAML mappings and duplicate
    names are left to `load_bot`, which reports them."""
    settings, issues = _rpa_file_settings(bot_dir / RPA_FILE)
    documents = _workflow_documents(bot_dir / WORKFLOWS_DIR)
    for name, (path, doc) in documents.items():
        _, found = parse_workflow(name, doc, settings, documents.keys(), str(path))
        issues.extend(found)
    return issues


def _rpa_file_settings(path: Path) -> tuple[RpaSettings, list[DefinitionIssue]]:
    if not path.is_file():
        return RpaSettings(), []
    try:
        doc = read_yaml(path)
    except YamlSyntaxError as exc:
        return RpaSettings(), [DefinitionIssue(str(path), exc.line, "", str(exc))]
    except (OSError, UnicodeDecodeError) as exc:
        return RpaSettings(), [DefinitionIssue(str(path), 0, "", f"cannot read: {exc}")]
    return parse_rpa_settings(doc, str(path))


def _workflow_documents(directory: Path) -> dict[str, tuple[Path, Any]]:
    """name -> (file, document with line information) of the readable workflow files."""
    documents: dict[str, tuple[Path, Any]] = {}
    for path in yaml_files(directory):
        try:
            doc = read_yaml(path)
        except (YamlSyntaxError, OSError, UnicodeDecodeError):
            continue
        if isinstance(doc, dict):
            name = doc["name"] if isinstance(doc.get("name"), str) else path.stem
            documents.setdefault(name, (path, doc))
    return documents


def coerce_inputs(workflow: WorkflowDef, given: Mapping[str, Any]) -> dict[str, Any]:
    """The run's inputs: declared ones checked and converted, defaults filled, undeclared
    ones kept as given (a workflow without `inputs:` takes anything). Raises ValueError."""
    values = dict(given)
    for spec in workflow.inputs:
        if values.get(spec.name) is None:
            if spec.default is not None:
                values[spec.name] = spec.default
            elif spec.required:
                raise ValueError(f"input {spec.name!r} is required")
            continue
        values[spec.name] = _coerce(spec, values[spec.name])
    return values


def _coerce(spec: InputDef, value: Any) -> Any:
    kind = spec.type
    try:
        if kind in ("number", "integer") and isinstance(value, str):
            value = float(value.strip())
        if kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
            return value
        if kind == "integer" and isinstance(value, int | float) and not isinstance(value, bool) \
                and float(value).is_integer():
            return int(value)
    except ValueError:
        pass
    checks: dict[str, Callable[[Any], bool]] = {
        "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
        "object": lambda v: isinstance(v, dict), "list": lambda v: isinstance(v, list),
        "any": lambda v: True}
    if kind in checks and checks[kind](value):
        return value
    raise ValueError(f"input {spec.name!r} must be a {kind}, got {value!r}")
