"""Audit events on the bus (docs/security.md, "Audit"): every admin action through the gateway
(key created / revoked, bot deployed, model activated, webhook set / deleted) is published to
`events.audit.<tenant>` on stream EVENTS, with the actor's key id, the action, the target, the
time and the request's correlation id."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from botfactory.local.nats_server import NatsServer
from services.common.modelstore import upload
from services.common.nats import connect
from tests.support.stack import BOOTSTRAP, running_stack

ROOT = Path(__file__).resolve().parents[2]


def banking_files() -> dict[str, str]:
    folder = ROOT / "bots" / "banking"
    files = {"bot.yml": (folder / "bot.yml").read_text(encoding="utf-8")}
    for path in sorted(folder.rglob("*.yml")):
        relative = path.relative_to(folder).as_posix()
        if relative.split("/")[0] in ("data", "domain", "workflows"):
            files[relative] = path.read_text(encoding="utf-8")
    return files


async def test_admin_actions_are_published_as_audit_events(nats_server: NatsServer,
                                                           tiny_banking_model: Path) -> None:
    started_ms = int(time.time() * 1000)
    async with running_stack(nats_server.url, tiny_banking_model) as stack:
        session = stack.session
        assert session is not None

        async def call(method: str, path: str, key: str, correlation: str,
                       body: Any = None) -> dict[str, Any]:
            headers = {"Authorization": f"Bearer {key}", "X-Correlation-Id": correlation}
            async with session.request(method, f"{stack.base_url}{path}", json=body,
                                       headers=headers) as response:
                assert response.status < 300, await response.text()
                answer: dict[str, Any] = await response.json()
                return answer

        admin = await call("POST", "/v1/admin/keys", BOOTSTRAP, "c-0",
                           {"tenant": "acme", "bots": ["banking"], "role": "admin"})
        key = admin["secret"]
        client = await call("POST", "/v1/admin/keys", key, "c-1",
                            {"tenant": "acme", "bots": ["banking"], "role": "client"})
        await call("DELETE", f"/v1/admin/keys/{client['key_id']}", key, "c-2")
        await call("PUT", "/v1/admin/bots/banking/definition", key, "c-3",
                   {"files": banking_files()})
        bus = await connect(stack.nats_url, name="audit-test")
        try:
            ref = await upload(bus, tiny_banking_model)
            await call("PUT", "/v1/admin/bots/banking/model", key, "c-4",
                       {"version": ref.version})
            await call("PUT", "/v1/admin/bots/banking/webhook", key, "c-5",
                       {"url": "https://hooks.example.com/in", "secret": "x" * 32})
            await call("DELETE", "/v1/admin/bots/banking/webhook", key, "c-6")

            info = await bus.js.stream_info("EVENTS")
            events = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await bus.js.get_msg("EVENTS", seq)
                if not str(msg.subject).startswith("events.audit."):
                    continue
                event = json.loads(msg.data or b"{}")
                # (the stack's own client key, issued before the test, has another id)
                if event["correlation_id"].startswith("c-"):
                    events.append((str(msg.subject), event, msg.headers or {}))
        finally:
            await bus.drain()

    # the first deployment by acme's key records acme as the bot's owner (bot.owner_set)
    assert [e[1]["action"] for e in events] == [
        "key.created", "key.created", "key.revoked", "bot.owner_set", "bot.deployed",
        "model.activated", "webhook.set", "webhook.deleted"]
    assert all(subject == "events.audit.acme" for subject, _, _ in events)
    first, *rest = [event for _, event, _ in events]
    assert (first["actor_key_id"], first["actor_tenant"]) == ("bootstrap", "*")
    assert first["target"] == {"key_id": admin["key_id"], "tenant": "acme",
                               "bots": ["banking"], "role": "admin"}
    assert all(e["actor_key_id"] == admin["key_id"] and e["actor_tenant"] == "acme"
               for e in rest)
    assert [e["correlation_id"] for e in (first, *rest)] == [
        "c-0", "c-1", "c-2", "c-3", "c-3", "c-4", "c-5", "c-6"]
    assert all(started_ms <= e["at_unix_ms"] <= int(time.time() * 1000)
               for e in (first, *rest))
    assert rest[1]["target"]["key_id"] == client["key_id"]
    assert rest[2]["target"] == {"bot_id": "banking", "tenant": "acme", "from": None,
                                 "recorded_before": False}
    assert rest[3]["target"]["bot_id"] == "banking" and "bot.yml" in rest[3]["target"]["files"]
    assert rest[4]["target"] == {"bot_id": "banking", "version": ref.version}
    assert rest[5]["target"] == {"bot_id": "banking", "host": "hooks.example.com"}
    assert all(headers.get("Nats-Msg-Id") == f"audit-{event['event_id']}"
               for _, event, headers in events)
