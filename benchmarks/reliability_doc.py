"""Render docs/reliability.md from the benchmark results and the abuse tests.

    python benchmarks/reliability_doc.py [--check]

Reads benchmarks/results/{chaos,e2e_load,rpa_throughput}.json and the test names and
docstrings of the abuse suites; the figures in the document are never typed by hand. chaos.py
and e2e_load.py run this at their end; `make reliability-doc` runs it alone. `--check` exits 1
when the committed document differs from what the committed results render.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "reliability.md"
SOURCES = ("chaos", "e2e_load", "rpa_throughput")
ABUSE_FILES = ("tests/integration/test_abuse.py", "tests/unit/test_fuzzing.py",
               "tests/unit/test_security.py")
Results = Mapping[str, Mapping[str, Any] | None]


@dataclass(frozen=True)
class AbuseCase:
    file: str
    name: str
    doc: str

    @property
    def title(self) -> str:
        text = self.name.removeprefix("test_").replace("_", " ")
        return text[:1].upper() + text[1:]


def load_results(folder: Path = RESULTS) -> dict[str, dict[str, Any] | None]:
    found: dict[str, dict[str, Any] | None] = {}
    for name in SOURCES:
        path = folder / f"{name}.json"
        found[name] = json.loads(path.read_text()) if path.is_file() else None
    return found


def abuse_cases(root: Path = ROOT, files: Sequence[str] = ABUSE_FILES) -> list[AbuseCase]:
    """Every test function of the abuse suites, with the first line of its docstring."""
    cases = []
    for file in files:
        path = root / file
        if not path.is_file():
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and \
                    node.name.startswith("test_"):
                doc = (ast.get_docstring(node) or "").strip().splitlines()
                cases.append(AbuseCase(file, node.name, doc[0] if doc else ""))
    return sorted(cases, key=lambda c: (ABUSE_FILES.index(c.file) if c.file in ABUSE_FILES
                                        else len(ABUSE_FILES), c.file, c.name))


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _cell(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _statuses(counts: Mapping[str, int] | None) -> str | None:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) if counts else None


def _missing(name: str, command: str) -> list[str]:
    return [f"Not measured yet (no `benchmarks/results/{name}.json`): run `{command}`.", ""]


def _stamp(result: Mapping[str, Any]) -> str:
    quick = " (`--quick`)" if result.get("quick") else ""
    cpus = result.get("cpus") or (result.get("machine") or {}).get("cpus")
    when = result.get("created_at", "")
    return f"Measured{quick} on a {cpus}-CPU machine" + (f", {when}" if when else "") + "."


def render_chaos(chaos: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Faults injected (chaos)", "",
             "`.venv/bin/python benchmarks/chaos.py [--quick]` (also `make test-chaos`, which "
             "asserts the same): the process stack under a steady conversation load; at random "
             "moments one component at a time is killed with SIGKILL and restarted on the same "
             "port (nats-server on the same JetStream store).", ""]
    if chaos is None:
        return lines + _missing("chaos", "python benchmarks/chaos.py")
    totals = [("conversations", chaos.get("conversations")),
              ("user messages accepted (200/202)", chaos.get("accepted")),
              ("lost (accepted, never answered)", chaos.get("lost")),
              ("duplicated replies", chaos.get("duplicated")),
              ("replies out of order", chaos.get("out_of_order")),
              ("tracker mismatches (slots vs what the user set)",
               chaos.get("tracker_mismatches")),
              ("workflow runs started by the conversations", chaos.get("rpa_runs")),
              ("workflow runs by final status", _statuses(chaos.get("rpa_runs_by_status"))),
              ("workflow runs unfinished after the drain", chaos.get("rpa_unfinished")),
              ("RPA duplicate side effects at the bank", chaos.get("rpa_duplicate_side_effects")),
              ("succeeded runs without their bank side effect",
               chaos.get("rpa_missing_side_effects")),
              ("messages typed again after \"trouble understanding\" (NLU down)",
               chaos.get("retyped_after_not_understood")),
              ("retriable answers seen by clients (503/429/connection errors), retried",
               chaos.get("retried")),
              ("non-retriable errors (5xx other than 503, 4xx)", chaos.get("hard_errors"))]
    split = ""
    if chaos.get("telegram"):
        split = (f" ({chaos.get('http_users')} through the HTTP API, "
                 f"{chaos['telegram'].get('users')} as Telegram chats)")
    lines += [_stamp(chaos) + f" Load: {chaos.get('users')} concurrent users{split} for "
              f"{chaos.get('duration_s')} s.", ""]
    lines += [*_table(("figure", "value"), totals), ""]
    lines += _render_chaos_telegram(chaos.get("telegram"))
    kills = chaos.get("kills") or []
    lines += ["Every kill, in order (`recovery_s`: from the SIGKILL until the first good "
              "end-to-end reply after the restart — a free-text message answered by NLU for "
              "nlu/dialogue/gateway/nats, a finished workflow run for the RPA runner; "
              "`ready_s`: until the restarted process reported ready):", ""]
    lines += _table(("#", "component", "at_s", "ready_s", "recovery_s", "recovered"),
                    [(i + 1, k.get("component"), k.get("at_s"), k.get("ready_s"),
                      k.get("recovery_s"), k.get("recovered")) for i, k in enumerate(kills)])
    return [*lines, ""]


def _render_chaos_telegram(telegram: Mapping[str, Any] | None) -> list[str]:
    if not telegram:
        return []
    lines = [f"Of these users, {telegram.get('users')} talk through the Telegram channel "
             "(the conversation and message figures above are the HTTP users'; the workflow runs "
             "and the bank's counters everyone's): each transfer conversation is a Telegram "
             "chat POSTing updates to the webhook and sending the same update (same "
             "`update_id`) again until it is answered 200, as Telegram does; the replies go "
             "out through the channel outbox to a fake Bot API in the benchmark's process, "
             "which outlives the gateway's restarts and refuses a few calls (429 with "
             "`retry_after` 1, 500). After the drain, every bot message of each chat's "
             "conversation on the CONV stream is looked for at the fake: once each, in the "
             "stream's order.", ""]
    rows = [("Telegram conversations (chats)", telegram.get("conversations")),
            ("updates sent (distinct `update_id`s)", telegram.get("updates")),
            ("updates accepted (200)", telegram.get("accepted")),
            ("updates sent again after an answer other than 200 (redeliveries)",
             telegram.get("redeliveries")),
            ("redeliveries by cause", _statuses(telegram.get("redelivered_by_cause"))),
            ("accepted updates without a reply on the stream", telegram.get("unanswered")),
            ("bot messages on the stream for the chats", telegram.get("replies")),
            ("messages the fake Bot API took", telegram.get("delivered")),
            ("lost (on the stream, never at the platform)", telegram.get("lost")),
            ("duplicated at the platform", telegram.get("duplicated")),
            ("out of order at the platform", telegram.get("out_of_order")),
            ("tracker mismatches", telegram.get("tracker_mismatches")),
            ("`sendMessage` calls refused by the fake: 429 / 500",
             f"{_cell(telegram.get('platform_429s'))} / {_cell(telegram.get('platform_500s'))}")]
    lines += [*_table(("Telegram figure", "value"), rows), ""]
    examples = telegram.get("duplicate_examples") or []
    if examples:
        lines += ["Duplicates at the platform (the outbox records a reply the platform took "
                  "in KV `channel_sent` after the platform's answer; a kill in between sends "
                  "it again):", ""]
        lines += _table(("conversation", "text", "arrived at s", "last kill before"),
                        [(e.get("conversation"), e.get("text"),
                          ", ".join(_cell(t) for t in e.get("arrived_at_s") or []),
                          e.get("last_kill_before")) for e in examples])
        lines.append("")
    return lines


def render_load(load: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Load held", "", "`.venv/bin/python benchmarks/e2e_load.py [--quick] "
             "[--shapes users,telegram,saturation,step,soak] [--soak-minutes 10]`", ""]
    if load is None:
        return lines + _missing("e2e_load", "python benchmarks/e2e_load.py")
    lines += [_stamp(load) + " `lost`: answered 200 without its replies; `late`: accepted "
              "with 202, the replies after the gateway's sync wait (overload, not loss).", ""]
    rows = []
    for label in ("users", "telegram", "saturation"):
        s = load.get(label)
        if s:
            rows.append((label, s.get("conversations") or s.get("connections"),
                         s.get("messages_per_s"), s.get("p50_ms"), s.get("p99_ms"),
                         s.get("errors"), s.get("lost"), s.get("late"), s.get("duplicated"),
                         s.get("out_of_order")))
    for level in (load.get("step") or {}).get("levels", []):
        rows.append((f"step {level.get('conversations')}", level.get("conversations"),
                     level.get("messages_per_s"), level.get("p50_ms"), level.get("p99_ms"),
                     level.get("errors"), level.get("lost"), level.get("late"),
                     level.get("duplicated"), level.get("out_of_order")))
    header = ("shape", "concurrency", "msg/s", "p50 ms", "p99 ms", "errors", "lost",
              "late (202)", "duplicated", "out of order")
    lines += [*_table(header, rows), ""]
    lines += _render_telegram(load.get("telegram"))
    lines += _render_knee(load.get("step")) + _render_soak(load.get("soak"))
    return lines


def _render_telegram(telegram: Mapping[str, Any] | None) -> list[str]:
    if not telegram:
        return []
    line = ("`telegram`: the users shape through the Telegram channel (webhook updates in, "
            "replies at a fake Bot API), latency from the update to its reply at the fake")
    added = telegram.get("added_p50_ms_vs_users")
    if added is not None:
        line += (f"; over the users shape of the same run: p50 {_cell(added)} ms, "
                 f"p99 {_cell(telegram.get('added_p99_ms_vs_users'))} ms")
    return [line + ".", ""]


def _render_knee(step: Mapping[str, Any] | None) -> list[str]:
    if not step:
        return []
    knee = step.get("knee_messages_per_s")
    target = step.get("p99_target_ms")
    if knee is None:
        return [f"Knee: no step met p99 <= {_cell(target)} ms.", ""]
    return [f"Knee (highest rate with p99 <= {_cell(target)} ms and no errors): "
            f"**{_cell(knee)} msg/s** at {step.get('knee_conversations')} conversations.", ""]


def _render_soak(soak: Mapping[str, Any] | None) -> list[str]:
    if not soak:
        return []
    flat = "flat within 10%" if soak.get("memory_flat") else "NOT flat within 10%"
    lines = [f"Soak: {soak.get('conversations')} conversations for {soak.get('duration_s')} s, "
             f"{soak.get('messages_per_s')} msg/s, p99 {soak.get('p99_ms')} ms, "
             f"{soak.get('errors')} errors, {soak.get('lost')} lost; memory after the "
             f"{soak.get('warmup_s')} s warm-up: {flat}.", ""]
    services = soak.get("services") or {}
    lines += _table(("process", "RSS start MB", "RSS end MB", "growth %", "fds", "threads"),
                    [(name, s.get("rss_start_mb"), s.get("rss_end_mb"), s.get("rss_growth_pct"),
                      f"{s.get('fds_start')} → {s.get('fds_end')}",
                      f"{s.get('threads_start')} → {s.get('threads_end')}")
                     for name, s in services.items()])
    return [*lines, ""]


def render_rpa(rpa: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Workflow runner under a crash", "",
             "`.venv/bin/python benchmarks/rpa_throughput.py [--quick]`", ""]
    if rpa is None:
        return lines + _missing("rpa_throughput", "python benchmarks/rpa_throughput.py")
    crash = rpa.get("crash") or {}
    lines += [_stamp(rpa), "",
              f"Throughput {rpa.get('runs_per_s')} runs/s (3-step HTTP workflow, p99 "
              f"{rpa.get('p99_ms')} ms). One of two runners killed with SIGKILL while "
              f"{crash.get('in_flight_at_kill')} of {crash.get('runs')} runs were in flight: "
              f"{crash.get('completed')} completed, {crash.get('compensated')} compensated, "
              f"{crash.get('other')} other, {crash.get('resumed_runs')} resumed by the other "
              f"runner, **{crash.get('duplicate_side_effects')} duplicate side effects**.", ""]
    return lines


def render_abuse(cases: Sequence[AbuseCase]) -> list[str]:
    lines = ["## Abuse cases tried", "",
             "`make test-security` runs them (docs/security.md); each is a test that fails if "
             "the attack gets anywhere:"]
    current = ""
    for case in cases:
        if case.file != current:
            current = case.file
            lines += ["", f"`{case.file}`:", ""]
        doc = f" — {case.doc}" if case.doc else ""
        lines.append(f"- {case.title}{doc}")
    return [*lines, ""]


HEADER = """# Reliability: load, faults and abuse

