"""Workflow definitions: the banking bot's workflows, validation errors, the allow-list, the
retry/back-off maths, input coercion, the rpa.yml settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.botdef import BotDefinitionError, load_bot
from services.botdef.workflows import (
    ApprovalSpec,
    BrowserSpec,
    HostAllowList,
    HttpSpec,
    RetryPolicy,
    RpaSettings,
    coerce_inputs,
    load_rpa_settings,
    parse_duration,
    parse_workflow,
    parse_workflows,
)
from services.rpa_runner.config import RunnerConfig, parse_setting

BANKING = Path(__file__).resolve().parents[2] / "bots" / "banking"
SETTINGS = RpaSettings(HostAllowList(("127.0.0.1", "api.bank.test")), {"bank": "http://x"})


def workflow(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "w", "steps": list(steps), **extra}


def issues(doc: dict[str, Any], known: tuple[str, ...] = ("w",)) -> list[str]:
    _, found = parse_workflow("w", doc, SETTINGS, known)
    return [f"{i.field}: {i.message}" for i in found]


def test_banking_workflows_load_and_match_the_flows() -> None:
    bot = load_bot(BANKING)
    rpa = load_rpa_settings(BANKING)
    workflows = parse_workflows(bot.raw["workflows"], rpa)
    assert sorted(workflows) == ["block_card", "get_balance", "transfer_funds"]
    transfer = workflows["transfer_funds"]
    assert [i.name for i in transfer.inputs] == ["amount", "recipient"]
    assert "reference" in transfer.outputs
    assert "balance" in workflows["get_balance"].outputs
    kinds = {s.kind for s in transfer.steps}
    assert {"http", "branch", "approval", "browser", "fail"} <= kinds
    book = transfer.step("book")
    assert isinstance(book.spec, HttpSpec) and book.compensate is not None
    assert book.retry.max_attempts == 4 and book.retry.non_retryable_statuses == (400, 422)
    assert isinstance(transfer.step("file_record").spec, BrowserSpec)
    approve = transfer.step("approve").spec
    assert isinstance(approve, ApprovalSpec) and approve.timeout == 1800
    assert approve.escalation[0].timeout == 7200
    assert rpa.allowed_hosts.allows("http://127.0.0.1:8099/transfers")


def test_a_valid_workflow_with_every_kind() -> None:
    doc = workflow(
        {"id": "a", "http": {"url": "http://127.0.0.1/x", "method": "post",
                             "outputs": {"id": "body.id"}},
         "compensate": {"http": {"url": "{{ settings.bank }}/undo/{{ steps.a.outputs.id }}"}}},
        {"id": "b", "set": {"n": "vars.n + 1", "flag": True}},
        {"id": "c", "transform": {"t": "upper(inputs.name)"}},
        {"id": "d", "branch": [{"if": "vars.n < 3", "goto": "b"}, {"else": "e"}]},
        {"id": "e", "wait": "1.5s", "when": "inputs.slow"},
        {"id": "f", "subworkflow": {"name": "other", "inputs": {"x": "{{ vars.n }}"}}},
        {"id": "g", "approval": {"timeout": "10m", "message": "ok {{ inputs.name }}?",
                                 "escalation": [{"timeout": "1h", "approvers": ["boss"]}]}},
        {"id": "h", "notify": "Done {{ steps.a.outputs.id }}"},
        {"id": "i", "browser": {"actions": [
            {"goto": "http://127.0.0.1/form"}, {"fill": {"selector": "#p",
                                                          "value": "{{ secrets.PIN }}"}},
            {"click": "#go"}, {"wait_for": {"selector": "#ok", "state": "attached"}},
            {"extract_text": {"selector": "#id", "output": "record"}}]}},
        {"id": "j", "fail": "no"},
        inputs={"name": "string", "slow": {"type": "boolean", "required": False}},
        outputs={"id": "steps.a.outputs.id"}, max_steps=20)
    parsed, found = parse_workflow("w", doc, SETTINGS, ("w", "other"))
    assert found == []
    assert parsed is not None and len(parsed.steps) == 10 and parsed.max_steps == 20
    assert parsed.step("e").spec.seconds == 1.5  # type: ignore[union-attr]
    assert parsed.step("a").spec.method == "POST"  # type: ignore[union-attr]


@pytest.mark.parametrize(("doc", "expected"), [
    (workflow({"id": "a", "fail": "x"}, {"id": "a", "fail": "y"}), "duplicate step id 'a'"),
    (workflow({"id": "a", "branch": [{"else": "nowhere"}]}), "goto: unknown step 'nowhere'"),
    (workflow({"id": "a", "set": {"x": "steps.zz.outputs.y"}}), "unknown step 'zz'"),
    (workflow({"id": "a", "set": {"x": "inputs.q"}}, inputs={"p": "string"}),
     "unknown input 'q'"),
    (workflow({"id": "a", "set": {"x": "settings.nope"}}), "unknown setting 'nope'"),
    (workflow({"id": "a", "set": {"x": "os.system"}}), "unknown name 'os'"),
    (workflow({"id": "a", "set": {"x": "1 +"}}), "expected a value"),
    (workflow({"id": "a", "notify": "{{ secrets.TOKEN }}"}), "secrets may only be used"),
    (workflow({"id": "a", "set": {"x": "secrets.TOKEN"}}), "secrets may only be used"),
    (workflow({"id": "a", "wait": "soon"}), "not a duration"),
    (workflow({"id": "a", "http": {"url": "http://10.0.0.1/admin"}}), "not an http(s) URL on"),
    (workflow({"id": "a", "http": {"url": "file:///etc/passwd"}}), "not an http(s) URL on"),
    (workflow({"id": "a", "browser": {"actions": [{"goto": "http://evil.test/"}]}}),
     "allow-list"),
    (workflow({"id": "a", "subworkflow": {"name": "ghost"}}), "unknown workflow 'ghost'"),
    (workflow({"id": "a", "http": {"url": "http://127.0.0.1/", "outputs": {"x": "a[?"}}}),
     "invalid JMESPath"),
    (workflow({"id": "a", "fail": "x", "set": {"y": 1}}), "exactly one of"),
    (workflow({"id": "a"}), "exactly one of"),
    (workflow({"id": "end", "fail": "x"}), "'end' is reserved"),
    (workflow({"id": "a", "http": {"url": "http://127.0.0.1/", "json": {}, "body": "x"}}),
     "not both"),
    ({"name": "w", "steps": []}, "should be non-empty"),
    (workflow({"id": "a", "fail": "x", "retry": {"max_attempts": 0}}), "less than the minimum"),
    (workflow({"id": "a", "fail": "x"}, colour="red"), "colour"),
    (workflow({"id": "a", "compensate": {"approval": {"timeout": 1}}, "fail": "x"}),
     "approval"),
])
def test_validation_errors(doc: dict[str, Any], expected: str) -> None:
    found = issues(doc)
    assert any(expected in issue for issue in found), found


def test_parse_workflows_raises_all_issues_at_once() -> None:
    raw = {"a": workflow({"id": "x", "wait": "soon"}),
           "b": workflow({"id": "y", "set": {"v": "nope"}})}
    with pytest.raises(BotDefinitionError) as caught:
        parse_workflows(raw, SETTINGS)
    assert {i.file for i in caught.value.issues} == {"workflows/a", "workflows/b"}


@pytest.mark.parametrize(("url", "allowed"), [
    ("http://127.0.0.1:8080/x", True),
    ("https://api.bank.test/x", True),
    ("http://API.BANK.TEST./x", True),
    ("http://127.0.0.2/", False),
    ("http://2130706433/", False),
    ("http://127.1/", False),
    ("http://localhost/", False),
    ("http://api.bank.test.evil.com/", False),
    ("http://evil.com#@127.0.0.1/", False),
    ("http://127.0.0.1@evil.com/", False),
    ("ftp://127.0.0.1/", False),
    ("gopher://127.0.0.1/", False),
    ("http://[::1]/", False),
    ("not a url", False),
])
def test_allow_list(url: str, allowed: bool) -> None:
    assert SETTINGS.allowed_hosts.allows(url) is allowed


def test_allow_list_ports_and_wildcards() -> None:
    hosts = HostAllowList(("svc.test:8443", "*.corp.test", "[::1]:9000"))
    assert hosts.allows("https://svc.test:8443/a")
    assert not hosts.allows("https://svc.test/a")
    assert hosts.allows("http://a.b.corp.test/")
    assert not hosts.allows("http://corp.test/")
    assert hosts.allows("http://[::1]:9000/")
    assert not hosts.allows("http://[::1]:9001/")


def test_retry_backoff_maths() -> None:
    policy = RetryPolicy(max_attempts=5, initial_interval=0.5, backoff_coefficient=2.0,
                         max_interval=3.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.allows_another(4) and not policy.allows_another(5)
    flat = RetryPolicy(max_attempts=3, initial_interval=1.0, backoff_coefficient=1.0)
    assert [flat.delay(n) for n in (1, 2, 3)] == [1.0, 1.0, 1.0]
    huge = RetryPolicy(initial_interval=1.0, backoff_coefficient=10.0, max_interval=60.0)
    assert huge.delay(10_000) == 60.0


@pytest.mark.parametrize(("raw", "seconds"), [
    (5, 5.0), (1.5, 1.5), ("250ms", 0.25), ("2s", 2.0), ("3m", 180.0), ("1h", 3600.0),
    ("1d", 86400.0), ("10", 10.0),
])
def test_durations(raw: Any, seconds: float) -> None:
    assert parse_duration(raw) == seconds


def test_inputs_are_checked_and_converted() -> None:
    parsed, _ = parse_workflow("w", workflow(
        {"id": "a", "fail": "x"},
        inputs={"amount": "number", "n": "integer", "who": "string",
                "kind": {"type": "string", "required": False, "default": "checking"},
                "note": {"type": "string", "required": False}}), SETTINGS)
    assert parsed is not None
    values = coerce_inputs(parsed, {"amount": "12.5", "n": 3.0, "who": "anna", "extra": 1})
    assert values == {"amount": 12.5, "n": 3, "who": "anna", "kind": "checking", "extra": 1}
    with pytest.raises(ValueError, match="'amount' is required"):
        coerce_inputs(parsed, {"n": 1, "who": "x"})
    with pytest.raises(ValueError, match="must be a number"):
        coerce_inputs(parsed, {"amount": "lots", "n": 1, "who": "x"})
    with pytest.raises(ValueError, match="must be a integer"):
        coerce_inputs(parsed, {"amount": 1, "n": 1.5, "who": "x"})


def test_rpa_settings_file_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "rpa.yml").write_text("version: '1'\nallowed_hosts: [a.test]\n"
                                      "settings: {url: 'http://a.test', flag: true}\n")
    settings = load_rpa_settings(tmp_path).with_overrides({"url": "http://b.test"})
    assert settings.settings == {"url": "http://b.test", "flag": True}
    assert settings.allowed_hosts.entries == ("a.test",)
    (tmp_path / "rpa.yml").write_text("allowed_hosts: 3\n")
    with pytest.raises(BotDefinitionError, match="allowed_hosts"):
        load_rpa_settings(tmp_path)
    assert load_rpa_settings(tmp_path / "none") == RpaSettings()


def test_runner_config_settings() -> None:
    config = RunnerConfig(settings=("url=http://x:1/a=b", "flag=false", "n=12"))
    assert config.setting_overrides() == {"url": "http://x:1/a=b", "flag": False, "n": 12}
    assert parse_setting("name= text ") == ("name", " text ")
