"""`botfactory publish BOT_DIR --model M [--kb K]`, `botfactory versions` and `botfactory env`:
immutable bot versions and the environments that serve them (docs/versions.md).

publish BOT_DIR creates the version of the bot folder's YAML files with a model (a version id
in the store, or a trained model folder, uploaded first) and optionally a knowledge index;
the same content is the same version. `versions list|show|diff|check` read versions and record
check results; `env status|promote|rollback|canary|end-canary|configure` move environments.
Every change is an audit event (actor `cli:<user>`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from botfactory.commands.models import _audit, _nats_option, _run, _share, actor, claim_bot


def is_bot_folder(directory: Path) -> bool:
    return (directory / "bot.yml").is_file()


def register(subparsers: Any) -> None:
    _register_versions(subparsers)
    _register_env(subparsers)


def _register_versions(subparsers: Any) -> None:
    parser = subparsers.add_parser("versions", help="list, show, compare bot versions and "
                                   "record checks on them", description=__doc__)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="= publish BOT_DIR --model M [--kb K]")
    create.add_argument("model_dir", type=Path, metavar="BOT_DIR")
    create.add_argument("--model", required=True, help="a model version id in the store, or "
                                                       "a trained model folder to upload")
    create.add_argument("--kb", help="a knowledge index version id, or an index folder")
    create.add_argument("--description", default="")
    create.set_defaults(shadow=False, canary=None, no_activate=False, gate=False)
    listing = actions.add_parser("list", help="the bot's versions, oldest first")
    listing.add_argument("bot")
    listing.add_argument("--json", action="store_true", help="print JSON")
    show = actions.add_parser("show", help="one version: files, model, index, checks")
    show.add_argument("bot")
    show.add_argument("version")
    show.add_argument("--json", action="store_true", help="print JSON (with the files)")
    compare = actions.add_parser("diff", help="what changed from one version to another")
    compare.add_argument("bot")
    compare.add_argument("old")
    compare.add_argument("new")
    compare.add_argument("--json", action="store_true", help="print JSON")
    check = actions.add_parser("check", help="record a check result on a version "
                                             "(conversation_tests, model_gate, ...)")
    check.add_argument("bot")
    check.add_argument("version")
    check.add_argument("name")
    outcome = check.add_mutually_exclusive_group(required=True)
    outcome.add_argument("--passed", action="store_true")
    outcome.add_argument("--failed", action="store_true")
    check.add_argument("--detail", default="")
    for sub, func in ((create, publish_bot), (listing, run_list), (show, run_show),
                      (compare, run_diff), (check, run_check)):
        _nats_option(sub)
        sub.set_defaults(func=func)


def _register_env(subparsers: Any) -> None:
    parser = subparsers.add_parser("env", help="environments: status, promote, roll back, "
                                   "canary, configure", description=__doc__)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = actions.add_parser("status", help="what each environment serves")
    status.add_argument("bot")
    status.add_argument("--json", action="store_true", help="print JSON")
    promote = actions.add_parser("promote", help="point ENV at a version (--version) or at "
                                 "the version another environment serves (--from)")
    promote.add_argument("bot")
    promote.add_argument("env")
    source = promote.add_mutually_exclusive_group(required=True)
    source.add_argument("--version")
    source.add_argument("--from", dest="source", metavar="ENV")
    rollback = actions.add_parser("rollback", help="point ENV back at its previous version")
    rollback.add_argument("bot")
    rollback.add_argument("env")
    canary = actions.add_parser("canary", help="start a canary: SHARE of new conversations "
                                "(sticky) start on VERSION")
    canary.add_argument("bot")
    canary.add_argument("env")
    canary.add_argument("version")
    canary.add_argument("share", type=_share)
    end = actions.add_parser("end-canary", help="end ENV's canary (its conversations finish "
                                                "on it)")
    end.add_argument("bot")
    end.add_argument("env")
    configure = actions.add_parser("configure", help="set the bot's environments and the "
                                   "checks each requires")
    configure.add_argument("bot")
    configure.add_argument("--env", action="append", required=True, metavar="NAME[:CHECKS]",
                           help="an environment, with the checks (comma separated) a version "
                                "needs before promotion into it: prod:conversation_tests,"
                                "model_gate (repeat for each)")
    configure.add_argument("--default", default="prod",
                           help="what keys without an environment use (default %(default)s)")
    for sub, func in ((status, run_status), (promote, run_promote), (rollback, run_rollback),
                      (canary, run_canary), (end, run_end_canary), (configure, run_configure)):
        _nats_option(sub)
        sub.set_defaults(func=func)


# --- publish BOT_DIR --------------------------------------------------------------------------


def publish_bot(args: argparse.Namespace) -> int:
    """`botfactory publish BOT_DIR --model M [--kb K]`: create (or find) the version."""
    if not args.model:
        print("error: publishing a bot folder needs --model (a model version in the store, "
              "or a trained model folder)", file=sys.stderr)
        return 2
    if args.shadow or args.canary or args.no_activate or args.gate:
        print("error: --shadow, --canary, --no-activate and --gate are for a model folder; a "
              "bot version is rolled out with `botfactory env promote|canary`", file=sys.stderr)
        return 2
    loaded = _load_bot(args.model_dir)
    if loaded is None:
        return 2
    bot, files = loaded
    model_folder = Path(args.model).is_dir()
    kb_folder = bool(args.kb) and Path(args.kb).is_dir()
    gate_file = model_folder and (Path(args.model) / "reports" / "gate.json").is_file()

    async def work(bus: Any) -> Any:
        from services.common import audit, botversions

        if getattr(args, "tenant", None) is not None:
            await claim_bot(bus, bot, args.tenant)
        model = await _model_version(bus, bot, args.model, model_folder)
        kb = await _kb_version(bus, bot, args.kb, kb_folder) if args.kb else ""
        version, created = await botversions.publish_version(
            bus, bot, files, model, kb, actor=actor(), description=args.description)
        if created:
            await _audit(bus, audit.VERSION_CREATED, {
                "bot_id": bot, "version": version.id, "model": model, "kb": kb,
                "files": sorted(files)})
        if gate_file:
            await _record_gate(bus, version, Path(args.model))
        return version, created

    code, result = _run(args.nats, work)
    if code == 0:
        version, created = result
        state = "created" if created else "exists already"
        print(f"{version.bot}@{version.id} ({state}): model {version.model}"
              f"{', kb ' + version.kb if version.kb else ''}, {len(version.files)} files")
    return code


def _load_bot(folder: Path) -> tuple[str, dict[str, str]] | None:
    """The bot's id and YAML files, when the folder is a valid definition."""
    from services.botdef import BotDefinitionError, load_bot
    from services.common.definitions import read_folder

    try:
        definition = load_bot(folder)
    except BotDefinitionError as exc:
        print(f"error: {folder} is not a valid bot definition:", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return None
    return definition.name, read_folder(folder)


async def _model_version(bus: Any, bot: str, model: str, is_folder: bool) -> str:
    """A model version id, uploading a model folder first."""
    from services.common.modelstore import ModelStoreError, upload
    from services.nlu.engine import ModelLoadError, NluModel

    folder = Path(model)
    if not is_folder:
        return model
    try:
        NluModel.load(folder)  # refuse to publish what a server would reject
    except ModelLoadError as exc:
        raise ModelStoreError(str(exc)) from exc
    ref = await upload(bus, folder)
    if ref.bot != bot:
        raise ModelStoreError(f"{folder} is a model of {ref.bot!r}, not of {bot!r}")
    return ref.version


async def _kb_version(bus: Any, bot: str, kb: str, is_folder: bool) -> str:
    from services.common.modelstore import ModelStoreError
    from services.knowledge.store import upload_kb

    folder = Path(kb)
    if not is_folder:
        return kb
    ref = await upload_kb(bus, folder)
    if ref.bot != bot:
        raise ModelStoreError(f"{folder} is a knowledge index of {ref.bot!r}, not of {bot!r}")
    return ref.version


async def _record_gate(bus: Any, version: Any, folder: Path) -> None:
    """A model folder's gate result (reports/gate.json, of this model) as check model_gate."""
    from botfactory.evaluation.gate import gate_refusal
    from services.common.botversions import CheckResult, VersionStore

    refusal = gate_refusal(folder, version.model)
    await VersionStore(bus).record_check(version.bot, version.id, CheckResult(
        "model_gate", refusal is None, refusal or "", actor()))


# --- versions ---------------------------------------------------------------------------------


def run_list(args: argparse.Namespace) -> int:
    async def work(bus: Any) -> Any:
        from services.common.botversions import VersionStore

        return [v.summary() for v in await VersionStore(bus).versions(args.bot)]

    code, versions = _run(args.nats, work)
    if code == 0:
        if args.json:
            print(json.dumps({"bot_id": args.bot, "versions": versions}, indent=2))
        for v in [] if args.json else versions:
            print(f"{v['id']}  model {v['model']:<20} kb {v['kb'] or '-':<20} "
                  f"{len(v['files'])} files  by {v['actor'] or '?'}  {v['description']}")
    return code


def run_show(args: argparse.Namespace) -> int:
    async def work(bus: Any) -> Any:
        from services.common.botversions import VersionStore

        store = VersionStore(bus)
        version = await store.get(args.bot, args.version)
        checks = await store.checks(args.bot, args.version)
        return version, {n: vars(c) for n, c in checks.items()}

    code, result = _run(args.nats, work)
    if code == 0:
        version, checks = result
        if args.json:
            print(json.dumps({**version.to_json(), "checks": checks}, indent=2))
        else:
            print(json.dumps({**version.summary(), "checks": checks}, indent=2))
    return code


def run_diff(args: argparse.Namespace) -> int:
    async def work(bus: Any) -> Any:
        from services.common.botversions import VersionStore, diff_report

        store = VersionStore(bus)
        old, new = await store.get(args.bot, args.old), await store.get(args.bot, args.new)
        return await diff_report(bus, old, new)

    code, report = _run(args.nats, work)
    if code == 0:
        print(json.dumps(report, indent=2) if args.json else format_diff(report))
    return code


def format_diff(report: dict[str, Any]) -> str:
    files = report["files"]
    lines = [f"{report['bot_id']}: {report['from']} -> {report['to']}"]
    for key in ("model", "kb"):
        part = report[key]
        lines.append(f"{key}: {part['from'] or '-'} -> {part['to'] or '-'}"
                     f"{'' if part['changed'] else ' (unchanged)'}")
    for name, metrics in report["model"].get("metrics", {}).items():
        heldout = metrics.get("heldout", metrics) if isinstance(metrics, dict) else {}
        shown = ", ".join(f"{k} {v:.3f}" for k, v in heldout.items()
                          if isinstance(v, int | float))
        lines.append(f"  model {name}: {shown or 'no metrics'}")
    for version, checks in report.get("checks", {}).items():
        shown = ", ".join(f"{n} {'passed' if c['passed'] else 'FAILED'}"
                          for n, c in checks.items())
        lines.append(f"  checks of {version}: {shown or 'none recorded'}")
    lines += [f"added: {n}" for n in files["added"]]
    lines += [f"removed: {n}" for n in files["removed"]]
    lines += [text.rstrip("\n") for text in files["changed"].values()]
    return "\n".join(lines)


def run_check(args: argparse.Namespace) -> int:
    async def work(bus: Any) -> Any:
        from services.common import audit
        from services.common.botversions import CheckResult, VersionStore

        result = await VersionStore(bus).record_check(args.bot, args.version, CheckResult(
            args.name, bool(args.passed), args.detail, actor()))
        await _audit(bus, audit.VERSION_CHECKED, {"bot_id": args.bot, "version": args.version,
                                                  "check": args.name, "passed": result.passed})
        return result

    code, result = _run(args.nats, work)
    if code == 0:
        print(f"{args.bot}@{args.version}: {result.name} "
              f"{'passed' if result.passed else 'failed'}")
    return code


# --- environments -----------------------------------------------------------------------------


def run_status(args: argparse.Namespace) -> int:
    async def work(bus: Any) -> Any:
        from services.common.botversions import VersionStore

        store = VersionStore(bus)
        config = await store.config(args.bot)
        return config.to_json(), [e.to_json() for e in await store.environments(args.bot)]

    code, result = _run(args.nats, work)
    if code == 0:
        config, environments = result
        if args.json:
            print(json.dumps({"bot_id": args.bot, "config": config,
                              "environments": environments}, indent=2))
            return 0
        requires = {e["name"]: e["requires"] for e in config["environments"]}
        for env in environments:
            mark = "*" if env["name"] == config["default"] else " "
            canary = (f"  canary {env['canary_version']} {env['canary_share']:g}"
                      if env["canary_version"] else "")
            needs = f"  requires {','.join(requires[env['name']])}" \
                if requires[env["name"]] else ""
            print(f"{mark} {env['name']:<10} {env['version'] or '-':<18}{canary}{needs}")
    return code


def _env_change(args: argparse.Namespace, action: str, change: Any,
                extra: dict[str, Any] | None = None) -> int:
    async def work(bus: Any) -> Any:
        from services.common.botversions import VersionStore, mirror_default

        record = await change(VersionStore(bus))
        await mirror_default(bus, record, actor=actor())
        last = record.history[-1] if record.history else None
        await _audit(bus, action, {
            "bot_id": args.bot, "environment": record.name, "version": record.version,
            "from": last.previous if last else "", "canary_version": record.canary_version,
            "canary_share": record.canary_share, **(extra or {})})
        return record

    code, record = _run(args.nats, work)
    if code == 0:
        canary = (f" (canary {record.canary_version} {record.canary_share:g})"
                  if record.canary_version else "")
        print(f"{args.bot}/{record.name}: {record.version}{canary}")
    return code


def run_promote(args: argparse.Namespace) -> int:
    from services.common import audit

    if args.source:
        return _env_change(args, audit.ENV_PROMOTED, lambda store: store.promote_from(
            args.bot, args.source, args.env, actor=actor()), {"from_environment": args.source})
    return _env_change(args, audit.ENV_PROMOTED, lambda store: store.promote(
        args.bot, args.env, args.version, actor=actor()))


def run_rollback(args: argparse.Namespace) -> int:
    from services.common import audit

    return _env_change(args, audit.ENV_ROLLED_BACK,
                       lambda store: store.rollback(args.bot, args.env, actor=actor()))


def run_canary(args: argparse.Namespace) -> int:
    from services.common import audit

    return _env_change(args, audit.ENV_CANARY_SET, lambda store: store.set_canary(
        args.bot, args.env, args.version, args.share, actor=actor()))


def run_end_canary(args: argparse.Namespace) -> int:
    from services.common import audit

    return _env_change(args, audit.ENV_CANARY_CLEARED,
                       lambda store: store.clear_canary(args.bot, args.env, actor=actor()))


def parse_env_option(value: str) -> tuple[str, tuple[str, ...]]:
    name, _, checks = value.partition(":")
    return name, tuple(c for c in checks.split(",") if c)


def run_configure(args: argparse.Namespace) -> int:
    from services.common.botversions import BotEnvironments, EnvConfig, VersionError

    try:
        config = BotEnvironments(tuple(EnvConfig(*parse_env_option(v)) for v in args.env),
                                 args.default).validate()
    except VersionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def work(bus: Any) -> Any:
        from services.common import audit
        from services.common.botversions import VersionStore

        await VersionStore(bus).configure(args.bot, config)
        await _audit(bus, audit.ENV_CONFIGURED, {"bot_id": args.bot, **config.to_json()})
        return config

    code, _ = _run(args.nats, work)
    if code == 0:
        print(f"{args.bot}: environments " + ", ".join(
            e.name + (f" (requires {','.join(e.requires)})" if e.requires else "")
            for e in config.environments) + f"; default {config.default}")
    return code
