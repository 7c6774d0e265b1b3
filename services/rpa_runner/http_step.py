"""The `http` step: a request rendered from templates, sent only to allow-listed hosts with an
`Idempotency-Key`, its outputs extracted from the response with JMESPath."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import jmespath
import jmespath.exceptions
from yarl import URL

from services.botdef.expressions import ExpressionError, render_value, to_text
from services.botdef.workflows import HttpSpec
from services.rpa_runner.outcomes import Done, Failed, Outcome, StepCall

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_BODY_BYTES = 1024 * 1024
RETRYABLE_STATUSES = frozenset({408, 425, 429})
ERROR_SNIPPET = 300


class HttpStep:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def run(self, call: StepCall, spec: HttpSpec) -> Outcome:
        try:
            request = render_request(call, spec)
        except (ExpressionError, ValueError) as exc:
            return Failed(str(exc))
        url = URL(request["url"])
        if not call.rpa.allowed_hosts.allows_host(url.scheme, url.host or "", url.port):
            where = f"{url.scheme}://{url.host_port_subcomponent or ''}"
            return Failed(f"{where} is not on the bot's allow-list (rpa.yml allowed_hosts)")
        try:
            return await self._send(call, spec, url, request)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return Failed(f"{spec.method} {url.host}: {type(exc).__name__}: {exc}",
                          retryable=True)

    async def _send(self, call: StepCall, spec: HttpSpec, url: URL,
                    request: dict[str, Any]) -> Outcome:
        async with self.session.request(spec.method, url, headers=request["headers"],
                                        params=request["params"], json=request["json"],
                                        data=request["data"], allow_redirects=False) as resp:
            raw = await resp.content.read(MAX_BODY_BYTES + 1)
            status, headers = resp.status, {k.lower(): v for k, v in resp.headers.items()}
        if len(raw) > MAX_BODY_BYTES:
            return Failed(f"response larger than {MAX_BODY_BYTES} bytes")
        body = decode_body(raw)
        if spec.expected(status):
            return extract(spec, {"status": status, "headers": headers, "body": body})
        retryable = status not in call.step.retry.non_retryable_statuses and (
            status in RETRYABLE_STATUSES or status >= 500)
        return Failed(f"{spec.method} {url.path} returned HTTP {status}: {snippet(body)}",
                      retryable=retryable)


def render_request(call: StepCall, spec: HttpSpec) -> dict[str, Any]:
    scope = call.scope
    headers = {k: to_text(render_value(v, scope)) for k, v in spec.headers.items()}
    if not any(k.lower() == IDEMPOTENCY_HEADER.lower() for k in headers):
        headers[IDEMPOTENCY_HEADER] = call.key
    if call.state.correlation:
        headers.setdefault("Correlation-Id", call.state.correlation)
    params = {k: to_text(render_value(v, scope)) for k, v in spec.query.items()}
    body = None if spec.body is None else to_text(render_value(spec.body, scope))
    return {"url": to_text(render_value(spec.url, scope)), "headers": headers,
            "params": params or None,
            "json": None if spec.json is None else render_value(spec.json, scope),
            "data": body}


def decode_body(raw: bytes) -> Any:
    text = raw.decode("utf-8", errors="replace")
    stripped = text.strip()
    if stripped[:1] in ("{", "[", '"') or stripped in ("true", "false", "null"):
        try:
            return json.loads(stripped)
        except ValueError:
            return text
    return text


def extract(spec: HttpSpec, response: dict[str, Any]) -> Outcome:
    outputs: dict[str, Any] = {}
    for name, source in spec.outputs.items():
        try:
            outputs[name] = jmespath.search(source, response)
        except jmespath.exceptions.JMESPathError as exc:
            return Failed(f"output {name!r}: {exc}")
    return Done(outputs)


def snippet(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])[:ERROR_SNIPPET]
    text = body if isinstance(body, str) else json.dumps(body, default=str)
    return text[:ERROR_SNIPPET]
