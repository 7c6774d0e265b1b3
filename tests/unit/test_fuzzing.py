"""Property-based fuzzing (docs/security.md, "Fuzzing"):

- the gateway's HTTP API against its own OpenAPI document with schemathesis (in process, with
  in-memory fakes behind it): no 5xx, and every response matches the document (status, content
  type, headers, body schema);
- the bot-definition loader on random and mutated YAML: always a BotDefinition or a
  BotDefinitionError, never another exception, never slow;
- the workflow expression language on random sources, expressions and templates: only
  ExpressionError, never slow.

The example counts are bounded and the generation is derandomized (the same cases on every
run), so the file runs in well under a minute; `BOTFACTORY_FUZZ_EXAMPLES=2000 pytest
tests/unit/test_fuzzing.py` runs a longer, randomized session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from schemathesis import checks as st_checks

from services.botdef import BotDefinition, BotDefinitionError, load_bot
from services.botdef.expressions import (
    FUNCTIONS,
    ExpressionError,
    Resolver,
    evaluate_source,
    parse_template,
)
from services.common.errors import NotFound
from services.common.pb.botfactory.v1 import rpa_pb2
from services.common.reviewqueue import ReviewQueue
from services.gateway.config import GatewayConfig
from services.gateway.http import GatewayMetrics, create_app
from services.gateway.http.bot_versions import BOT_VERSIONS
from services.gateway.http.model_versions import MODEL_ROLLOUTS
from services.gateway.http.openapi import build_document
from services.gateway.http.review import REVIEW
from services.gateway.http.routes import ROUTES
from services.gateway.http.trainings import TRAININGS
from tests.support.apicontract import CHECKS, SCHEMA, SEMANTIC, bounded
from tests.support.gateway import FakeDefinitions, FakeHub, FakeModels
from tests.support.memkv import MemoryKeyValue
from tests.support.memstores import (
    InMemoryKeyStore,
    InMemoryWebhookStore,
    MemoryBus,
    MemoryModelRollouts,
    MemoryTrainings,
)

ROOT = Path(__file__).resolve().parents[2]
BANKING = ROOT / "bots" / "banking"
# --- the HTTP API against /openapi.json -------------------------------------------------------

BOOTSTRAP = "bootstrap-admin-key-0123456789"


class FakeRuns:
    """The RPA runner's API in memory (services.gateway.runs.RunsApi)."""

    def __init__(self) -> None:
        self.runs: dict[str, rpa_pb2.Run] = {}

    async def start(self, request: rpa_pb2.StartRunRequest) -> rpa_pb2.Run:
        run_id = request.run_id or f"run-{len(self.runs)}"
        run = rpa_pb2.Run(run_id=run_id, bot_id=request.bot_id, workflow=request.workflow,
                          status="pending", inputs_json=request.inputs_json or "{}")
        return self.runs.setdefault(run_id, run)

    async def get(self, run_id: str) -> rpa_pb2.Run:
        if run_id not in self.runs:
            raise NotFound(f"no run {run_id!r}")
        return self.runs[run_id]

    async def list(self, request: rpa_pb2.ListRunsRequest) -> list[rpa_pb2.Run]:
        return [r for r in self.runs.values() if r.bot_id == request.bot_id]

    async def cancel(self, request: rpa_pb2.CancelRunRequest) -> rpa_pb2.Run:
        return await self._set(request.run_id, "cancelled")

    async def decide(self, decision: rpa_pb2.ApprovalDecision, *,
                     approved: bool) -> rpa_pb2.Run:
        return await self._set(decision.run_id, "running" if approved else "failed")

    async def retry(self, run_id: str) -> rpa_pb2.Run:
        return await self._set(run_id, "pending")

    async def _set(self, run_id: str, status: str) -> rpa_pb2.Run:
        run = await self.get(run_id)
        run.status = status
        return run


