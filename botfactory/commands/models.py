"""`botfactory publish` and `botfactory models`: the model registry on NATS (docs/rollout.md).

publish MODEL_DIR uploads a model to the object store and activates it (or, with `--shadow` /
`--canary SHARE`, starts a rollout of it beside the active version). `models list|activate|
rollback|rollout|promote|abort BOT` manage a bot's versions. Serving NLU replicas that follow
the store pick every change up without a restart. Each change is an audit event (actor
`cli:<user>`).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

DEFAULT_NATS = "nats://127.0.0.1:4222"
ROLLOUT_DEFAULTS = {"max_fallback_increase": 0.05, "max_negative_feedback_increase": 0.05,
                    "min_samples": 50}


def _nats_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nats", default=os.environ.get("BOTFACTORY_NATS_URL", DEFAULT_NATS),
                        help="NATS URL (default: $BOTFACTORY_NATS_URL or %(default)s)")


def _share(value: str) -> float:
    try:
        share = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0 < share <= 1:
        raise argparse.ArgumentTypeError("must be above 0 and at most 1 (0.1 = 10%)")
    return share


def _rollout_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    mode = parser.add_mutually_exclusive_group(required=required)
    mode.add_argument("--shadow", action="store_true",
                      help="the candidate parses live traffic beside the active model; "
                           "replies are unchanged")
    mode.add_argument("--canary", type=_share, metavar="SHARE",
                      help="this share of conversations (0..1, sticky) uses the candidate")
    parser.add_argument("--max-fallback-increase", type=float,
                        default=ROLLOUT_DEFAULTS["max_fallback_increase"],
                        help="abort a canary whose fallback rate exceeds the active one's by "
                             "more (default %(default)s)")
    parser.add_argument("--max-negative-feedback-increase", type=float,
                        default=ROLLOUT_DEFAULTS["max_negative_feedback_increase"],
                        help="the same for thumbs-down ratings per turn (default %(default)s)")
    parser.add_argument("--min-samples", type=int, default=ROLLOUT_DEFAULTS["min_samples"],
                        help="turns each variant needs before the guard judges "
                             "(default %(default)s)")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("publish", help="publish a trained model to the model store, "
                                   "or a bot version (BOT_DIR --model M [--kb K])",
                                   description=__doc__)
    parser.add_argument("model_dir", type=Path, metavar="MODEL_DIR|BOT_DIR")
    parser.add_argument("--model", help="BOT_DIR: the version's model (a version id in the "
                                        "store, or a trained model folder to upload)")
    parser.add_argument("--kb", help="BOT_DIR: the version's knowledge index (a version id in "
                                     "the store, or an index folder to upload)")
    parser.add_argument("--description", default="", help="BOT_DIR: a note on the version")
    _nats_option(parser)
    parser.add_argument("--no-activate", action="store_true",
                        help="upload only; do not make it the bot's active version")
    parser.add_argument("--gate", action="store_true",
                        help="publish only if `botfactory gate` passed for this model "
                             "(MODEL_DIR/reports/gate.json)")
    _tenant_option(parser)
    _rollout_options(parser, required=False)
    parser.set_defaults(func=run_publish)
    _register_models(subparsers)


def _tenant_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", type=_tenant, default=None,
                        help="the tenant that owns the bot, recorded when it has no owner yet "
                             "(a bot owned by another tenant is refused). Without it nothing "
                             "is recorded: a bot without an owner belongs to the default "
                             "tenant (docs/security.md, \"Tenants\")")


def _tenant(value: str) -> str:
    from services.gateway.access import TENANT_NAME

    if not TENANT_NAME.match(value):
        raise argparse.ArgumentTypeError("a tenant is 1-64 letters, digits, '_' or '-'")
    return value


def _register_models(subparsers: Any) -> None:
    parser = subparsers.add_parser("models", help="list, activate, roll back and roll out "
                                                  "model versions", description=__doc__)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    specs: list[tuple[str, str, Callable[[argparse.Namespace], int]]] = [
        ("list", "the bot's versions, the active one, the history and the rollout", run_list),
        ("activate", "make VERSION the bot's active model", run_activate),
        ("rollback", "activate the version that was active before the current one",
         run_rollback),
        ("rollout", "start (or change) a shadow or canary rollout of CANDIDATE", run_rollout),
        ("promote", "make the rollout's candidate the active version", run_promote),
        ("abort", "end the rollout; the candidate stops serving", run_abort),
    ]
    for name, help_text, func in specs:
        sub = actions.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("bot")
        if name == "activate":
            sub.add_argument("version")
        if name == "rollout":
            sub.add_argument("candidate")
            _rollout_options(sub, required=True)
        if name == "list":
            sub.add_argument("--json", action="store_true", help="print JSON")
        _nats_option(sub)
        sub.set_defaults(func=func)


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _quiet_logs() -> None:
    """Library log lines (provisioning, audit) to stderr and only warnings: stdout is the
    command's output (`models list --json` pipes into other tools)."""
    import logging

    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr),
                        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def _run(url: str, work: Callable[[Any], Awaitable[Any]]) -> tuple[int, Any]:
    """Run `work(bus)` against NATS; (exit code, result) with errors printed."""
    from services.common.botversions import VersionError
    from services.common.modelstore import ModelStoreError

    _quiet_logs()

    async def connected() -> Any:
        from services.common.nats import connect, provision

        bus = await connect(url, name="botfactory-cli")
        try:
            await provision(bus)
            return await work(bus)
        finally:
            await bus.drain()

    try:
        return 0, asyncio.run(connected())
    except (ModelStoreError, OwnedElsewhere, VersionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2, None
    except (OSError, TimeoutError) as exc:
        print(f"error: cannot reach NATS at {url}: {exc}", file=sys.stderr)
        return 1, None


class OwnedElsewhere(Exception):
    """The bot belongs to another tenant than the one the command names."""


async def claim_bot(bus: Any, bot: str, tenant: str) -> None:
    """Record `tenant` as the bot's owner unless it has one (audited); OwnedElsewhere when
    another tenant owns it."""
    from services.gateway.audit import BOT_OWNER_SET
    from services.gateway.owners import NatsBotOwners

    owners = await NatsBotOwners.open(bus)
    before = await owners.owner(bot)
    owner = await owners.claim(bot, tenant)
    if owner != tenant:
        raise OwnedElsewhere(f"bot {bot!r} belongs to tenant {owner!r}, not {tenant!r} "
                             f"(move it: botfactory bots owner {bot} {tenant})")
    if before is None:
        await _audit(bus, BOT_OWNER_SET, {"bot_id": bot, "tenant": tenant, "from": None,
                                          "recorded_before": False})


async def _audit(bus: Any, action: str, target: dict[str, Any]) -> None:
    from services.common import audit

    await audit.record(audit.BusAuditLog(bus), audit.platform_event(actor(), action, target))


def _rollout(args: argparse.Namespace, candidate: str) -> Any:
    from services.common.modelstore import Rollout

    return Rollout(candidate=candidate, mode="canary" if args.canary else "shadow",
                   share=args.canary or 0.0, actor=actor(),
                   max_fallback_increase=args.max_fallback_increase,
                   max_negative_feedback_increase=args.max_negative_feedback_increase,
                   min_samples=args.min_samples).validate()


async def _start_rollout(bus: Any, bot: str, rollout: Any) -> Any:
    from services.common import audit
    from services.common.modelstore import start_rollout

    record = await start_rollout(bus, bot, rollout)
    await _audit(bus, audit.ROLLOUT_STARTED, {
        "bot_id": bot, "candidate": record.candidate, "mode": record.mode,
        "share": record.share, "active": record.baseline})
    return record


def run_publish(args: argparse.Namespace) -> int:
    from botfactory.commands.kb import is_knowledge_index, publish_index
    from botfactory.commands.versions import is_bot_folder, publish_bot
    from services.nlu.engine import ModelLoadError, NluModel

    if is_bot_folder(args.model_dir):  # a bot version (docs/versions.md)
        return publish_bot(args)
    if is_knowledge_index(args.model_dir):  # written by `botfactory kb build`
        return publish_index(args.model_dir, args.nats, activate=not args.no_activate)
    try:
        model = NluModel.load(args.model_dir)  # refuse to publish what a server would reject
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.gate and (refusal := _gate_refusal(args.model_dir, model.version)) is not None:
        print(f"error: not published: {refusal}", file=sys.stderr)
        return 1
    rolling = bool(args.shadow or args.canary)
    if rolling and args.no_activate:
        print("error: --no-activate cannot be combined with --shadow / --canary",
              file=sys.stderr)
        return 2

    async def work(bus: Any) -> Any:
        from services.common import audit
        from services.common.modelstore import activate, upload

        if args.tenant is not None:
            await claim_bot(bus, model.bot, args.tenant)
        ref = await upload(bus, args.model_dir)
        if rolling:
            await _start_rollout(bus, ref.bot, _rollout(args, ref.version))
        elif not args.no_activate:
            await activate(bus, ref, actor=actor())
            await _audit(bus, audit.MODEL_ACTIVATED, {"bot_id": ref.bot, "version": ref.version})
        return ref

    code, ref = _run(args.nats, work)
    if code == 0:
        state = ("shadow" if args.shadow else f"canary {args.canary:g}" if args.canary
                 else "uploaded" if args.no_activate else "active")
        print(f"published {ref.bot}@{ref.version} ({state})")
    return code


def run_list(args: argparse.Namespace) -> int:
    async def work(bus: Any) -> dict[str, Any]:
        from services.common import modelstore

        rollout = await modelstore.get_rollout(bus, args.bot)
        return {
            "bot_id": args.bot, "active": await modelstore.active_version(bus, args.bot),
            "models": [v.to_json() for v in await modelstore.list_versions(bus, args.bot)],
            "history": [a.to_json() for a in await modelstore.history(bus, args.bot)],
            "rollout": rollout[0].to_json() if rollout is not None else None,
        }

    code, listing = _run(args.nats, work)
    if code == 0:
        print(json.dumps(listing, indent=2) if args.json else format_listing(listing))
    return code


def format_listing(listing: dict[str, Any]) -> str:
    lines = [f"{'':2}{'version':<16}{'created':<27}{'size':>10}  metrics"]
    rollout = listing["rollout"] or {}
    for model in listing["models"]:
        mark = ("*" if model["version"] == listing["active"]
                else "c" if model["version"] == rollout.get("candidate") else " ")
        heldout = model["metrics"].get("heldout", model["metrics"])
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in heldout.items()
                            if isinstance(v, int | float))
        lines.append(f"{mark:2}{model['version']:<16}{model['created_at'][:25]:<27}"
                     f"{model['size_bytes'] / 1e6:>8.1f}MB  {metrics}")
    if rollout:
        share = f" {rollout['share']:g}" if rollout["mode"] == "canary" else ""
        lines.append(f"rollout: {rollout['candidate']} ({rollout['mode']}{share}) against "
                     f"{rollout['baseline']}, by {rollout['actor'] or '?'}")
    for entry in listing["history"][-5:]:
        lines.append(f"history: {entry['reason']} {entry['previous'] or '-'} -> "
                     f"{entry['version']} by {entry['actor'] or '?'} at {entry['at_unix_ms']}")
    return "\n".join(lines)


