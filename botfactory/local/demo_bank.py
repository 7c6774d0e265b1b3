"""A small local "core banking" test service for the demo and the tests (aiohttp).

    python -m botfactory.local.demo_bank --port 8099 [--token T] [--legacy-pin P]

JSON API (with `--token`, requests need `Authorization: Bearer <token>`):
  GET  /accounts/{account}/balance        {"account", "balance", "currency"}
                       (503 for "business": its ledger is offline, so that a conversation
                       test sees a failing lookup on the running stack)
  POST /holds          {account, amount, reference}    -> 201 {"hold_id", ...}
  POST /holds/{id}/release                             -> 200 (a hold's compensation)
  POST /transfers      {from_account, amount, recipient, reference} -> 201 {"transfer_id", ...}
                       (422 when funds are short or the recipient is refused: "blocked-*")
  POST /transfers/{id}/confirm                         -> 200
  POST /transfers/{id}/reverse                         -> 200 (a transfer's compensation)
  POST /cards/{card}/block                             -> 200 {"card", "status": "blocked"}
Every POST honours `Idempotency-Key`: the first request with a key is applied, later ones get
the stored response again (header `Idempotent-Replayed: true`), so a side effect happens once.

Legacy web form (for the `browser` step): GET /legacy/transfers/new, POST /legacy/transfers
(fields reference, amount, currency, recipient, operator_pin; a reference filed before shows
its record again).

Test hooks: GET /_stats (requests, side effects by kind, duplicates by business reference,
replays), POST /_faults ({"path": "/transfers", "method": "POST", "fail_times": 2,
"status": 503, "delay_ms": 0}), POST /_reset.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import itertools
import json
import signal
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from services.common.logging import configure_logging, get_logger

log = get_logger(__name__)

ACCOUNTS = {"checking": 12500.0, "savings": 10400.5, "business": 48000.0}
OFFLINE_LEDGERS = frozenset({"business"})  # balance lookups answer 503 (transfers still work)
CURRENCIES = ("EUR", "USD", "GBP")


@dataclass
class Fault:
    path: str
    method: str = ""
    fail_times: int = 0
    status: int = 503
    delay_ms: int = 0


@dataclass
class Bank:
    token: str | None = None
    legacy_pin: str | None = None
    balances: dict[str, float] = field(default_factory=lambda: dict(ACCOUNTS))
    holds: dict[str, dict[str, Any]] = field(default_factory=dict)
    transfers: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: dict[str, str] = field(default_factory=dict)  # legacy: reference -> record id
    responses: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    effects: Counter[str] = field(default_factory=Counter)  # by kind
    by_reference: Counter[tuple[str, str]] = field(default_factory=Counter)
    requests: int = 0
    replays: int = 0
    faults: list[Fault] = field(default_factory=list)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def effect(self, kind: str, reference: str) -> None:
        """Count one applied side effect; the same business reference twice is a duplicate."""
        self.effects[kind] += 1
        self.by_reference[(kind, reference)] += 1

    def stats(self) -> dict[str, Any]:
        duplicates = sum(n - 1 for n in self.by_reference.values() if n > 1)
        return {"requests": self.requests, "replays": self.replays,
                "effects": dict(self.effects), "duplicates": duplicates,
                "references": len(self.by_reference)}

    def next_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self.ids):06d}"


BANK = web.AppKey("bank", Bank)


def _bank(request: web.Request) -> Bank:
    return request.app[BANK]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def faults_and_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    bank = _bank(request)
    if request.path.startswith("/_"):
        return await handler(request)  # type: ignore[no-any-return]
    bank.requests += 1
    if request.can_read_body:
        await request.read()  # a delayed request is applied even if its client goes away
    for fault in bank.faults:
        if request.path.startswith(fault.path) and fault.method in ("", request.method):
            if fault.delay_ms:
                await asyncio.sleep(fault.delay_ms / 1000)
            if fault.fail_times > 0:
                fault.fail_times -= 1
                return _error(fault.status, "injected fault")
    if bank.token and not request.path.startswith("/legacy") and \
            request.headers.get("Authorization") != f"Bearer {bank.token}":
        return _error(401, "missing or wrong API token")
    return await handler(request)  # type: ignore[no-any-return]


async def idempotent(request: web.Request, apply: Any) -> web.Response:
    """Apply once per Idempotency-Key; replay the stored response for the same key."""
    bank = _bank(request)
    try:
        payload = await request.json() if request.body_exists else {}
    except json.JSONDecodeError:
        return _error(400, "body is not JSON")
    key = request.headers.get("Idempotency-Key")
    if key is None:
        status, body = apply(bank, payload if isinstance(payload, dict) else {})
        return web.json_response(body, status=status)
    stored = f"{request.path}|{key}"
    if stored in bank.responses:  # checked and applied with no await between: one winner
        bank.replays += 1
        status, body = bank.responses[stored]
        return web.json_response(body, status=status, headers={"Idempotent-Replayed": "true"})
    status, body = apply(bank, payload if isinstance(payload, dict) else {})
    if status < 500:
        bank.responses[stored] = (status, body)
    return web.json_response(body, status=status)


def _amount(payload: dict[str, Any]) -> float | None:
    try:
        amount = float(payload.get("amount"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return amount if amount > 0 else None


async def balance(request: web.Request) -> web.Response:
    account = request.match_info["account"]
    bank = _bank(request)
    if account not in bank.balances:
        return _error(404, f"no account {account!r}")
    if account in OFFLINE_LEDGERS:
        return _error(503, f"the {account} ledger is unavailable")
    return web.json_response({"account": account, "balance": round(bank.balances[account], 2),
                              "currency": "EUR"})


def _create_hold(bank: Bank, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    amount, account = _amount(payload), str(payload.get("account", "checking"))
    if amount is None or account not in bank.balances:
        return 400, {"error": "account and a positive amount are needed"}
    hold_id = bank.next_id("H")
    bank.holds[hold_id] = {"account": account, "amount": amount, "released": False}
    bank.effect("hold", str(payload.get("reference", hold_id)))
    return 201, {"hold_id": hold_id, "account": account, "amount": amount}


async def create_hold(request: web.Request) -> web.Response:
    return await idempotent(request, _create_hold)


async def release_hold(request: web.Request) -> web.Response:
    hold_id = request.match_info["hold_id"]

    def apply(bank: Bank, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        hold = bank.holds.get(hold_id)
        if hold is None:
            return 404, {"error": f"no hold {hold_id}"}
        if not hold["released"]:
            hold["released"] = True
            bank.effect("hold_release", hold_id)
        return 200, {"hold_id": hold_id, "status": "released"}

    return await idempotent(request, apply)


def _create_transfer(bank: Bank, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    amount, source = _amount(payload), str(payload.get("from_account", "checking"))
    recipient = str(payload.get("recipient", "")).strip()
    if amount is None or not recipient or source not in bank.balances:
        return 400, {"error": "from_account, recipient and a positive amount are needed"}
    if recipient.lower().startswith("blocked"):
        return 422, {"error": f"recipient {recipient} is refused"}
    if bank.balances[source] < amount:
        return 422, {"error": "insufficient funds"}
    transfer_id = bank.next_id("TX")
    bank.balances[source] -= amount
    bank.transfers[transfer_id] = {"from_account": source, "amount": amount,
                                   "recipient": recipient, "status": "booked"}
    bank.effect("transfer", str(payload.get("reference", transfer_id)))
    return 201, {"transfer_id": transfer_id, "status": "booked", "amount": amount,
                 "recipient": recipient}


async def create_transfer(request: web.Request) -> web.Response:
    return await idempotent(request, _create_transfer)


def _transfer_action(request: web.Request, action: str) -> Any:
    transfer_id = request.match_info["transfer_id"]

    def apply(bank: Bank, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        transfer = bank.transfers.get(transfer_id)
        if transfer is None:
            return 404, {"error": f"no transfer {transfer_id}"}
        target = "confirmed" if action == "confirm" else "reversed"
        if transfer["status"] == "reversed" and action == "confirm":
            return 409, {"error": "transfer was reversed"}
        if transfer["status"] != target:
            transfer["status"] = target
            if action == "reverse":
                bank.balances[transfer["from_account"]] += transfer["amount"]
            bank.effect(action, transfer_id)
        return 200, {"transfer_id": transfer_id, "status": target}

    return apply


async def confirm_transfer(request: web.Request) -> web.Response:
    return await idempotent(request, _transfer_action(request, "confirm"))


async def reverse_transfer(request: web.Request) -> web.Response:
    return await idempotent(request, _transfer_action(request, "reverse"))


async def block_card(request: web.Request) -> web.Response:
    card = request.match_info["card"]

    def apply(bank: Bank, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if card not in ("credit", "debit"):
            return 404, {"error": f"no {card} card"}
        bank.effect("card_block", str(payload.get("reference", card)))
        return 200, {"card": card, "status": "blocked", "replacement": "ordered"}

    return await idempotent(request, apply)


# -- the legacy web form --------------------------------------------------------------------

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}} label{{display:block;margin:.5em 0}}</style>
</head><body><h1>Legacy back office</h1>{body}</body></html>"""