@pytest.fixture(scope="module")
def api_url() -> Iterator[str]:
    """The gateway's app on a real port, in its own thread and event loop."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, Any] = {}

    async def start() -> None:
        config = GatewayConfig(api_key_pepper="fuzz-pepper-0123456789", sync_wait_s=0.2,
                               admin_bootstrap_key=BOOTSTRAP, rate_limit_rps=1e6,
                               rate_limit_burst=1_000_000, auth_failures_burst=1_000_000,
                               visitor_token_secret="fuzz-visitor-secret-0123456789abcdef")
        app = create_app(FakeHub(), InMemoryKeyStore(), config,
                         GatewayMetrics.create(CollectorRegistry()), models=FakeModels(),
                         definitions=FakeDefinitions(), webhooks=InMemoryWebhookStore(),
                         runs=FakeRuns())
        app[MODEL_ROLLOUTS] = MemoryModelRollouts()
        app[BOT_VERSIONS] = MemoryBus()  # type: ignore[assignment]
        app[REVIEW] = ReviewQueue(MemoryKeyValue())  # type: ignore[arg-type]
        app[TRAININGS] = MemoryTrainings()
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box["runner"] = runner
        box["port"] = runner.addresses[0][1]

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(20)
    try:
        yield f"http://127.0.0.1:{box['port']}"
    finally:
        asyncio.run_coroutine_threadsafe(box["runner"].cleanup(), loop).result(20)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(20)
        loop.close()


# The channel routes keep their settings on the bus: tests/integration/test_api_contract.py
# fuzzes them against the real gateway.
@SCHEMA.exclude(tag="channels").parametrize()
@bounded(25, deadline_ms=None)
def test_the_api_matches_its_openapi_document(case: Any, api_url: str) -> None:
    """With an admin key of every tenant (so that every handler runs, not only the guard)."""
    response = case.call(base_url=api_url, timeout=20,
                         headers={"Authorization": f"Bearer {BOOTSTRAP}"})
    excluded = ([st_checks.positive_data_acceptance]
                if case.operation.definition.raw.get("operationId") in SEMANTIC else [])
    case.validate_response(response, checks=CHECKS, excluded_checks=excluded)


def test_the_document_served_is_the_one_fuzzed(api_url: str) -> None:
    import urllib.request

    with urllib.request.urlopen(f"{api_url}/openapi.json", timeout=10) as response:
        assert json.loads(response.read()) == build_document(ROUTES)


# --- the bot-definition loader ----------------------------------------------------------------

YAML_CHARS = st.sampled_from([*"abcnlty019 :-_[]{}&*!|>'\"#,?%@`~.\n\t",
                              "version", "name", "intents", "examples", "entities", "regex",
                              "slots", "responses", "flows", "steps", "say", "collect",
                              "workflow", "privacy", "redact_pii", "{{ slots.x }}", '"1"',
                              "&a", "*a", "!!python/object", "\n  ", "\n- ", "<<: *a"])
yaml_text = st.lists(YAML_CHARS, max_size=120).map("".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) |
    st.text(max_size=20) | st.sampled_from(["1", "greet", "utter_greet", "(a+)+$", "{{ x }}"]),
    lambda children: st.lists(children, max_size=4) |
    st.dictionaries(st.sampled_from(["version", "name", "intents", "examples", "entities",
                                     "regex", "slots", "responses", "flows", "type", "text",
                                     "steps", "trigger", "privacy", "x"]),
                    children, max_size=5),
    max_leaves=25)
FOLDER_FILES = ("bot.yml", "data/nlu.yml", "domain/d.yml", "workflows/w.yml")


def _load(files: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory(prefix="fuzzbot-") as tmp:
        root = Path(tmp)
        for name, text in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text, encoding="utf-8")
        try:
            assert isinstance(load_bot(root), BotDefinition)
        except BotDefinitionError as exc:
            assert exc.issues, "an error lists its issues"


@given(st.dictionaries(st.sampled_from(FOLDER_FILES), yaml_text, min_size=1))
@bounded(150)
def test_random_yaml_never_crashes_the_loader(files: dict[str, str]) -> None:
    _load(files)


@given(st.dictionaries(st.sampled_from(FOLDER_FILES), json_values, min_size=1))
@bounded(150)
def test_random_documents_never_crash_the_loader(files: dict[str, Any]) -> None:
    _load({name: json.dumps(value) for name, value in files.items()})


def _banking_files() -> dict[str, str]:
    found = {}
    for path in sorted(BANKING.rglob("*.yml")):
        relative = path.relative_to(BANKING).as_posix()
        if relative == "bot.yml" or relative.split("/")[0] in ("data", "domain", "workflows"):
            found[relative] = path.read_text(encoding="utf-8")
    return found


BANKING_FILES = _banking_files()


@given(st.sampled_from(sorted(BANKING_FILES)), st.integers(0, 10_000), st.integers(0, 40),
       yaml_text)
@bounded(40)
def test_mutated_bots_never_crash_the_loader(name: str, at: int, cut: int,
                                             insert: str) -> None:
    text = BANKING_FILES[name]
    at %= len(text) + 1
    _load({**BANKING_FILES, name: text[:at] + insert + text[at + cut:]})


def test_the_unmutated_bot_loads() -> None:
    assert load_bot(BANKING).name == "banking"


# --- the workflow expression language ---------------------------------------------------------


class Secrets(Resolver):
    def resolve(self, name: str) -> Any:
        if name == "token":
            return "s3cret"
        raise KeyError(f"no secret {name!r}")


def _scope() -> dict[str, Any]:
    return {"inputs": {"amount": 50, "name": "Ann", "items": [1, 2.5, "x", None, True],
                       "nested": {"a": {"b": [1, {"c": "d"}]}}},
            "vars": {"n": 3, "s": "x" * 1000, "big": 10 ** 300, "f": 1e308},
            "steps": {"debit": {"outputs": {"reference": "TX-1"}}}, "secrets": Secrets()}


def _only_expression_errors(run: Any) -> None:
    with contextlib.suppress(ExpressionError):
        run()


EXPRESSION_CHARS = st.sampled_from(
    [*"()[].,'\"+-*/%<>=! 0123456789_",
     "and", "or", "not", "in", "not in", "==", "!=", "<=", ">=", "//", "true", "false", "null",
     "inputs", "inputs.amount", "inputs.items", "inputs.nested.a", "vars.s", "vars.big",
     "vars.f", "steps.debit.outputs.reference", "secrets.token", "secrets.nope", "1e308",
     "99999999999", *(f"{name}(" for name in FUNCTIONS)])
expression_text = st.lists(EXPRESSION_CHARS, max_size=60).map(" ".join)

names = st.sampled_from(["inputs.amount", "inputs.name", "inputs.items", "inputs.nested",
                         "vars.n", "vars.s", "vars.big", "vars.f", "secrets.token",
                         "steps.debit.outputs.reference", "inputs.missing.deeper"])
literals = st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=False,
                     allow_infinity=False).map(repr), st.sampled_from(
                     ["'x'", "''", "true", "false", "null", "[]", "[1, 'a']", "1e308"]))
expressions = st.recursive(
    st.one_of(names, literals),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "//", "%", "==", "!=", "<", ">",
                                          "<=", ">=", "and", "or", "in", "not in"]), inner)
        .map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        inner.map(lambda e: f"not {e}"), inner.map(lambda e: f"-{e}"),
        st.tuples(st.sampled_from(sorted(FUNCTIONS)), st.lists(inner, max_size=3))
        .map(lambda t: f"{t[0]}({', '.join(t[1])})"),
        st.tuples(inner, inner).map(lambda t: f"{t[0]}[{t[1]}]"),
        st.lists(inner, max_size=4).map(lambda items: f"[{', '.join(items)}]")),
    max_leaves=12)


@given(expression_text)
@bounded(300, deadline_ms=500)
def test_random_sources_raise_only_expression_errors(source: str) -> None:
    _only_expression_errors(lambda: evaluate_source(source, _scope()))


@given(expressions)
@bounded(300, deadline_ms=500)
def test_random_expressions_raise_only_expression_errors(source: str) -> None:
    _only_expression_errors(lambda: evaluate_source(source, _scope()))


@given(st.lists(st.one_of(st.text(max_size=10), st.just("{{"), st.just("}}"),
                          expressions.map(lambda e: "{{ " + e + " }}")), max_size=6)
       .map("".join))
@bounded(200, deadline_ms=500)
def test_random_templates_raise_only_expression_errors(text: str) -> None:
    _only_expression_errors(lambda: parse_template(text).render(_scope()))


@pytest.mark.parametrize("source", ["(" * 3000 + "1" + ")" * 3000, "-" * 1999 + "1",
                                    "not " * 499 + "true", "[" * 999 + "]" * 999,
                                    "1" + "+1" * 999, "'x' * 99999"])
def test_hostile_expressions_fail_cleanly(source: str) -> None:
    with pytest.raises(ExpressionError):
        evaluate_source(source, _scope())
    with pytest.raises(ExpressionError):
        parse_template("{{ " + source + " }}").render(_scope())
