"""The route table: one entry per operation, used to register the routes, to guard them (the
permission each needs, the bot's tenant and scope) and to write the OpenAPI document, so the
three cannot drift apart."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from services.common.reviewqueue import REASONS, STATUSES
from services.common.trainings import STATUSES as STATUSES_OF_TRAININGS
from services.gateway.access import Permission, least_key_role
from services.gateway.auth import ROLE_NEEDS
from services.gateway.http import (
    admin,
    bot_versions,
    bots,
    channels,
    conversations,
    handoff,
    model_versions,
    review,
    runs,
    system,
    trainings,
    visitors,
    widget,
)
from services.gateway.http.bodies import WORKFLOW
from services.gateway.ports import Role

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CONVERSATION = "/v1/bots/{bot}/conversations/{conversation}"
WEBHOOK = "/v1/admin/bots/{bot}/webhook"
RUNS = "/v1/bots/{bot}/runs"
RUN = f"{RUNS}/{{run_id}}"
REVIEW = "/v1/admin/bots/{bot}/review"
ROLLOUT = "/v1/admin/bots/{bot}/rollout"
CHANNEL = "/v1/admin/bots/{bot}/channels/{channel}"
VERSIONS = "/v1/admin/bots/{bot}/versions"
ENVIRONMENTS = "/v1/admin/bots/{bot}/environments"
ENVIRONMENT = f"{ENVIRONMENTS}/{{environment}}"
INBOUND = "/v1/channels/{channel}/{bot}"
WIDGET = "/v1/bots/{bot}/widget"
TRAININGS = "/v1/admin/bots/{bot}/trainings"
TRAINING = f"{TRAININGS}/{{training_id}}"
# The RPA runner's errors (services/gateway/runs.py): 503 (with Retry-After) when it cannot be
# reached, 502 when it fails.
RUNNER_ERRORS = (502, 503)


@dataclass(frozen=True)
class Query:
    name: str
    description: str
    schema: dict[str, object]


@dataclass(frozen=True)
class RouteSpec:
    method: str
    path: str
    handler: Handler
    name: str
    summary: str
    tag: str
    # None: public (no API key); else the permission it needs (services/gateway/access.py),
    # checked by the guard (http/middlewares.py) for keys, people and visitor tokens alike.
    # A key Role is taken as the permission it stands for (auth.ROLE_NEEDS: admin → admin).
    needs: Permission | None
    # status → (description, component schema name or None)
    responses: dict[int, tuple[str, str | None]]
    request: str | None = None
    query: tuple[Query, ...] = ()
    websocket: bool = False
    content_type: str = "application/json"
    extra_errors: tuple[int, ...] = field(default=())
    # A visitor token of the path's conversation may call it too (whatever `needs` says).
    visitor: bool = False
    # It may name a bot that does not exist yet (which then becomes the caller's tenant's).
    creates: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.needs, Role):
            object.__setattr__(self, "needs", ROLE_NEEDS[self.needs])

    @property
    def role(self) -> Role | None:
        """The least API key role that may call it (None: public)."""
        return None if self.needs is None else Role(least_key_role(self.needs))


WAIT = Query("wait", "false: answer 202 at once; the replies come on the WebSocket, webhook "
             "or transcript.", {"type": "boolean", "default": True})
INCLUDE = Query("include", "nlu: add the NLU result (intent, confidence, ranking, entities) "
                "and the flow step to the response (SendResult.nlu).", {"enum": ["nlu"]})
TRANSCRIPT_INCLUDE = Query(
    "include", "events (agent and admin keys only): add each turn's events after its user "
    "message: nlu (intent, confidence, entities), slot_set, slot_rejected (slot, value, reason, "
    "problem), question_repeated, flow_*, fallback, workflow_finished (the error details) ...",
    {"enum": ["events"]})
LIMIT = Query("limit", "Most recent entries to return (at most "
              "BOTFACTORY_GATEWAY_TRANSCRIPT_MAX_LIMIT, 1000 by default).",
              {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100})
TRAINING_FILTERS = (
    Query("status", "Only trainings in this status.", {"enum": list(STATUSES_OF_TRAININGS)}),
    Query("limit", "At most this many trainings (of the most recent), newest first.",
          {"type": "integer", "minimum": 1, "maximum": trainings.MAX_LIMIT,
           "default": trainings.DEFAULT_LIMIT}),
)
TENANT = Query("tenant", "Only this tenant's keys (an admin of one tenant sees only its own).",
               {"type": "string"})
DEPLOY_TENANT = Query(
    "tenant", "The tenant that owns the bot, recorded when it has no owner yet (a new bot, or "
    "one that belongs to the default tenant without a record); default: the caller's tenant "
    "(the platform's key: none, it stays the default tenant's). Naming another tenant than an "
    "owned bot's: 409.", {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"})
BOTS_TENANT = Query("tenant", "Only this tenant's bots.",
                    {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"})
OWNER = "/v1/admin/bots/{bot}/owner"
RUN_FILTERS = (
    Query("workflow", "Only runs of this workflow (empty: all).",
          {"type": "string", "pattern": f"^$|{WORKFLOW.pattern}"}),
    Query("status", "Only runs in this status.", {"enum": list(runs.STATUSES)}),
    Query("limit", "At most this many runs, newest first.",
          {"type": "integer", "minimum": 1, "maximum": runs.MAX_LIMIT,
           "default": runs.DEFAULT_LIMIT}),
)
REVIEW_FILTERS = (
    Query("status", "Only items in this status (default pending).",
          {"enum": list(STATUSES), "default": "pending"}),
    Query("reason", "Only items queued for this reason.", {"enum": list(REASONS)}),
    Query("limit", "At most this many items, highest priority first.",
          {"type": "integer", "minimum": 1, "maximum": review.MAX_LIMIT,
           "default": review.DEFAULT_LIMIT}),
)


ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec("POST", f"{CONVERSATION}/messages", conversations.post_message, "post_message",
              "Send a user message; the bot's replies come in the response", "conversations",
              Permission.CONVERSE, {200: ("The whole turn: every reply, workflow results included "
                                  "(complete: true; handoff: true when a human agent has the "
                                  "conversation)", "SendResult"),
                            202: ("Accepted; replies so far (complete: false)", "SendResult")},
              request="UserMessageRequest", query=(WAIT, INCLUDE),
              extra_errors=(404, 413, 503), visitor=True),
    RouteSpec("POST", f"{CONVERSATION}/tokens", visitors.post_token, "create_visitor_token",
              "A visitor token of this conversation, for its end user: it sends, follows and "
              "reads this conversation only, until it expires (a client key's holder asks; "
              "visitor tokens cannot)", "conversations", Permission.CONVERSE,
              {201: ("Issued", "VisitorToken")}, extra_errors=(503,)),
    RouteSpec("GET", f"{CONVERSATION}/transcript", conversations.get_transcript,
              "get_transcript", "The conversation's messages, oldest first (the "
              "conversation's visitor token, or an agent or admin key)",
              "conversations", Permission.AGENT, {200: ("Transcript", "Transcript")},
              query=(LIMIT, TRANSCRIPT_INCLUDE),
              visitor=True),
    RouteSpec("GET", f"{CONVERSATION}/ws", conversations.conversation_socket,
              "conversation_socket",
              "WebSocket: the server pushes {type: message, ...Reply}; the client may send "
              "{text, message_id?} frames (acknowledged with {type: ack}). Browsers pass the "
              "key or visitor token as the subprotocol `bearer.<token>` beside "
              "`botfactory.v1`. 404 before the handshake when no dialogue replica serves the "
              "bot.",
              "conversations", Permission.CONVERSE, {101: ("Switching protocols", None)},
              extra_errors=(404,), websocket=True, visitor=True),
    RouteSpec("POST", f"{CONVERSATION}/messages/{{message_id}}/feedback",
              conversations.post_feedback, "post_feedback",
              "Rate a bot message (+1 / -1, optional comment)", "conversations",
              Permission.CONVERSE,
              {202: ("Recorded", "FeedbackAccepted")}, request="FeedbackRequest",
              extra_errors=(404, 413), visitor=True),
    RouteSpec("GET", "/v1/bots/{bot}/handoffs", handoff.list_handoffs, "list_handoffs",
              "Conversations handed off to a human agent", "handoff", Permission.AGENT,
              {200: ("Handed-off conversations", "Handoffs")}),
    RouteSpec("GET", "/v1/bots/{bot}/handoffs/ws", handoff.handoff_socket, "handoff_socket",
              "WebSocket for agent desks: the server pushes {type: user_message, ...Reply} for "
              "every user message of the bot's handed-off conversations (role user, "
              "conversation_id set)", "handoff", Permission.AGENT,
              {101: ("Switching protocols", None)}, websocket=True),
    RouteSpec("POST", f"{CONVERSATION}/agent-messages", handoff.post_agent_message,
              "post_agent_message", "Reply to the user as a human agent", "handoff",
              Permission.AGENT,
              {202: ("Sent", "AgentMessageAccepted")}, request="AgentMessageRequest",
              extra_errors=(404, 413)),
    RouteSpec("POST", f"{CONVERSATION}/release", handoff.post_release, "post_release",
              "Give a handed-off conversation back to the bot", "handoff", Permission.AGENT,
              {200: ("Released", "Released")}),
    RouteSpec("POST", RUNS, runs.start_run, "start_run",
              "Start a run of one of the bot's workflows (it runs asynchronously)", "runs",
              Permission.AGENT, {202: ("Started (status pending)", "Run")},
              request="StartRunRequest",
              extra_errors=(404, 413, *RUNNER_ERRORS)),
    RouteSpec("GET", RUNS, runs.list_runs, "list_runs",
              "The bot's workflow runs, newest first (without step history)", "runs",
              Permission.AGENT, {200: ("Runs", "RunList")}, query=RUN_FILTERS,
              extra_errors=RUNNER_ERRORS),
    RouteSpec("GET", RUN, runs.get_run, "get_run", "A run with its step history", "runs",
              Permission.AGENT, {200: ("Run", "Run")}, extra_errors=(404, *RUNNER_ERRORS)),
    RouteSpec("POST", f"{RUN}/cancel", runs.cancel_run, "cancel_run",
              "Cancel a run: its completed steps are compensated in reverse order", "runs",
              Permission.AGENT, {202: ("Cancellation requested", "Run")},
              request="CancelRunRequest",
              extra_errors=(404, 409, 413, *RUNNER_ERRORS)),
    RouteSpec("POST", f"{RUN}/approve", runs.approve_run, "approve_run",
              "Approve the approval step the run waits for", "runs", Permission.AGENT,
              {202: ("Approved", "Run")}, request="ApprovalDecisionRequest",
              extra_errors=(404, 409, 413, *RUNNER_ERRORS)),
    RouteSpec("POST", f"{RUN}/reject", runs.reject_run, "reject_run",
              "Reject the approval step the run waits for (the run fails and compensates)",
              "runs", Permission.AGENT, {202: ("Rejected", "Run")},
              request="ApprovalDecisionRequest",
              extra_errors=(404, 409, 413, *RUNNER_ERRORS)),
    RouteSpec("POST", f"{RUN}/retry", runs.retry_run, "retry_run",
              "Run a failed or needs_attention run again from its failed step", "runs",
              Permission.OPERATE, {202: ("Retry requested", "Run")},
              extra_errors=(404, 409, *RUNNER_ERRORS)),
    RouteSpec("POST", "/v1/admin/keys", admin.create_key, "create_key",
              "Create an API key; the secret is in this response only", "admin", Permission.ADMIN,
              {201: ("Created", "CreatedKey")}, request="CreateKeyRequest", extra_errors=(413,)),
    RouteSpec("GET", "/v1/admin/keys", admin.list_keys, "list_keys",
              "List API keys (never their secrets)", "admin", Permission.ADMIN,
              {200: ("Keys", "KeyList")}, query=(TENANT,)),
    RouteSpec("DELETE", "/v1/admin/keys/{key_id}", admin.revoke_key, "revoke_key",
              "Revoke an API key", "admin", Permission.ADMIN, {200: ("Revoked", "Key")},
              extra_errors=(404,)),
    RouteSpec("GET", "/v1/admin/bots", bots.list_bots, "list_bots",
              "The bots with an owner record in the caller's tenants (a key: those it names)",
              "admin", Permission.READ, {200: ("Bots", "BotList")}, query=(BOTS_TENANT,)),
    RouteSpec("GET", OWNER, bots.get_owner, "get_bot_owner",
              "The tenant that owns the bot", "admin", Permission.READ,
              {200: ("Owner", "BotOwner")}),
    RouteSpec("PUT", OWNER, bots.put_owner, "put_bot_owner",
              "Move the bot to another tenant (the caller administers both)", "admin",
              Permission.ADMIN, {200: ("Moved", "BotOwner")}, request="BotOwnerRequest",
              extra_errors=(413,)),
    RouteSpec("GET", "/v1/admin/bots/{bot}/models", model_versions.list_versions, "list_models",
              "The bot's model versions in the store (with metadata), the active one, the "
              "activation history and the rollout", "admin", Permission.READ,
              {200: ("Versions", "ModelVersions")}, extra_errors=(503,)),
    RouteSpec("PUT", "/v1/admin/bots/{bot}/model", model_versions.put_active, "put_model",
              "Activate a model version for the bot", "admin", Permission.OPERATE,
              {200: ("Activated", "ActiveModel")}, request="ActivateModelRequest",
              extra_errors=(404, 413, 503)),
    RouteSpec("POST", "/v1/admin/bots/{bot}/model/rollback", model_versions.post_rollback,
              "rollback_model", "Activate the version that was active before the current one",
              "admin", Permission.OPERATE, {200: ("Rolled back", "ActivationResult")},
              extra_errors=(409, 503)),
    RouteSpec("PUT", ROLLOUT, model_versions.put_rollout, "put_rollout",
              "Start (or change) the rollout of a candidate version: shadow or canary",
              "admin", Permission.OPERATE, {200: ("Rollout in effect", "RolloutState")},
              request="RolloutRequest", extra_errors=(404, 409, 413, 503)),
    RouteSpec("POST", f"{ROLLOUT}/promote", model_versions.post_promote, "promote_rollout",
              "Make the rollout's candidate the active version (ends the rollout)", "admin",
              Permission.OPERATE, {200: ("Promoted", "ActivationResult")}, extra_errors=(409, 503)),
    RouteSpec("DELETE", ROLLOUT, model_versions.delete_rollout, "delete_rollout",
              "Abort the rollout: the candidate stops serving", "admin", Permission.OPERATE,
              {200: ("Aborted", "RolloutState")}, extra_errors=(409, 503)),
    RouteSpec("POST", TRAININGS, trainings.start_training, "start_training",
              "Train the bot on a trainer worker (its deployed definition, or the files sent): "
              "the result is a new model version with its report (docs/training.md)", "admin",
              Permission.OPERATE, {202: ("Queued (Location: the training)", "Training")},
              request="TrainingRequest", extra_errors=(404, 413, 422, 503)),
    RouteSpec("GET", TRAININGS, trainings.list_trainings, "list_trainings",
              "The bot's trainings, newest first", "admin", Permission.READ,
              {200: ("Trainings", "TrainingList")}, query=TRAINING_FILTERS,
              extra_errors=(503,)),
    RouteSpec("GET", TRAINING, trainings.get_training, "get_training",
              "A training: status, progress (every epoch's loss and held-out metrics), the "
              "model version and its report, or the error", "admin", Permission.READ,
              {200: ("Training", "Training")}, extra_errors=(404, 503)),
    RouteSpec("POST", f"{TRAINING}/cancel", trainings.cancel_training, "cancel_training",
              "Cancel a training: a queued one at once, a running one within seconds", "admin",
              Permission.OPERATE, {202: ("Cancelled, or cancellation requested", "Training")},
              extra_errors=(404, 409, 503)),
    RouteSpec("GET", f"{TRAINING}/logs", trainings.get_training_logs, "get_training_logs",
              "The tail of the training's output (text)", "admin", Permission.READ,
              {200: ("The log", None)}, content_type="text/plain", extra_errors=(404, 503)),
    RouteSpec("GET", VERSIONS, bot_versions.list_versions, "list_bot_versions",
              "The bot's immutable versions (definition files, model, knowledge index), "
              "oldest first", "versions", Permission.READ, {200: ("Versions", "BotVersions")},
              extra_errors=(400, 503)),
    RouteSpec("POST", VERSIONS, bot_versions.create_version, "create_bot_version",
              "Create a version from definition files, a model version and a knowledge index "
              "version in the store (content-addressed: the same content answers 200 with the "
              "existing version)", "versions", Permission.EDIT,
              {201: ("Created", "BotVersion"), 200: ("Exists already", "BotVersion")},
              request="CreateVersionRequest", extra_errors=(404, 413, 422, 503)),
    RouteSpec("GET", f"{VERSIONS}/{{version}}", bot_versions.get_version, "get_bot_version",
              "One version with its files and recorded checks", "versions", Permission.READ,
              {200: ("Version", "BotVersion")}, extra_errors=(400, 404, 503)),
    RouteSpec("GET", f"{VERSIONS}/{{version}}/diff", bot_versions.diff_versions,
              "diff_bot_versions", "What changed from ?from= (default: the version before) "
              "to this version: files (unified diffs), model, knowledge index", "versions",
              Permission.READ, {200: ("Difference", "BotVersionDiff")},
              query=(Query("from", "The version to compare with", {
                  "type": "string", "pattern": "^v[0-9a-f]{16}$"}),),
              extra_errors=(400, 404, 503)),
    RouteSpec("POST", f"{VERSIONS}/{{version}}/checks", bot_versions.record_check,
              "record_bot_version_check", "Record a check result on a version "
              "(conversation_tests, model_gate, ...)", "versions", Permission.OPERATE,
              {200: ("Recorded", "CheckRecorded")}, request="RecordCheckRequest",
              extra_errors=(404, 413, 503)),
    RouteSpec("GET", ENVIRONMENTS, bot_versions.list_environments, "list_environments",
              "The bot's environments, the version each serves, canaries and history",
              "versions", Permission.READ, {200: ("Environments", "BotEnvironments")},
              extra_errors=(400, 503)),
    RouteSpec("PUT", ENVIRONMENTS, bot_versions.configure_environments,
              "configure_environments", "Set the bot's environments, the checks each requires "
              "before a promotion, and the default one", "versions", Permission.OPERATE,
              {200: ("Configured", "BotEnvironments")}, request="ConfigureEnvironmentsRequest",
              extra_errors=(413, 503)),
    RouteSpec("POST", f"{ENVIRONMENT}/promote", bot_versions.promote, "promote_environment",
              "Point the environment at a version (or at another environment's version); "
              "new conversations start on it, running ones stay on theirs", "versions",
              Permission.OPERATE, {200: ("Promoted", "BotEnvironment")}, request="PromoteRequest",
              extra_errors=(404, 409, 413, 503)),
    RouteSpec("POST", f"{ENVIRONMENT}/rollback", bot_versions.rollback,
              "rollback_environment", "Point the environment back at its previous version",
              "versions", Permission.OPERATE, {200: ("Rolled back", "BotEnvironment")},
              extra_errors=(400, 404, 409, 503)),
    RouteSpec("PUT", f"{ENVIRONMENT}/canary", bot_versions.put_canary, "put_environment_canary",
              "Start (or change) a bot-version canary: a sticky share of new conversations "
              "starts on the version", "versions", Permission.OPERATE,
              {200: ("Canary in effect", "BotEnvironment")}, request="CanaryRequest",
              extra_errors=(404, 409, 413, 503)),
    RouteSpec("DELETE", f"{ENVIRONMENT}/canary", bot_versions.delete_canary,
              "delete_environment_canary", "End the canary (its conversations finish on it)",
              "versions", Permission.OPERATE, {200: ("Canary ended", "BotEnvironment")},
              extra_errors=(400, 404, 409, 503)),
    RouteSpec("PUT", "/v1/admin/bots/{bot}/definition", admin.put_definition, "put_definition",
              "Validate and deploy a bot definition", "admin", Permission.EDIT,
              {200: ("Deployed", "DeployedDefinition")}, request="DefinitionRequest",
              query=(DEPLOY_TENANT,), extra_errors=(404, 409, 413, 422, 503), creates=True),
    RouteSpec("PUT", WEBHOOK, admin.put_webhook, "put_webhook",
              "Set the bot's webhook: its messages are POSTed there, signed with the secret",
              "admin", Permission.OPERATE,
              {200: ("Configured (the secret is not shown)", "Webhook")},
              request="WebhookRequest", extra_errors=(413, 503)),
    RouteSpec("GET", WEBHOOK, admin.get_webhook, "get_webhook",
              "The bot's webhook (never its secret)", "admin", Permission.READ,
              {200: ("Webhook", "Webhook")}, extra_errors=(404, 503)),
    RouteSpec("DELETE", WEBHOOK, admin.delete_webhook, "delete_webhook",
              "Remove the bot's webhook", "admin", Permission.OPERATE,
              {200: ("Removed", "WebhookDeleted")}, extra_errors=(404, 503)),
    RouteSpec("GET", REVIEW, review.list_review, "list_review",
              "The bot's review queue (annotation inbox), highest priority first", "review",
              Permission.READ, {200: ("Items", "ReviewItems")}, query=REVIEW_FILTERS,
              extra_errors=(503,)),
    RouteSpec("POST", f"{REVIEW}/decisions", review.decide_review, "decide_review",
              "Confirm or correct an item's intent and entity spans, or mark it out of scope",
              "review", Permission.EDIT, {200: ("Decided", "ReviewItem")},
              request="ReviewDecisionRequest", extra_errors=(404, 409, 413, 503)),
    RouteSpec("POST", f"{REVIEW}/skips", review.skip_review, "skip_review",
              "Skip an item (it leaves the pending list)", "review", Permission.EDIT,
              {200: ("Skipped", "ReviewItem")}, request="ReviewItemRequest",
              extra_errors=(404, 409, 413, 503)),
    RouteSpec("POST", f"{REVIEW}/applied", review.applied_review, "applied_review",
              "Mark decided items as written into the bot's data files", "review", Permission.EDIT,
              {200: ("Marked", "ReviewApplied")}, request="ReviewAppliedRequest",
              extra_errors=(404, 409, 413, 503)),
    RouteSpec("PUT", CHANNEL, channels.put_channel, "put_channel",
              "Set up a messaging channel for the bot (docs/channels.md): the platform's "
              "credentials, stored encrypted; the platform calls webhook_path", "channels",
              Permission.OPERATE, {200: ("Configured (secrets are not shown)", "ChannelSettings")},
              request="ChannelSettingsRequest", extra_errors=(404, 413, 503)),
    RouteSpec("GET", CHANNEL, channels.get_channel, "get_channel",
              "The bot's settings of a channel, without its secrets", "channels", Permission.READ,
              {200: ("Channel", "ChannelSettings")}, extra_errors=(404, 503)),
    RouteSpec("DELETE", CHANNEL, channels.delete_channel, "delete_channel",
              "Remove a channel from the bot", "channels", Permission.OPERATE,
              {200: ("Removed", "ChannelDeleted")}, extra_errors=(404, 503)),
    RouteSpec("POST", INBOUND, channels.channel_inbound, "channel_inbound",
              "A messaging platform's webhook: verified the platform's way (signature, "
              "secret token, JWT), 401 otherwise; answered at once, the replies go out "
              "through the platform's API", "channels", None,
              {200: ("Taken (or the platform's handshake answer)", None)},
              extra_errors=(400, 401, 404, 413, 503)),
    RouteSpec("GET", INBOUND, channels.channel_handshake, "channel_handshake",
              "A messaging platform's verification handshake (WhatsApp hub.challenge)",
              "channels", None, {200: ("The challenge", None)},
              content_type="text/plain", extra_errors=(400, 401, 404, 405, 503)),
    RouteSpec("POST", f"{WIDGET}/sessions", widget.create_session, "create_widget_session",
              "The web widget's session: a visitor token of a new conversation, or of the "
              "conversation of the still-valid visitor token presented (a reload resumes "
              "it). A publishable key (pk_), from an origin on the bot's widget allow-list "
              "(docs/channels.md)", "widget", Permission.WIDGET,
              {201: ("Issued", "WidgetSession")}, request="WidgetSessionRequest",
              extra_errors=(404, 413)),
    RouteSpec("GET", f"{WIDGET}/config", widget.get_config, "get_widget_config",
              "The web widget's theme (title, colour, avatar, greeting). A publishable key, "
              "from an origin on the bot's widget allow-list", "widget", Permission.WIDGET,
              {200: ("Theme", "WidgetConfig")}),
    RouteSpec("GET", "/widget.js", widget.widget_script, "widget_script",
              "The web widget's script, for any site to embed: <script src=\".../widget.js\" "
              "data-bot=\"...\" data-key=\"pk_...\" async>", "widget", None,
              {200: ("JavaScript", None)}, content_type="text/javascript"),
    RouteSpec("GET", "/healthz", system.healthz, "healthz", "Liveness", "system", None,
              {200: ("Alive", "Status")}),
    RouteSpec("GET", "/readyz", system.readyz, "readyz", "Readiness (message bus connected)",
              "system", None, {200: ("Ready", "Status")}, extra_errors=(503,)),
    RouteSpec("GET", "/openapi.json", system.openapi, "openapi", "This document", "system",
              None, {200: ("OpenAPI 3.1 document", None)}),
    RouteSpec("GET", "/", system.index, "index", "The web chat page", "webchat", None,
              {200: ("HTML page", None)}, content_type="text/html"),
    RouteSpec("GET", "/static/{name}", system.static_file, "static_file",
              "The web chat page's scripts and styles", "webchat", None,
              {200: ("File (JavaScript, CSS or HTML)", None)}, content_type="text/*",
              extra_errors=(404,)),
)

SPEC = web.AppKey("route_specs", dict)


def register(app: web.Application) -> None:
    """Every route; a GET (but a WebSocket's) answers HEAD too, under the same name (so the
    same guard applies)."""
    for spec in ROUTES:
        if spec.method == "GET":
            app.router.add_get(spec.path, spec.handler, name=spec.name,
                               allow_head=not spec.websocket)
        else:
            app.router.add_route(spec.method, spec.path, spec.handler, name=spec.name)
    app[SPEC] = {spec.name: spec for spec in ROUTES}


def spec_of(request: web.Request) -> RouteSpec | None:
    name = request.match_info.route.name
    found = request.app[SPEC].get(name) if name else None
    return found if isinstance(found, RouteSpec) else None