FORM = """<h2>File a transfer record</h2>
<form id="transfer-form" method="post" action="/legacy/transfers">
<label>Bank reference <input id="reference" name="reference" required></label>
<label>Amount <input id="amount" name="amount" required></label>
<label>Currency <select id="currency" name="currency">{options}</select></label>
<label>Recipient <input id="recipient" name="recipient" required></label>
<label>Operator PIN <input id="operator-pin" name="operator_pin" type="password"></label>
<button id="submit" type="submit">File record</button>
</form>"""


def _page(title: str, body: str, status: int = 200) -> web.Response:
    return web.Response(text=PAGE.format(title=title, body=body), status=status,
                        content_type="text/html")


async def legacy_form(request: web.Request) -> web.Response:
    options = "".join(f'<option value="{c}">{c}</option>' for c in CURRENCIES)
    return _page("New transfer record", FORM.format(options=options))


async def legacy_submit(request: web.Request) -> web.Response:
    bank = _bank(request)
    form = await request.post()
    fields = {k: str(form.get(k, "")).strip() for k in
              ("reference", "amount", "currency", "recipient", "operator_pin")}
    if bank.legacy_pin is not None and fields["operator_pin"] != bank.legacy_pin:
        return _page("Refused", '<p id="error">Wrong operator PIN.</p>', status=403)
    if not fields["reference"] or not fields["recipient"] or fields["currency"] not in CURRENCIES:
        return _page("Invalid", '<p id="error">Reference, recipient and currency are '
                                'required.</p>', status=400)
    record = bank.records.get(fields["reference"])
    if record is None:
        record = bank.records[fields["reference"]] = bank.next_id("REC")
        bank.effect("legacy_record", fields["reference"])
    body = (f'<p id="confirmation">Transfer record filed for '
            f'{html.escape(fields["amount"])} {fields["currency"]} to '
            f'{html.escape(fields["recipient"])}.</p>'
            f'<p>Record <span id="record-id">{record}</span></p>')
    return _page("Record filed", body)


