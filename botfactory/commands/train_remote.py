"""`botfactory train --remote BOT_DIR`: train on a trainer worker through the gateway's admin API
(docs/training.md), then follow the job until it ends, printing its epochs.

The bot folder's YAML files go with the request (the job trains them, not the deployed
definition). Ctrl-C stops following, never the job: it says how to follow or cancel it.
Exit codes: 0 succeeded (or queued, with --detach), 1 failed or cancelled, 2 bad input or a
refused request, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_GATEWAY = "http://127.0.0.1:8080"
FINAL = ("succeeded", "failed", "cancelled")
LOCAL_ONLY = (("init_from", "--from"), ("base_model", "--base-model"), ("out", "--out"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `--remote` options of `botfactory train`."""
    parser.add_argument("--remote", action="store_true",
                        help="train on a trainer worker through the gateway (POST "
                             "/v1/admin/bots/{bot}/trainings) and follow it; the result is a "
                             "model version in the model store")
    parser.add_argument("--gateway", default=os.environ.get("BOTFACTORY_GATEWAY_URL",
                                                            DEFAULT_GATEWAY),
                        help="--remote: the gateway's URL (default $BOTFACTORY_GATEWAY_URL or "
                             f"{DEFAULT_GATEWAY})")
    parser.add_argument("--api-key", default=os.environ.get("BOTFACTORY_API_KEY"),
                        help="--remote: an admin API key (default $BOTFACTORY_API_KEY)")
    parser.add_argument("--activate", action="store_true",
                        help="--remote: activate the model once trained (default: only "
                             "published as a new version)")
    parser.add_argument("--detach", action="store_true",
                        help="--remote: print the job id and return without following it")
    parser.add_argument("--poll-s", type=float, default=1.0, help=argparse.SUPPRESS)


class RemoteError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Gateway:
    url: str
    api_key: str

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url.rstrip("/") + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self.api_key}",
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise RemoteError(f"{method} {path}: {exc.code} {_detail(exc)}",
                              EXIT_USAGE if exc.code < 500 else EXIT_FAILED) from None
        except (urllib.error.URLError, OSError) as exc:
            raise RemoteError(f"cannot reach the gateway at {self.url}: {exc}") from None


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        problem = json.loads(exc.read())
    except ValueError:
        return exc.reason
    detail = str(problem.get("detail", exc.reason))
    errors = problem.get("errors") or problem.get("issues") or []
    return detail + "".join(f"\n  {e}" for e in errors)


def run(args: argparse.Namespace) -> int:
    """Submit the bot folder's training and follow it (see the module's docstring)."""
    for name, option in LOCAL_ONLY:
        if getattr(args, name, None) is not None:
            print(f"error: {option} is for a local training, not with --remote",
                  file=sys.stderr)
            return EXIT_USAGE
    if not args.api_key:
        print("error: --remote needs --api-key (or BOTFACTORY_API_KEY): an admin key",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        bot, files = _bot_files(args.bot_dir)
        gateway = Gateway(args.gateway, args.api_key)
        body: dict[str, Any] = {"files": files, "activate": bool(args.activate)}
        if args.epochs is not None:
            body["epochs"] = args.epochs
        if args.seed is not None:
            body["seed"] = args.seed
        job = gateway.call("POST", f"/v1/admin/bots/{bot}/trainings", body)
    except RemoteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    print(f"training {job['job_id']} of bot {bot} queued on {args.gateway}", flush=True)
    if args.detach:
        print(_how_to(gateway, bot, job["job_id"]))
        return EXIT_OK
    try:
        return Follower(gateway, bot, job["job_id"], args.poll_s).follow()
    except KeyboardInterrupt:
        print(f"\nstopped following; the training goes on.\n{_how_to(gateway, bot, job['job_id'])}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except RemoteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code


def _bot_files(bot_dir: Path) -> tuple[str, dict[str, str]]:
    from services.botdef import BotDefinitionError, load_bot
    from services.common.definitions import read_folder

    try:
        bot = load_bot(bot_dir)
    except BotDefinitionError as exc:
        raise RemoteError(f"invalid bot definition in {bot_dir}:\n{exc}", EXIT_USAGE) from None
    return bot.name, read_folder(bot_dir)


def _how_to(gateway: Gateway, bot: str, job_id: str) -> str:
    path = f"{gateway.url.rstrip('/')}/v1/admin/bots/{bot}/trainings/{job_id}"
    auth = '-H "Authorization: Bearer $BOTFACTORY_API_KEY"'
    return (f"  follow: curl -s {auth} {path}\n"
            f"  logs:   curl -s {auth} {path}/logs\n"
            f"  cancel: curl -s -X POST {auth} {path}/cancel")


class Follower:
    """Polls the job and prints what is new: its status, stages and epochs."""

    def __init__(self, gateway: Gateway, bot: str, job_id: str, poll_s: float) -> None:
        self.gateway = gateway
        self.path = f"/v1/admin/bots/{bot}/trainings/{job_id}"
        self.poll_s = max(0.1, poll_s)
        self.status = ""
        self.stage = ""
        self.epochs_shown = 0

    def follow(self) -> int:
        while True:
            job = self.gateway.call("GET", self.path)
            self.show(job)
            if job["status"] in FINAL:
                return self.outcome(job)
            time.sleep(self.poll_s)

    def show(self, job: dict[str, Any]) -> None:
        if job["status"] != self.status:
            self.status = job["status"]
            where = f" on {job['worker']}" if job.get("worker") and self.status == "running" \
                else ""
            print(f"  {self.status}{where}", flush=True)
        progress = job.get("progress") or {}
        for entry in (progress.get("history") or [])[self.epochs_shown:]:
            print(f"  {epoch_line(entry)}", flush=True)
            self.epochs_shown += 1
        stage = progress.get("stage") or ""
        if stage and stage != self.stage and stage != "training":
            print(f"  {stage}", flush=True)
        self.stage = stage

    def outcome(self, job: dict[str, Any]) -> int:
        if job["status"] == "succeeded":
            activated = " and activated" if job.get("activated") else \
                " (not activated: botfactory models activate, or PUT .../model)"
            print(f"model version {job['model_version']} published{activated}")
            heldout = ((job.get("report") or {}).get("metrics") or {}).get("heldout") or {}
            if heldout:
                print(f"  held out: {metrics_text(heldout)}")
            return EXIT_OK
        print(f"training {job['status']}: {job.get('error') or ''}".rstrip(": "),
              file=sys.stderr)
        return EXIT_FAILED


def metrics_text(metrics: dict[str, Any]) -> str:
    parts = []
    if metrics.get("intent_accuracy") is not None:
        parts.append(f"intent accuracy {metrics['intent_accuracy']:.3f}")
    if metrics.get("entity_micro_f1") is not None:
        parts.append(f"entity F1 {metrics['entity_micro_f1']:.3f}")
    return ", ".join(parts)


def epoch_line(entry: dict[str, Any]) -> str:
    """`epoch 3/10  loss 0.412  held-out loss 0.380  intent accuracy 0.950, entity F1 0.900`."""
    line = f"epoch {entry.get('epoch')}/{entry.get('epochs')}  loss {entry.get('train_loss')}"
    if entry.get("heldout_loss") is not None:
        line += f"  held-out loss {entry['heldout_loss']}"
    heldout = entry.get("heldout") or {}
    text = metrics_text(heldout)
    return f"{line}  {text}" if text else line
