"""Model version routes (role admin): versions with metadata, activation history, rollback,
and rollouts of a candidate (shadow, canary, promote, abort). See docs/rollout.md.

They work on the ModelRollouts port (`MODEL_ROLLOUTS` on the app; services/gateway/rollouts.py
over the bus); without it the listing and activation fall back to the plain ModelAdmin routes
of admin.py and the rollout routes answer 503. Every change is audited.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.common import audit as actions
from services.common.errors import Unavailable
from services.common.modelstore import MODES, Activation, Rollout
from services.gateway.http import admin
from services.gateway.http.admin import audited
from services.gateway.http.bodies import VERSION
from services.gateway.http.state import principal_of, state_of
from services.gateway.http.wire import Fields, json_response, read_json
from services.gateway.ports import ModelRollouts

MODEL_ROLLOUTS: web.AppKey[ModelRollouts] = web.AppKey("model_rollouts")

_STR = {"type": "string"}
_INT = {"type": "integer"}
_UNIT = {"type": "number", "minimum": 0, "maximum": 1}
_ROLLOUT_FIELDS: dict[str, Any] = {
    "candidate": _STR, "mode": {"enum": list(MODES)},
    "share": {**_UNIT, "description": "Canary: share of conversations on the candidate"},
    "max_fallback_increase": {**_UNIT, "default": 0.05},
    "max_negative_feedback_increase": {**_UNIT, "default": 0.05},
    "min_samples": {"type": "integer", "minimum": 1, "default": 50},
}
_ACTIVATION = {"type": "object", "required": ["version", "previous", "actor", "reason"],
               "properties": {"version": _STR, "previous": _STR, "actor": _STR,
                              "reason": {"enum": ["activate", "rollback", "promote"]},
                              "at_unix_ms": _INT}}
SCHEMAS: dict[str, Any] = {
    "ModelVersions": {"type": "object", "required": ["bot_id", "versions"], "properties": {
        "bot_id": _STR, "versions": {"type": "array", "items": _STR},
        "active": {"type": ["string", "null"]},
        "models": {"type": "array", "items": {"type": "object", "properties": {
            "version": _STR, "size_bytes": _INT, "uploaded_at": _STR, "created_at": _STR,
            "kind": _STR, "metrics": {"type": "object"}}}},
        "history": {"type": "array", "items": {"$ref": "#/components/schemas/Activation"}},
        "rollout": {"oneOf": [{"$ref": "#/components/schemas/Rollout"}, {"type": "null"}]}}},
    "Activation": _ACTIVATION,
    "ActivationResult": {"type": "object", "required": ["bot_id", "activation"], "properties": {
        "bot_id": _STR, "activation": {"$ref": "#/components/schemas/Activation"}}},
    "Rollout": {"type": "object", "required": ["candidate", "mode", "share"], "properties": {
        **_ROLLOUT_FIELDS, "baseline": _STR, "started_at_unix_ms": _INT, "actor": _STR}},
    "RolloutState": {"type": "object", "required": ["bot_id", "rollout"], "properties": {
        "bot_id": _STR, "rollout": {"$ref": "#/components/schemas/Rollout"}}},
}


def _rollouts(request: web.Request) -> ModelRollouts:
    rollouts = request.app.get(MODEL_ROLLOUTS)
    if rollouts is None:
        raise Unavailable("model rollouts are not available on this gateway")
    return rollouts


def _actor(request: web.Request) -> str:
    return principal_of(request).key_id


async def list_versions(request: web.Request) -> web.Response:
    """The versions with their metadata, the active one, the history and the rollout."""
    if request.app.get(MODEL_ROLLOUTS) is None:
        return await admin.list_models(request)
    models, bot = _rollouts(request), request.match_info["bot"]
    versions = await models.versions(bot)
    rollout = await models.rollout(bot)
    return json_response({
        "bot_id": bot, "versions": [v.version for v in versions],
        "active": await models.active(bot), "models": [v.to_json() for v in versions],
        "history": [a.to_json() for a in await models.history(bot)],
        "rollout": rollout.to_json() if rollout is not None else None,
    })


async def put_active(request: web.Request) -> web.Response:
    """Activate a version (recorded in the history with the acting key)."""
    if request.app.get(MODEL_ROLLOUTS) is None:
        return await admin.put_model(request)
    models, bot = _rollouts(request), request.match_info["bot"]
    version = await admin.requested_version(request)
    await models.activate(bot, version, _actor(request))
    await audited(request, actions.MODEL_ACTIVATED, {"bot_id": bot, "version": version})
    return json_response({"bot_id": bot, "version": version, "active": True})


async def post_rollback(request: web.Request) -> web.Response:
    activation = await _rollouts(request).rollback(request.match_info["bot"], _actor(request))
    return await _activated(request, actions.MODEL_ROLLED_BACK, activation)


async def _activated(request: web.Request, action: str,
                     activation: Activation) -> web.Response:
    """Audit a rollback or promotion and answer with the activation it made."""
    bot = request.match_info["bot"]
    await audited(request, action,
                  {"bot_id": bot, "version": activation.version, "from": activation.previous})
    return json_response({"bot_id": bot, "activation": activation.to_json()})


def rollout_of(body: Any, actor: str) -> Rollout:
    fields = Fields(body)
    candidate = fields.identifier("candidate", VERSION)
    mode = fields.choice("mode", MODES)
    share = fields.number("share", minimum=0, maximum=1)
    fallback = fields.number("max_fallback_increase", minimum=0, maximum=1)
    negative = fields.number("max_negative_feedback_increase", minimum=0, maximum=1)
    samples = fields.number("min_samples", minimum=1, maximum=1e9, integer=True)
    if mode == "canary" and not share:
        fields.fail("share", "a canary needs a share above 0 (at most 1)")
    fields.done()
    assert candidate is not None and mode is not None
    defaults = Rollout(candidate=candidate, mode=mode)
    return Rollout(
        candidate=candidate, mode=mode, share=share or 0.0, actor=actor,
        max_fallback_increase=defaults.max_fallback_increase if fallback is None else fallback,
        max_negative_feedback_increase=(defaults.max_negative_feedback_increase
                                        if negative is None else negative),
        min_samples=defaults.min_samples if samples is None else int(samples)).validate()


async def put_rollout(request: web.Request) -> web.Response:
    """Start (or change) the rollout of a candidate version in shadow or canary mode."""
    models, bot = _rollouts(request), request.match_info["bot"]
    body = await read_json(request, state_of(request).config.body_limit_bytes)
    record = await models.start_rollout(bot, rollout_of(body, _actor(request)))
    await audited(request, actions.ROLLOUT_STARTED,
                  {"bot_id": bot, "candidate": record.candidate, "mode": record.mode,
                   "share": record.share, "active": record.baseline})
    return json_response({"bot_id": bot, "rollout": record.to_json()})


async def post_promote(request: web.Request) -> web.Response:
    activation = await _rollouts(request).promote(request.match_info["bot"], _actor(request))
    return await _activated(request, actions.ROLLOUT_PROMOTED, activation)


async def delete_rollout(request: web.Request) -> web.Response:
    bot = request.match_info["bot"]
    record = await _rollouts(request).abort(bot)
    await audited(request, actions.ROLLOUT_ABORTED,
                  {"bot_id": bot, "candidate": record.candidate, "mode": record.mode,
                   "reason": "aborted by an admin"})
    return json_response({"bot_id": bot, "rollout": record.to_json()})