def _activation_command(args: argparse.Namespace, action: str,
                        change: Callable[[Any], Awaitable[Any]]) -> int:
    async def work(bus: Any) -> Any:
        activation = await change(bus)
        await _audit(bus, action, {"bot_id": args.bot, "version": activation.version,
                                   "from": activation.previous})
        return activation

    code, activation = _run(args.nats, work)
    if code == 0:
        print(f"{args.bot}: active {activation.version} (was {activation.previous or '-'})")
    return code


def run_activate(args: argparse.Namespace) -> int:
    from services.common import audit
    from services.common.modelstore import ModelRef, activate

    return _activation_command(args, audit.MODEL_ACTIVATED, lambda bus: activate(
        bus, ModelRef(args.bot, args.version), actor=actor()))


def run_rollback(args: argparse.Namespace) -> int:
    from services.common import audit
    from services.common.modelstore import rollback

    return _activation_command(args, audit.MODEL_ROLLED_BACK,
                               lambda bus: rollback(bus, args.bot, actor=actor()))


def run_promote(args: argparse.Namespace) -> int:
    from services.common import audit
    from services.common.modelstore import promote

    return _activation_command(args, audit.ROLLOUT_PROMOTED,
                               lambda bus: promote(bus, args.bot, actor=actor()))


def run_rollout(args: argparse.Namespace) -> int:
    from services.common.modelstore import ModelStoreError

    try:
        rollout = _rollout(args, args.candidate)
    except ModelStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    code, record = _run(args.nats, lambda bus: _start_rollout(bus, args.bot, rollout))
    if code == 0:
        share = f" {record.share:g}" if record.mode == "canary" else ""
        print(f"{args.bot}: {record.candidate} in {record.mode}{share} against "
              f"{record.baseline}")
    return code


def run_abort(args: argparse.Namespace) -> int:
    async def work(bus: Any) -> Any:
        from services.common import audit
        from services.common.modelstore import RolloutConflict, abort_rollout

        record = await abort_rollout(bus, args.bot)
        if record is None:
            raise RolloutConflict("the rollout changed meanwhile; run `models list` and retry")
        await _audit(bus, audit.ROLLOUT_ABORTED, {
            "bot_id": args.bot, "candidate": record.candidate, "mode": record.mode,
            "reason": "aborted from the CLI"})
        return record

    code, record = _run(args.nats, work)
    if code == 0:
        print(f"{args.bot}: rollout of {record.candidate} aborted")
    return code


def _gate_refusal(model_dir: Path, version: str) -> str | None:
    from botfactory.evaluation.gate import gate_refusal

    return gate_refusal(model_dir, version)
