"""The RPA runner's API as the gateway uses it: a gRPC client of `botfactory.v1.RpaRunner`
(protos/botfactory/v1/rpa.proto, served by services/rpa_runner) at
`BOTFACTORY_GATEWAY_RPA_ADDRESS`, and the one place where the runner's gRPC status codes
become the gateway's errors (and so its problem responses):

INVALID_ARGUMENT → 400, NOT_FOUND → 404, FAILED_PRECONDITION / ALREADY_EXISTS → 409,
UNAVAILABLE / DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED (the runner is down, unreachable, slow or
overloaded) → 503 with `Retry-After`, anything else → 502 (logged; the client sees no detail).

Authorization is not the runner's business: the HTTP routes (services/gateway/http/runs.py)
check the key's role and bot, and that every run they touch belongs to the bot in the path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import grpc

from services.common.errors import DomainError, InvalidArgument, NotFound
from services.common.grpc_server import open_channel
from services.common.logging import get_logger
from services.common.pb.botfactory.v1 import rpa_pb2, rpa_pb2_grpc

log = get_logger(__name__)
T = TypeVar("T")
RETRY_AFTER_S = 5
UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
               grpc.StatusCode.RESOURCE_EXHAUSTED}


class RunConflict(DomainError):
    """The run is not in a state that allows this (e.g. cancel a finished run)."""

    http_status = 409
    problem_type = "conflict"


class RunnerUnavailable(DomainError):
    """The runner cannot be reached now (503 with Retry-After)."""

    http_status = 503
    problem_type = "runner-unavailable"

    def __init__(self, detail: str, retry_after_s: int = RETRY_AFTER_S) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}

    def extensions(self) -> dict[str, int]:
        return {"retry_after": self.retry_after_s}


class RunnerFailed(DomainError):
    """The runner answered with an unexpected error (502; the detail stays in the log)."""

    http_status = 502
    problem_type = "runner-failed"


def runner_error(exc: grpc.aio.AioRpcError) -> DomainError:
    """The gateway error for a failed runner call."""
    code, detail = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(detail)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(detail)
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS):
        return RunConflict(detail)
    if code in UNREACHABLE:
        log.warning("rpa_runner_unavailable", code=code.name, detail=detail[:300])
        return RunnerUnavailable("the workflow runner is not reachable; retry later")
    log.error("rpa_runner_failed", code=code.name, detail=detail[:300])
    return RunnerFailed("the workflow runner failed to answer this request")


class RunsApi(Protocol):
    """What the gateway asks of the runner (the pb messages of rpa.proto in and out)."""

    async def start(self, request: rpa_pb2.StartRunRequest) -> rpa_pb2.Run: ...

    async def get(self, run_id: str) -> rpa_pb2.Run: ...

    async def list(self, request: rpa_pb2.ListRunsRequest) -> list[rpa_pb2.Run]: ...

    async def cancel(self, request: rpa_pb2.CancelRunRequest) -> rpa_pb2.Run: ...

    async def decide(self, decision: rpa_pb2.ApprovalDecision, *,
                     approved: bool) -> rpa_pb2.Run: ...

    async def retry(self, run_id: str) -> rpa_pb2.Run: ...


class GrpcRunsClient:
    """RunsApi over one gRPC channel to the runner (or its Kubernetes Service); each call has
    a deadline of `timeout_s` and fails fast when the runner is not reachable."""

    def __init__(self, address: str, timeout_s: float) -> None:
        self.address = address
        self._timeout = timeout_s
        self._channel = open_channel(address)  # TLS: BOTFACTORY_GRPC_TLS_CA
        self._stub = rpa_pb2_grpc.RpaRunnerStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: Callable[..., Awaitable[T]], request: object) -> T:
        try:
            return await method(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise runner_error(exc) from None

    async def start(self, request: rpa_pb2.StartRunRequest) -> rpa_pb2.Run:
        return await self._call(self._stub.StartRun, request)

    async def get(self, run_id: str) -> rpa_pb2.Run:
        return await self._call(self._stub.GetRun, rpa_pb2.GetRunRequest(run_id=run_id))

    async def list(self, request: rpa_pb2.ListRunsRequest) -> list[rpa_pb2.Run]:
        response: rpa_pb2.ListRunsResponse = await self._call(self._stub.ListRuns, request)
        return list(response.runs)

    async def cancel(self, request: rpa_pb2.CancelRunRequest) -> rpa_pb2.Run:
        return await self._call(self._stub.CancelRun, request)

    async def decide(self, decision: rpa_pb2.ApprovalDecision, *,
                     approved: bool) -> rpa_pb2.Run:
        method = self._stub.Approve if approved else self._stub.Reject
        return await self._call(method, decision)

    async def retry(self, run_id: str) -> rpa_pb2.Run:
        return await self._call(self._stub.RetryRun, rpa_pb2.RetryRunRequest(run_id=run_id))