Generated by `benchmarks/reliability_doc.py` from `benchmarks/results/*.json` and the abuse
tests; do not edit by hand (`make reliability-doc` regenerates it, and a unit test checks that
it matches the committed results). The full runs take minutes and want a quiet machine:

```bash
.venv/bin/python benchmarks/chaos.py              # kills + restarts under load (--quick: < 2 min)
.venv/bin/python benchmarks/e2e_load.py           # users, telegram, saturation, step 25->400, soak
.venv/bin/python benchmarks/rpa_throughput.py     # runner throughput and a kill -9 mid-run
make test-chaos                                   # the chaos run as a test tier (asserts)
make reliability-doc                              # re-render this file from the results
```

What "nothing lost" means here: every user message the gateway accepted (answered 200 or 202)
gets its replies exactly once and in order; a client that gets a retriable answer
(503/429 with `Retry-After`, a refused connection, a timeout) sends the same message again
with the same `message_id`, which the platform applies at most once.
"""


def render(results: Results, cases: Sequence[AbuseCase]) -> str:
    parts: list[Callable[[], list[str]]] = [
        lambda: render_chaos(results.get("chaos")),
        lambda: render_load(results.get("e2e_load")),
        lambda: render_rpa(results.get("rpa_throughput")),
        lambda: render_abuse(cases)]
    lines = [HEADER]
    for part in parts:
        lines += part()
    return "\n".join(lines).rstrip() + "\n"


def write_doc(path: Path = DOC) -> Path:
    path.write_text(render(load_results(), abuse_cases()), encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if docs/reliability.md is not what the results render")
    args = parser.parse_args(argv)
    if args.check:
        expected = render(load_results(), abuse_cases())
        current = DOC.read_text(encoding="utf-8") if DOC.is_file() else ""
        if current != expected:
            print(f"{DOC.relative_to(ROOT)} is out of date: run make reliability-doc",
                  file=sys.stderr)
            return 1
        return 0
    print(f"wrote {write_doc().relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
