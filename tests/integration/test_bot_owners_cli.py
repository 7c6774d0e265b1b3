"""The CLI's side of bot ownership on a real nats-server (docs/security.md, "Tenants"):
`botfactory publish --tenant` records the owner of a bot that has none and refuses another
tenant's bot; `botfactory bots owner` shows and moves it, `bots list` lists the records; the
changes are audited."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from botfactory.cli import main
from botfactory.local.nats_server import NatsServer
from services.common.nats import connect
from services.gateway.owners import NatsBotOwners
from tests.support.stack import provision_as_admin

BANKING = Path(__file__).resolve().parents[2] / "bots" / "banking"


async def audit_targets(url: str) -> list[dict[str, object]]:
    bus = await connect(url, name="owners-test")
    try:
        info = await bus.js.stream_info("EVENTS")
        found = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            message = await bus.js.get_msg("EVENTS", seq)
            event = json.loads(message.data or b"{}")
            if event.get("action") == "bot.owner_set":
                found.append(event["target"])
        return found
    finally:
        await bus.drain()


async def owner_of(url: str, bot: str) -> str | None:
    bus = await connect(url, name="owners-test")
    try:
        return await (await NatsBotOwners.open(bus)).owner(bot)
    finally:
        await bus.drain()


async def test_the_cli_records_and_moves_bot_owners(
        nats_server: NatsServer, tiny_banking_model: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    url = nats_server.url
    await provision_as_admin(url)

    async def cli(*argv: str) -> int:
        code: int = await asyncio.to_thread(main, [*argv, "--nats", url])
        return code

    assert await cli("bots", "owner", "banking") == 0
    assert "default tenant" in capsys.readouterr().out
    assert await cli("publish", str(tiny_banking_model), "--tenant", "acme") == 0
    assert await owner_of(url, "banking") == "acme"
    assert await cli("publish", str(tiny_banking_model), "--tenant", "acme") == 0  # its own
    capsys.readouterr()
    assert await cli("publish", str(tiny_banking_model), "--tenant", "evil") == 2
    assert "belongs to tenant 'acme'" in capsys.readouterr().err
    assert await cli("bots", "owner", "banking", "evil") == 0
    assert await owner_of(url, "banking") == "evil"
    capsys.readouterr()
    assert await cli("bots", "list", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"banking": "evil"}
    assert await audit_targets(url) == [
        {"bot_id": "banking", "tenant": "acme", "from": None, "recorded_before": False},
        {"bot_id": "banking", "tenant": "evil", "from": "acme", "recorded_before": True}]
    with pytest.raises(SystemExit):
        main(["bots", "owner", "banking", "not a tenant"])
    # a bot version (BOT_DIR --model M) is refused for another tenant's bot too
    bot_dir = BANKING
    capsys.readouterr()
    assert await cli("publish", str(bot_dir), "--model", str(tiny_banking_model),
                     "--tenant", "acme") == 2
    assert "belongs to tenant 'evil'" in capsys.readouterr().err
