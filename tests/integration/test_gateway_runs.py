"""The RPA runner's API through the gateway's HTTP routes, on a real nats-server with a real
runner and the demo bank: start, list, get with step history, approve, reject, cancel, retry;
roles; a key for one bot never sees nor acts on another bot's runs; runner errors as problem
responses, and 503 with Retry-After when the runner cannot be reached."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from botfactory.local.nats_server import NatsServer
from services.gateway.app import GatewayServer
from services.gateway.config import GatewayConfig
from tests.support.polling import eventually
from tests.support.rpa import BOOK, BOT, HOLD, harness, write_test_bot
from tests.support.stack import BOOTSTRAP, issue_key

PROBLEM = "application/problem+json"
REVIEW = """
  - id: review
    approval: {message: "Pay {{ inputs.amount }}?", approvers: [ops], timeout: 1h}
"""
WORKFLOWS = {
    "review": "name: review\ninputs: {amount: number}\nsteps:" + HOLD + REVIEW + BOOK,
    "flaky": "name: flaky\ninputs: {amount: number}\nsteps:" + BOOK,
}


pytestmark = pytest.mark.usefixtures("rpa_secrets")


@pytest.fixture
def bot_dir(tmp_path: Path) -> Path:
    return write_test_bot(tmp_path / "bot", WORKFLOWS)


@dataclass
class Api:
    session: aiohttp.ClientSession
    base_url: str

    async def call(self, method: str, path: str, key: str, body: Any = None,
                   ) -> tuple[int, Any, Any]:
        headers = {"Authorization": f"Bearer {key}"}
        async with self.session.request(method, f"{self.base_url}{path}", json=body,
                                        headers=headers) as response:
            if response.content_type not in ("application/json", PROBLEM):
                raise AssertionError(f"{response.status}: {await response.text()}")
            return response.status, await response.json(content_type=None), response.headers

    async def key(self, role: str, bot: str = BOT) -> str:
        return await issue_key(self.session, self.base_url, role, (bot,))

    async def until(self, key: str, run_id: str, status: str) -> dict[str, Any]:
        async def run_in_status() -> dict[str, Any] | None:
            code, run, _ = await self.call("GET", f"/v1/bots/{BOT}/runs/{run_id}", key)
            return run if code == 200 and run["status"] == status else None

        return await eventually(run_in_status, f"run {run_id} {status}")


@contextlib.asynccontextmanager
async def gateway(nats_url: str, rpa_address: str) -> AsyncIterator[Api]:
    server = GatewayServer(GatewayConfig(
        http_port=0, metrics_port=0, grpc_port=0, nats_url=nats_url, partitions=4,
        api_key_pepper="pepper-for-tests-only", admin_bootstrap_key=BOOTSTRAP,
        rate_limit_rps=1000, rate_limit_burst=1000, shutdown_grace_s=1.0,
        rpa_address=rpa_address, rpa_timeout_s=5.0))
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield Api(session, f"http://127.0.0.1:{server.port}")
    finally:
        await server.stop()


async def _start(api: Api, key: str, workflow: str = "review", amount: Any = 40,
                 bot: str = BOT) -> tuple[int, Any]:
    status, body, _ = await api.call("POST", f"/v1/bots/{bot}/runs", key,
                                     {"workflow": workflow, "inputs": {"amount": amount}})
    return status, body


async def test_start_list_get_and_approve_through_the_gateway(nats_server: NatsServer,
                                                              bot_dir: Path) -> None:
    async with harness(nats_server.url, bot_dir) as h, \
            gateway(nats_server.url, f"127.0.0.1:{h.runners[0].port}") as api:
        agent = await api.key("agent")
        status, started = await _start(api, agent)
        assert status == 202 and started["status"] == "pending", started
        assert (started["bot_id"], started["workflow"], started["inputs"]) == (
            BOT, "review", {"amount": 40})
        run_id = started["run_id"]
        run = await api.until(agent, run_id, "waiting_approval")
        assert run["current_step"] == "review" and run["error"] is None
        assert run["approval"]["message"] == "Pay 40?" and run["approval"]["approvers"] == ["ops"]
        assert [(s["step"], s["status"]) for s in run["steps"]] == [("hold", "succeeded")]
        assert run["steps"][0]["outputs"]["id"]

        status, listed, _ = await api.call("GET", f"/v1/bots/{BOT}/runs?status=waiting_approval",
                                           agent)
        assert status == 200 and [r["run_id"] for r in listed["runs"]] == [run_id]
        assert "steps" not in listed["runs"][0]
        status, listed, _ = await api.call("GET", f"/v1/bots/{BOT}/runs?workflow=flaky", agent)
        assert (status, listed["runs"]) == (200, [])

        status, decided, _ = await api.call("POST", f"/v1/bots/{BOT}/runs/{run_id}/approve",
                                            agent, {"comment": "ok", "approver": "olga"})
        assert status == 202 and decided["run_id"] == run_id
        run = await api.until(agent, run_id, "succeeded")
        assert [s["step"] for s in run["steps"]] == ["hold", "review", "book"]
        key_id = agent.split("_")[1]
        assert run["steps"][1]["outputs"] == {"approved": True, "comment": "ok",
                                              "approver": f"olga (key {key_id})"}
        assert run["finished_at_unix_ms"] and run["approval"] is None
        assert h.results[run_id]["status"] == "succeeded"
        assert (await h.bank("GET", "/_stats"))["effects"] == {"hold": 1, "transfer": 1}

        status, problem, _ = await api.call("POST", f"/v1/bots/{BOT}/runs/{run_id}/approve",
                                            agent, {})
        assert status == 409 and "waits for no approval" in problem["detail"]


async def test_a_key_for_another_bot_never_sees_nor_acts_on_the_runs(nats_server: NatsServer,
                                                                     bot_dir: Path) -> None:
    async with harness(nats_server.url, bot_dir) as h, \
            gateway(nats_server.url, f"127.0.0.1:{h.runners[0].port}") as api:
        agent, other = await api.key("agent"), await api.key("admin", bot="otherbot")
        client = await api.key("client")
        _, started = await _start(api, agent)
        run_id = started["run_id"]
        await api.until(agent, run_id, "waiting_approval")
        # the other bot's key, on its own bot's path: as if the run did not exist
        for method, suffix, body in [("GET", "", None), ("POST", "/approve", {}),
                                     ("POST", "/reject", {"comment": "no"}),
                                     ("POST", "/cancel", {}), ("POST", "/retry", None)]:
            status, problem, _ = await api.call(method, f"/v1/bots/otherbot/runs/{run_id}"
                                                + suffix, other, body)
            assert (status, problem["detail"]) == (404, f"no run {run_id!r}"), (suffix, problem)
        status, listed, _ = await api.call("GET", "/v1/bots/otherbot/runs", other)
        assert (status, listed) == (200, {"bot_id": "otherbot", "runs": []})
        status, problem = await _start(api, other, bot="otherbot")
        assert status == 404 and "otherbot" in problem["detail"]
        # ... and on this bot's path: not its bot, answered as for a bot that does not exist
        status, problem, _ = await api.call("GET", f"/v1/bots/{BOT}/runs/{run_id}", other)
        assert (status, problem["detail"]) == (404, f"no bot {BOT!r} here")
        # a client key may not use the run routes at all
        for method, path in [("GET", f"/v1/bots/{BOT}/runs"), ("POST", f"/v1/bots/{BOT}/runs"),
                             ("GET", f"/v1/bots/{BOT}/runs/{run_id}")]:
            status, problem, _ = await api.call(method, path, client, {})
            assert status == 403 and "role" in problem["detail"]
        run = await api.until(agent, run_id, "waiting_approval")  # nothing was done to it
        assert [s["step"] for s in run["steps"]] == ["hold"] and run["error"] is None
        assert (await h.bank("GET", "/_stats"))["effects"] == {"hold": 1}


async def test_reject_cancel_retry_and_errors(nats_server: NatsServer, bot_dir: Path) -> None:
    async with harness(nats_server.url, bot_dir) as h, \
            gateway(nats_server.url, f"127.0.0.1:{h.runners[0].port}") as api:
        agent, admin = await api.key("agent"), await api.key("admin")
        key_id = agent.split("_")[1]
        _, first = await _start(api, agent)
        await api.until(agent, first["run_id"], "waiting_approval")
        status, _, _ = await api.call("POST", f"/v1/bots/{BOT}/runs/{first['run_id']}/reject",
                                      agent, {"comment": "too much", "step": "review"})
        assert status == 202
        run = await api.until(agent, first["run_id"], "compensated")
        assert run["error"] == f"step 'review': rejected by key {key_id}: too much"

        _, second = await _start(api, agent)
        await api.until(agent, second["run_id"], "waiting_approval")
        cancel = f"/v1/bots/{BOT}/runs/{second['run_id']}/cancel"
        status, _, _ = await api.call("POST", cancel, agent, {"reason": "customer called"})
        assert status == 202
        run = await api.until(agent, second["run_id"], "compensated")
        assert run["error"] == f"cancelled by key {key_id}: customer called"
        assert [(s["step"], s["status"]) for s in run["steps"]][-1] == ("hold", "compensated")
        status, problem, _ = await api.call("POST", cancel, agent)  # no body at all
        assert status == 409 and problem["type"] == "urn:botfactory:problem:conflict"

        await h.bank("POST", "/_faults", {"path": "/transfers", "fail_times": 1})
        _, flaky = await _start(api, agent, "flaky")
        run = await api.until(agent, flaky["run_id"], "failed")
        assert "HTTP 503" in run["error"]
        retry = f"/v1/bots/{BOT}/runs/{flaky['run_id']}/retry"
        status, problem, _ = await api.call("POST", retry, agent)
        assert status == 403 and "needs admin" in problem["detail"]
        status, _, _ = await api.call("POST", retry, admin)
        assert status == 202
        run = await api.until(agent, flaky["run_id"], "succeeded")
        assert [s["status"] for s in run["steps"]] == ["failed", "succeeded"]
        assert (await h.bank("GET", "/_stats"))["effects"] == {
            "hold": 2, "hold_release": 2, "transfer": 1}

        for body, code, needle in [
            ({"workflow": "ghost"}, 404, "no workflow 'ghost'"),
            ({"workflow": "flaky", "inputs": {"amount": "x"}}, 400, "amount"),
            ({"workflow": "flaky", "inputs": [1]}, 400, "inputs: must be a JSON object"),
            ({"workflow": "a.b"}, 400, "workflow"),
            ({"workflow": "flaky", "run_id": "mine"}, 400, "run_id: unknown field"),
        ]:
            status, problem, _ = await api.call("POST", f"/v1/bots/{BOT}/runs", agent, body)
            assert status == code and needle in problem["detail"], (body, problem)
            assert problem["status"] == code
        for path, field in [(f"/v1/bots/{BOT}/runs/nope", None),
                            (f"/v1/bots/{BOT}/runs/bad.id", "run_id"),
                            (f"/v1/bots/{BOT}/runs?limit=0", "limit"),
                            (f"/v1/bots/{BOT}/runs?status=sleeping", "status")]:
            status, problem, _ = await api.call("GET", path, agent)
            if field is None:
                assert (status, problem["detail"]) == (404, "no run 'nope'")
            else:
                assert status == 400 and problem["errors"][0]["field"] == field, problem


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_runner_unreachable_is_503_with_retry_after(nats_server: NatsServer) -> None:
    async with gateway(nats_server.url, f"127.0.0.1:{_closed_port()}") as api:
        agent = await api.key("agent")
        for method, path in [("GET", f"/v1/bots/{BOT}/runs"),
                             ("GET", f"/v1/bots/{BOT}/runs/r1"),
                             ("POST", f"/v1/bots/{BOT}/runs/r1/approve")]:
            status, problem, headers = await api.call(method, path, agent, {})
            assert status == 503 and headers["Retry-After"] == "5", problem
            assert problem["type"] == "urn:botfactory:problem:runner-unavailable"
            assert problem["retry_after"] == 5 and "retry later" in problem["detail"]
        status, _ = await _start(api, agent)
        assert status == 503
