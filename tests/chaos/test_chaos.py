"""The chaos tier (`make test-chaos`; not part of `make test`): benchmarks/chaos.py's quick run
- the process stack under 50 concurrent conversations while a dialogue worker, the NLU server,
the gateway, the RPA runner and nats-server are each killed with SIGKILL and restarted - and
its verdict: nothing lost, duplicated or reordered, every tracker as its user left it, every
workflow run finished with its bank side effects applied exactly once, every kill recovered;
and for the users talking through the Telegram channel, every accepted update answered and
every bot message of their chats taken by the (fake) Bot API exactly once, in order.

Uses the demo bot's real model (.botfactory/models/banking, trained on first use)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import chaos

pytestmark = pytest.mark.chaos


def test_kills_under_load_lose_nothing(tmp_path: Path) -> None:
    args = chaos.parse_args(["--quick", "--out", str(tmp_path / "chaos.json")])
    result = chaos.run(args, tmp_path / "stack")

    assert result["accepted"] > 0 and result["completed_conversations"] > 0
    assert result["rpa_runs"] > 0
    components = {k["component"].split("-")[0] for k in result["kills"]}
    assert components == {"nats", "nlu", "gateway", "rpa_runner", "dialogue"}
    for key in ("lost", "duplicated", "out_of_order", "tracker_mismatches",
                "rpa_duplicate_side_effects", "rpa_unfinished", "rpa_missing_side_effects"):
        assert result[key] == 0, (key, result)
    telegram = result["telegram"]
    assert telegram["accepted"] > 0 and telegram["delivered"] > 0
    for key in chaos.TELEGRAM_FAILURE_KEYS:
        assert telegram[key] == 0, (f"telegram.{key}", telegram)
    assert all(k["recovered"] for k in result["kills"]), result["kills"]
    assert result["failures"] == []
