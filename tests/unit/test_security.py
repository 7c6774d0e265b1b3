"""Security building blocks (docs/security.md): PII redaction and its logging processor, the
regex safety check (bot regexes vs ReDoS), template hardening, and, on the gateway's HTTP
app with in-memory fakes: audit events of every admin action, the failed-authentication
limit per client address, and hostile bodies."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer
from jinja2.exceptions import SecurityError
from prometheus_client import CollectorRegistry

from services.botdef import BotDefinitionError, load_bot, template_environment
from services.botdef.templates import template_problems
from services.common.logging import configure_logging, get_logger
from services.common.pii import (
    CARD,
    EMAIL,
    IBAN,
    PHONE,
    iban_valid,
    luhn_valid,
    redact,
    redact_value,
)
from services.common.regexsafety import compile_bot_regex, regex_problem
from services.dialogue.engine.render import MAX_RENDERED_CHARS, _render
from services.gateway import audit
from services.gateway.config import GatewayConfig
from services.gateway.http import GatewayMetrics, create_app
from services.gateway.http.state import STATE
from services.gateway.owners import MemoryBotOwners
from services.gateway.ports import Role
from services.nlu.engine import MAX_RULE_TEXT_CHARS, ModelLoadError, RuleExtractors
from tests.support.gateway import FakeDefinitions, FakeHub, FakeModels
from tests.support.memstores import InMemoryKeyStore, InMemoryWebhookStore, MemoryAuditLog

PEPPER = "test-pepper-0123456789abcdef"
BOOTSTRAP = "bootstrap-admin-key-0123456789"

# --- PII --------------------------------------------------------------------------------------

PII_CASES = [
    ("card 4111 1111 1111 1111 exp 12/27", f"card {CARD} exp 12/27"),
    ("4111-1111-1111-1111", CARD),
    ("pay with 5500000000000004, thanks", f"pay with {CARD}, thanks"),
    ("4111 1111 1111 1111 12", f"{CARD} 12"),  # the card found inside a longer digit run
    ("amex 3782 822463 10005", f"amex {CARD}"),
    ("iban DE89 3704 0044 0532 0130 00 please", f"iban {IBAN} please"),
    ("de89370400440532013000", IBAN),
    ("GB82 WEST 1234 5698 7654 32", IBAN),
    ("NL91ABNA0417164300.", f"{IBAN}."),
    ("mail John.Doe+bank@example.co.uk!", f"mail {EMAIL}!"),
    ("call +49 30 1234567 now", f"call {PHONE} now"),
    ("call 0171 2345678", f"call {PHONE}"),
    ("(030) 123-4567", PHONE),
    ("555-123-4567", PHONE),
    ("0044 20 7946 0958", PHONE),
]
NOT_PII = [
    "send 50 to anna", "amount 1234.56 EUR", "10.000.000", "on 2024-01-15 12:30",
    "15.01.2024", "ts 2026-01-01T10:00:00Z", "id 3f0c1234abcd", "ip 192.168.100.200",
    "4111 1111 1111 1112",  # fails Luhn, and 16 digits is too long for a phone number
    "reference TX-1", "version 1.2.3", "call me at 12:30", "user@localhost",
]


@pytest.mark.parametrize(("text", "expected"), PII_CASES)
def test_pii_is_replaced_by_its_label(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert redact(expected) == expected  # idempotent


@pytest.mark.parametrize("text", NOT_PII)
def test_text_without_pii_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_checksums() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89370400440532013000") and not iban_valid("DE89370400440532013001")
    assert IBAN not in redact("DE89 3704 0044 0532 0130 01")  # fails mod 97


def test_redact_value_walks_nested_values_and_keeps_identifier_keys() -> None:
    value = {"text": "mail a@b.io", "message_id": "4111111111111111", "n": 4,
             "nested": [{"v": "+44 20 7946 0958"}, ("DE89370400440532013000",)]}
    assert redact_value(value, keep={"message_id"}) == {
        "text": f"mail {EMAIL}", "message_id": "4111111111111111", "n": 4,
        "nested": [{"v": PHONE}, (IBAN,)]}


@pytest.mark.parametrize("chunk", ["1 ", "DE12 ", "a@", "+4", "4111 1111 ", "x" * 99 + "1"])
def test_redaction_time_is_linear_on_hostile_text(chunk: str) -> None:
    text = chunk * (200_000 // len(chunk))
    started = time.perf_counter()
    redact(text)
    assert time.perf_counter() - started < 2.0  # ~1 µs per character in the worst case


def test_logs_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("test", "INFO")
    get_logger("t").info("user_said", text="my card is 4111 1111 1111 1111",
                         extra={"mail": "jane@example.com"}, correlation_id="12345678")
    logging.getLogger("library").warning("call %s", "+44 20 7946 0958")
    try:
        raise ValueError("bad iban DE89370400440532013000")
    except ValueError:
        get_logger("t").exception("failed")
    out = capsys.readouterr().out
    for secret in ("4111", "jane@example.com", "7946", "DE8937"):
        assert secret not in out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    said = next(line for line in lines if line["event"] == "user_said")
    assert said["text"] == f"my card is {CARD}" and said["extra"] == {"mail": EMAIL}
    assert said["correlation_id"] == "12345678"  # generated ids are left alone
    assert f"call {PHONE}" in out and IBAN in out
    structlog.reset_defaults()


# --- regexes ----------------------------------------------------------------------------------

CATASTROPHIC = [r"(a+)+$", r"(a*)*b", r"(\w+\s?)+$", r"(a|aa)+$", r"([a-z]+)*@", r"(x+x+)+y",
                r"\d+\d+x", r"(\d+)(\d+)x", r".*.*=.*", r"\w+ ?\w+", r"(a?)+b",
                r"(a?){25}a{25}", r"(a{1,3}){2,}", r"^(([a-z])+.)+[A-Z]([a-z])+$"]
"""Exponential or high polynomial for a backtracking engine; linear for RE2."""
REFUSED = {r"(a)\1": "backreference `\\1`", r"(?P<x>a)(?P=x)": "backreference `(?P=name)`",
           r"a(?=b)": "lookahead", r"a(?!b)": "negative lookahead", r"(?<=a)b": "lookbehind",
           r"(?<!a)b": "negative lookbehind", r"(a)?(?(1)b|c)": "conditional",
           r"(?>a+)b": "atomic group", r"a++b": "possessive quantifier",
           r"[\W\d]": "`\\W` inside brackets"}
SAFE = [r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
        r"(?:\d{3}[ -]?)+$", r"(?:foo|bar)+x", r"\w+@\w+\.\w+", r"\d+(?:[.,]\d+)?",
        r"\d{4}(?:[ -]?\d{4}){3}", r"[A-Z]{3}-\d{4,6}", r"(?i)\b(?:visa|mastercard)\b",
        r"^\+?\d{7,15}$", r"[^@\s]+@[^@\s]+", r"(\d|\w)*x"]


@pytest.mark.parametrize("pattern", CATASTROPHIC + SAFE)
def test_bot_regexes_run_with_re2_and_match_as_python_does(pattern: str) -> None:
    import re

    assert regex_problem(pattern) is None
    compiled = compile_bot_regex(pattern)
    assert type(compiled).__module__ == "re2"  # no backtracking: linear time by construction
    for text in ("a" * 2000 + "!", "1" * 2000 + "x", "ab " * 700, "A1" * 1000):
        compiled.search(text)
    for text in ("aaab", "DE12 3456 7890 12", "x@y.io", "12.50", "Visa card", "aaaa=", "aa1"):
        ours, python = compiled.search(text), re.search(pattern, text)
        assert (ours and ours.group(0)) == (python and python.group(0)), text


@pytest.mark.parametrize(("pattern", "construct"), REFUSED.items())
def test_constructs_re2_cannot_run_are_named(pattern: str, construct: str) -> None:
    problem = regex_problem(pattern)
    assert problem is not None and problem.startswith(construct), problem
    assert "not allowed" in problem


def test_shorthand_classes_keep_their_unicode_meaning() -> None:
    import re

    for pattern in (r"\w+", r"\d+", r"\s+", r"\W+", r"\D+", r"\S+", r"[\w-]+", r"[^\w]+",
                    r"[\d]+", r"[\D]+", r"[]a]+", r"\\w"):
        for text in ("héllo wörld", "٣٤ 12", "a\u00a0b\u2028c", "-x-", "]a]", "\\w"):
            found = [m.group(0) for m in compile_bot_regex(pattern).finditer(text)]
            assert found == re.findall(pattern, text), (pattern, text)
    # \b is RE2's: only ASCII letters, digits and _ are word characters around it
    assert compile_bot_regex(r"\bx").search("éx") is not None


def _bot(root: Path, *, entity_regex: str = r"\d{5}", slot_regex: str = r"[A-Z]{2}\d+",
         response: str = "Hi {{ slots.code }}", privacy: str = "") -> Path:
    (root / "data").mkdir(parents=True)
    (root / "domain").mkdir()
    (root / "bot.yml").write_text(f'version: "1"\nname: sec\n{privacy}')
    (root / "data" / "nlu.yml").write_text(
        'version: "1"\nintents:\n  - name: greet\n    examples: [hi, hello]\n'
        f"entities:\n  - name: zip\n    regex: ['{entity_regex}']\n")
    (root / "domain" / "d.yml").write_text(
        'version: "1"\nslots:\n  code:\n    type: text\n'
        f"    regex: '{slot_regex}'\n"
        f"responses:\n  utter_hi:\n    - '{response}'\n")
    return root


def test_the_loader_refuses_unsafe_entity_and_slot_regexes(tmp_path: Path) -> None:
    assert load_bot(_bot(tmp_path / "ok")).name == "sec"
    with pytest.raises(BotDefinitionError) as caught:
        load_bot(_bot(tmp_path / "bad", entity_regex=r"(\d)\1", slot_regex=r"(?<!x)[A-Z]+"))
    issues = {issue.field: issue for issue in caught.value.issues}
    entity, slot = issues["entities[0].regex[0]"], issues["slots.code.regex"]
    assert "backreference `\\1` is not allowed" in entity.message
    assert entity.file.endswith("data/nlu.yml") and entity.line == 7
    assert slot.message.startswith("unsafe regex") and "negative lookbehind" in slot.message
    assert slot.file.endswith("domain/d.yml") and slot.line == 5


def test_privacy_section_turns_redaction_off(tmp_path: Path) -> None:
    assert load_bot(_bot(tmp_path / "default")).redacts_pii is True
    kept = load_bot(_bot(tmp_path / "keep", privacy="privacy:\n  redact_pii: false\n"))
    assert kept.redacts_pii is False
    with pytest.raises(BotDefinitionError, match="privacy"):
        load_bot(_bot(tmp_path / "typo", privacy="privacy:\n  redact: false\n"))


def test_the_nlu_refuses_unsafe_rule_regexes_and_bounds_the_text() -> None:
    with pytest.raises(ModelLoadError, match="unsafe regex"):
        RuleExtractors.from_config({"regex": {"code": [r"(?=a)a"]}})
    rules = RuleExtractors.from_config({"regex": {"code": [r"\bZ\d{3}\b"]}})
    text = "x " * MAX_RULE_TEXT_CHARS + "Z123"
    assert rules.extract(text) == []  # beyond the bound: not searched
    assert [e.value for e in rules.extract("code Z123")] == ["Z123"]


# --- templates --------------------------------------------------------------------------------


@pytest.mark.parametrize("source", [
    "{% for a in slots.x %}{% for b in slots.y %}{% endfor %}{% endfor %}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{% call x() %}{% endcall %}",
    "{% for x in slots.x recursive %}{{ loop(x) }}{% endfor %}",
])
def test_runaway_templates_are_refused_at_load(source: str) -> None:
    assert template_problems(template_environment(), source, {"x", "y"})


@pytest.mark.parametrize("source", [
    "{{ 'x'.ljust(10**9) }}", "{{ '%0999999999d' % 1 }}", "{{ '{:>999999999}'.format(1) }}",
    "{{ range(10**7)|list|length }}", "{{ 'x' * 10**9 }}", "{{ 9 ** 999 }}",
    "{{ 'ab'|replace('a', 'x' * 99999)|replace('x', 'y' * 99999) }}",
])
def test_the_sandbox_stops_huge_values(source: str) -> None:
    with pytest.raises(SecurityError):
        template_environment().from_string(source).render()


@pytest.mark.parametrize("source", ["{{ ''.__class__.__mro__ }}",
                                    "{{ slots.__init__.__globals__ }}"])
def test_private_attributes_render_empty(source: str) -> None:
    assert template_environment().from_string(source).render(slots={}) == ""


def test_a_template_that_writes_too_much_is_not_sent() -> None:
    source = "{% for i in range(10000) %}{{ 'x' * 1000 }}{% endfor %}done"
    template = template_environment().from_string(source)
    started = time.perf_counter()
    assert _render(template, source, {}) == "done"
    assert time.perf_counter() - started < 2.0
    assert MAX_RENDERED_CHARS < 10000 * 1000


# --- the gateway's HTTP app (in-memory fakes) -------------------------------------------------


@dataclass
class Served:
    client: TestClient[Any, Any]
    audit: MemoryAuditLog
    models: FakeModels

    async def key(self, role: Role, tenant: str = "t1", bots: tuple[str, ...] = ("alpha",)
                  ) -> tuple[str, str]:
        app = self.client.server.app  # type: ignore[attr-defined]
        issued = await app[STATE].auth.issue(tenant, bots, role)
        return issued.record.key_id, issued.secret

    @property
    def owners(self) -> MemoryBotOwners:
        owners = self.client.server.app[STATE].auth.owners  # type: ignore[attr-defined]
        assert isinstance(owners, MemoryBotOwners)
        return owners


def _config(**overrides: Any) -> GatewayConfig:
    return replace(GatewayConfig(api_key_pepper=PEPPER, admin_bootstrap_key=BOOTSTRAP,
                                 sync_wait_s=0.5, rate_limit_rps=1000.0, rate_limit_burst=1000),
                   **overrides)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    log, models = MemoryAuditLog(), FakeModels()
    app = create_app(FakeHub(), InMemoryKeyStore(),
                     _config(auth_failures_burst=3, auth_failures_per_s=0.01,
                             client_ip_header="X-Forwarded-For"),
                     GatewayMetrics.create(CollectorRegistry()), models=models,
                     definitions=FakeDefinitions(), webhooks=InMemoryWebhookStore(), audit=log)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Served(client, log, models)
    finally:
        await client.close()


def _auth(key: str, ip: str = "10.0.0.1") -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "X-Forwarded-For": f"203.0.113.9, {ip}"}


BOT_YML = 'version: "1"\nname: alpha\n'
DATA_YML = 'version: "1"\nintents:\n  - name: greet\n    examples: [hi, hello]\n'


async def test_every_admin_action_is_audited(served: Served) -> None:
    admin_id, admin = await served.key(Role.ADMIN)
    c, h = served.client, {**_auth(admin), "X-Correlation-Id": "corr-1"}
    created = await c.post("/v1/admin/keys", json={"tenant": "t1", "bots": ["alpha"],
                                                    "role": "client"}, headers=h)
    assert created.status == 201
    new_id = (await created.json())["key_id"]
    assert (await c.delete(f"/v1/admin/keys/{new_id}", headers=h)).status == 200
    assert (await c.delete(f"/v1/admin/keys/{new_id}", headers=h)).status == 200  # no-op
    assert (await c.put("/v1/admin/bots/alpha/model", json={"version": "v2"},
                        headers=h)).status == 200
    deployed = await c.put("/v1/admin/bots/alpha/definition", headers=h, json={
        "files": {"bot.yml": BOT_YML, "data/nlu.yml": DATA_YML}})
    assert deployed.status == 200, await deployed.text()
    hook = {"url": "https://user:pw@hooks.example.com/in?token=abc", "secret": "s" * 32}
    assert (await c.put("/v1/admin/bots/alpha/webhook", json=hook, headers=h)).status == 200
    assert (await c.delete("/v1/admin/bots/alpha/webhook", headers=h)).status == 200
    # refused or failed actions are not audited
    assert (await c.put("/v1/admin/bots/alpha/model", json={"version": "nope"},
                        headers=h)).status == 404

    events = served.audit.events
    # the first deployment by a key of t1 records t1 as the bot's owner (bot.owner_set)
    assert [e.action for e in events] == [audit.KEY_CREATED, audit.KEY_REVOKED,
                                          audit.MODEL_ACTIVATED, audit.BOT_OWNER_SET,
                                          audit.BOT_DEPLOYED, audit.WEBHOOK_SET,
                                          audit.WEBHOOK_DELETED]
    assert all(e.actor_key_id == admin_id and e.actor_tenant == "t1" and e.tenant == "t1"
               and e.correlation_id == "corr-1" and e.at_unix_ms > 0 for e in events)
    assert events[0].target == {"key_id": new_id, "tenant": "t1", "bots": ["alpha"],
                                "role": "client"}
    assert events[2].target == {"bot_id": "alpha", "version": "v2"}
    assert events[3].target == {"bot_id": "alpha", "tenant": "t1", "from": None,
                                "recorded_before": False}
    assert events[4].target["bot_id"] == "alpha" and events[4].target["revision"] == 1
    assert events[5].target == {"bot_id": "alpha", "host": "hooks.example.com"}  # no secrets
    assert len({e.event_id for e in events}) == len(events)


async def test_the_bootstrap_key_is_audited_as_the_platform(served: Served) -> None:
    response = await served.client.post(
        "/v1/admin/keys", json={"tenant": "t9", "bots": ["*"], "role": "admin"},
        headers=_auth(BOOTSTRAP))
    assert response.status == 201
    assert served.audit.events[-1].tenant == "t9"
    await served.client.put("/v1/admin/bots/alpha/model", json={"version": "v1"},
                            headers=_auth(BOOTSTRAP))
    last = served.audit.events[-1]
    assert (last.tenant, last.actor_key_id, last.actor_tenant) == \
        (audit.PLATFORM_TENANT, "bootstrap", "*")
    # a bot with an owner: its tenant's, whoever acts
    served.owners.records["alpha"] = "t9"
    await served.client.put("/v1/admin/bots/alpha/model", json={"version": "v2"},
                            headers=_auth(BOOTSTRAP))
    assert served.audit.events[-1].tenant == "t9"


async def test_an_audit_failure_is_logged_not_raised(served: Served,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("test", "INFO")

    async def broken(event: Any) -> None:
        raise ConnectionError("bus down")

    served.audit.record = broken  # type: ignore[method-assign]
    response = await served.client.put("/v1/admin/bots/alpha/model", json={"version": "v1"},
                                       headers=_auth(BOOTSTRAP))
    assert response.status == 200
    assert "audit_publish_failed" in capsys.readouterr().out
    structlog.reset_defaults()


async def test_failed_authentication_is_limited_per_client_address(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("test", "INFO")
    _, good = await served.key(Role.AGENT)
    url = "/v1/bots/alpha/conversations/c1/transcript"
    for attempt in range(3):
        guess = f"bfk_00000000000000{attempt:02d}_guessedsecret"
        assert (await served.client.get(url, headers=_auth(guess, "10.9.9.9"))).status == 401
    for bad in ("bfk_0_x", "garbage", ""):
        blocked = await served.client.get(url, headers=_auth(bad, "10.9.9.9"))
        assert blocked.status == 429 and int(blocked.headers["Retry-After"]) >= 1
        assert "failed authentication" in (await blocked.json())["detail"]
    # the failed attempts are throttled, not the address: one bad client behind a NAT does not
    # lock out the valid keys of everyone else behind it ...
    assert (await served.client.get(url, headers=_auth(good, "10.9.9.9"))).status == 200
    assert (await served.client.get(url, headers=_auth("bfk_0_y", "10.9.9.9"))).status == 429
    # ... and other addresses go on as before
    assert (await served.client.get(url, headers=_auth(good, "10.1.1.1"))).status == 200
    assert (await served.client.get(url, headers=_auth("nope", "10.1.1.1"))).status == 401
    out = capsys.readouterr().out
    failures = [json.loads(line) for line in out.splitlines() if '"auth_failed"' in line]
    assert len(failures) == 4 and failures[0]["client"] == "10.9.9.9"
    assert failures[0]["key_id"] == "0000000000000000" and "guessedsecret" not in out
    assert '"auth_blocked"' in out
    structlog.reset_defaults()


@pytest.mark.parametrize(("body", "field", "message"), [
    (b'{"text": "hi \xff\xfe"}', "body", "not valid JSON"),
    (b'{"text": "\\ud800"}', "body", "lone surrogate"),
    (b"[" * 40 + b"]" * 40, "body", "nested deeper than 32"),
    (b"[" * 100_000 + b"]" * 100_000, None, None),  # over the size limit: 413
    (json.dumps({"text": "a\x00b"}).encode(), "text", "control characters"),
    (json.dumps({"text": "a\x1b[31mred"}).encode(), "text", "control characters"),
    (json.dumps({"text": "a\u0085b"}).encode(), "text", "control characters"),
    (json.dumps({"text": "hi", "metadata": {"k": "v\x07"}}).encode(), "metadata", "control"),
])
async def test_hostile_bodies_are_refused(served: Served, body: bytes, field: str | None,
                                          message: str | None) -> None:
    _, key = await served.key(Role.CLIENT)
    response = await served.client.post("/v1/bots/alpha/conversations/c1/messages", data=body,
                                         headers={**_auth(key), "Content-Type":
                                                  "application/json"})
    if field is None:
        assert response.status == 413
        return
    assert response.status == 400, await response.text()
    errors = (await response.json())["errors"]
    assert errors[0]["field"] == field and message in errors[0]["message"]


async def test_tabs_and_line_breaks_are_text(served: Served) -> None:
    _, key = await served.key(Role.CLIENT)
    response = await served.client.post("/v1/bots/alpha/conversations/c1/messages",
                                         json={"text": "line 1\r\nline\t2 \u200f\u05e9"},
                                         headers=_auth(key))
    assert response.status == 200