# -- test hooks --------------------------------------------------------------------------------


async def stats(request: web.Request) -> web.Response:
    return web.json_response(_bank(request).stats())


async def set_faults(request: web.Request) -> web.Response:
    raw = await request.json()
    items = raw if isinstance(raw, list) else [raw]
    _bank(request).faults = [Fault(**item) for item in items if item]
    return web.json_response({"faults": len(_bank(request).faults)})


async def reset(request: web.Request) -> web.Response:
    bank = _bank(request)
    bank.__dict__.update(Bank(token=bank.token, legacy_pin=bank.legacy_pin).__dict__)
    return web.json_response({"reset": True})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(token: str | None = None, legacy_pin: str | None = None) -> web.Application:
    app = web.Application(middlewares=[faults_and_auth])
    app[BANK] = Bank(token=token, legacy_pin=legacy_pin)
    app.add_routes([
        web.get("/health", health),
        web.get("/accounts/{account}/balance", balance),
        web.post("/holds", create_hold),
        web.post("/holds/{hold_id}/release", release_hold),
        web.post("/transfers", create_transfer),
        web.post("/transfers/{transfer_id}/confirm", confirm_transfer),
        web.post("/transfers/{transfer_id}/reverse", reverse_transfer),
        web.post("/cards/{card}/block", block_card),
        web.get("/legacy/transfers/new", legacy_form),
        web.post("/legacy/transfers", legacy_submit),
        web.get("/_stats", stats),
        web.post("/_faults", set_faults),
        web.post("/_reset", reset),
    ])
    return app


async def serve(app: web.Application, host: str = "127.0.0.1",
                port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve `app` in the running loop; port 0 picks a free port (returned)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    return runner, int(sockets[0].getsockname()[1]) if sockets else port


async def _run(args: argparse.Namespace) -> None:
    runner, port = await serve(create_app(args.token, args.legacy_pin), args.host, args.port)
    log.info("demo_bank_started", url=f"http://{args.host}:{port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The demo core banking service.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099, help="0: a free port (printed)")
    parser.add_argument("--token", default=None, help="require this bearer token on the API")
    parser.add_argument("--legacy-pin", default=None, help="require this PIN on the web form")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging("demo_bank", args.log_level)  # JSON lines, like the services
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
