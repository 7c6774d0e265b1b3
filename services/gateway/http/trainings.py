"""Training routes (role admin; docs/training.md): start a training of the bot on a trainer
worker, list and read its trainings (status, progress, the model version and its report),
cancel one, read its log.

They work on the Trainings port (`TRAININGS` on the app; services/gateway/trainings.py over the
bus); without it they answer 503. Starting and cancelling are audited. A running training
whose trainer stopped heartbeating is reported failed ("trainer lost") when it is read.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from services.common.errors import Unavailable
from services.common.trainings import MAX_EPOCHS, STATUSES, Options, Training
from services.gateway import audit
from services.gateway.http.admin import audited, checked_files, validate_definition
from services.gateway.http.problems import DefinitionInvalid, RequestInvalid
from services.gateway.http.state import principal_of, state_of
from services.gateway.http.wire import Fields, json_response, limit_query, parse_json, read_body
from services.gateway.ports import Trainings

TRAININGS: web.AppKey[Trainings] = web.AppKey("trainings")
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_SEED = 2**31 - 1

_STR = {"type": "string"}
_INT = {"type": "integer"}
_NULL_INT = {"type": ["integer", "null"]}
_NULL_STR = {"type": ["string", "null"]}
_EPOCH = {"type": "object", "description": "One epoch: epoch, epochs (planned), train_loss, "
          "heldout_loss, heldout {n, intent_accuracy, entity_micro_f1, ...}"}
SCHEMAS: dict[str, Any] = {
    "Training": {"type": "object", "required": ["job_id", "bot_id", "status"], "properties": {
        "job_id": _STR, "bot_id": _STR, "status": {"enum": list(STATUSES)},
        "options": {"type": "object", "properties": {
            "epochs": _NULL_INT, "seed": _NULL_INT, "activate": {"type": "boolean"}}},
        "source": {"enum": ["deployed", "request"], "description": "What it trains: the "
                   "bot's deployed definition when it was asked for, or the files sent"},
        "definition_revision": _NULL_INT, "requested_by": _STR, "worker": _STR,
        "attempts": _INT, "cancel_requested": {"type": "boolean"},
        "progress": {"type": "object", "description": "stage (loading, training, exporting, "
                     "evaluating, published), the last epoch's epoch, epochs, train_loss, "
                     "heldout_loss, intent_accuracy, entity_f1, and history (every epoch)",
                     "properties": {"stage": _STR, "history": {"type": "array",
                                                               "items": _EPOCH}}},
        "model_version": {**_NULL_STR, "description": "The model version it published "
                          "(GET /v1/admin/bots/{bot}/models)"},
        "activated": {"type": "boolean"},
        "report": {"type": ["object", "null"], "description": "The model's metadata.json "
                   "summary: metrics (held-out intent accuracy, entity F1), serving "
                   "precision, checks, calibration, training; `object`: its archive"},
        "error": _NULL_STR, "created_at_unix_ms": _INT,
        "started_at_unix_ms": _NULL_INT, "finished_at_unix_ms": _NULL_INT,
        "heartbeat_at_unix_ms": _NULL_INT}},
    "TrainingList": {"type": "object", "required": ["bot_id", "trainings"], "properties": {
        "bot_id": _STR,
        "trainings": {"type": "array", "items": {"$ref": "#/components/schemas/Training"}}}},
}
REQUEST_PROPERTIES: dict[str, Any] = {
    "epochs": {"type": "integer", "minimum": 1, "maximum": MAX_EPOCHS,
               "description": "At most this many epochs (default: the bot's nlu.epochs, else "
                              "chosen from the data size; early stopping may end sooner)"},
    "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
    "activate": {"type": "boolean", "default": False,
                 "description": "Activate the model once trained (default: only published "
                                "as a new version)"},
}


def trainings_of(request: web.Request) -> Trainings:
    found = request.app.get(TRAININGS)
    if found is None:
        raise Unavailable("training jobs are not available on this gateway")
    return found


def training_json(record: Training) -> dict[str, Any]:
    return {
        "job_id": record.job_id, "bot_id": record.bot, "status": record.status,
        "options": record.options.to_json(), "source": record.source,
        "definition_revision": record.definition_revision,
        "requested_by": record.requested_by, "worker": record.worker,
        "attempts": record.attempts, "cancel_requested": record.cancel_requested,
        "progress": record.progress, "model_version": record.model_version,
        "activated": record.activated, "report": record.report, "error": record.error,
        "created_at_unix_ms": record.created_at_ms,
        "started_at_unix_ms": record.started_at_ms,
        "finished_at_unix_ms": record.finished_at_ms,
        "heartbeat_at_unix_ms": record.heartbeat_at_ms,
    }


def training_request(body: Any) -> tuple[Options, dict[str, str] | None]:
    """The options and the files (None: train the deployed definition) of a request."""
    fields = Fields(body)
    epochs = fields.number("epochs", minimum=1, maximum=MAX_EPOCHS, integer=True)
    seed = fields.number("seed", minimum=0, maximum=MAX_SEED, integer=True)
    activate = fields.flag("activate")
    files = fields.string_dict("files", required=False)
    fields.done()
    options = Options(epochs=None if epochs is None else int(epochs),
                      seed=None if seed is None else int(seed), activate=bool(activate))
    return options, None if files is None else checked_files(files)


async def start_training(request: web.Request) -> web.Response:
    """Queue a training: 202 with the job (status queued) and its Location."""
    state = state_of(request)
    bot = request.match_info["bot"]
    raw = await read_body(request, state.config.definition_body_limit_bytes)
    options, files = training_request(parse_json(raw) if raw.strip() else {})
    if files is not None:
        issues = await asyncio.to_thread(validate_definition, bot, files)
        if issues:
            raise DefinitionInvalid(issues)
    record = await trainings_of(request).start(bot, options, files,
                                               f"key {principal_of(request).key_id}")
    await audited(request, audit.TRAINING_STARTED, {
        "bot_id": bot, "job_id": record.job_id, "source": record.source,
        "epochs": options.epochs, "activate": options.activate})
    response = json_response(training_json(record), status=202)
    response.headers["Location"] = f"/v1/admin/bots/{bot}/trainings/{record.job_id}"
    return response


async def list_trainings(request: web.Request) -> web.Response:
    bot = request.match_info["bot"]
    status = request.query.get("status", "")
    if status and status not in STATUSES:
        raise RequestInvalid.one("status", f"must be one of {', '.join(STATUSES)}")
    records = await trainings_of(request).list(bot, limit_query(request, DEFAULT_LIMIT, MAX_LIMIT))
    return json_response({"bot_id": bot, "trainings": [
        training_json(r) for r in records if not status or r.status == status]})


async def get_training(request: web.Request) -> web.Response:
    record = await trainings_of(request).get(request.match_info["bot"],
                                             request.match_info["training_id"])
    return json_response(training_json(record))


async def cancel_training(request: web.Request) -> web.Response:
    """A queued training is cancelled at once; a running one within a heartbeat (202 with
    `cancel_requested: true`); 409 for one that has ended."""
    bot, job_id = request.match_info["bot"], request.match_info["training_id"]
    record = await trainings_of(request).cancel(bot, job_id)
    await audited(request, audit.TRAINING_CANCELLED,
                  {"bot_id": bot, "job_id": job_id, "status": record.status})
    return json_response(training_json(record), status=202)


async def get_training_logs(request: web.Request) -> web.Response:
    """The tail of the training's output, as text."""
    text = await trainings_of(request).logs(request.match_info["bot"],
                                            request.match_info["training_id"])
    return web.Response(text=text, content_type="text/plain", charset="utf-8")
