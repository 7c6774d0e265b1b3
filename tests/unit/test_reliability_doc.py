"""docs/reliability.md is rendered from the benchmark results and the abuse tests
(benchmarks/reliability_doc.py), never typed by hand: the renderer on fixture results, and the
committed document against the committed results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.reliability_doc import (
    DOC,
    AbuseCase,
    abuse_cases,
    load_results,
    main,
    render,
)

CHAOS: dict[str, Any] = {
    "accepted": 1234, "lost": 0, "duplicated": 0, "out_of_order": 0, "tracker_mismatches": 0,
    "rpa_runs": 77, "rpa_duplicate_side_effects": 0, "retried": 55, "hard_errors": 0,
    "conversations": 300, "users": 50, "http_users": 40, "duration_s": 95.5, "quick": True,
    "cpus": 2,
    "created_at": "2026-01-02T03:04:05Z",
    "telegram": {"users": 10, "conversations": 60, "updates": 250, "accepted": 248,
                 "redeliveries": 31, "redelivered_by_cause": {"503": 20,
                                                              "ClientConnectorError": 11},
                 "unanswered": 0, "replies": 260, "delivered": 261, "lost": 0,
                 "duplicated": 1, "out_of_order": 0, "tracker_mismatches": 0,
                 "platform_429s": 5, "platform_500s": 6,
                 "duplicate_examples": [{"conversation": "telegram-42", "text": "How much?",
                                         "arrived_at_s": [12.5, 19.0],
                                         "last_kill_before": "gateway at 12.1 s"}]},
    "kills": [{"component": "nats", "at_s": 10.2, "ready_s": 0.31, "recovery_s": 2.75,
               "recovered": True},
              {"component": "dialogue-1", "at_s": 20.0, "ready_s": 3.1, "recovery_s": None,
               "recovered": False}],
}
LOAD: dict[str, Any] = {
    "users": {"conversations": 50, "messages_per_s": 186.3, "p50_ms": 53.0, "p99_ms": 200.1,
              "errors": 0, "lost": 0, "duplicated": 0, "out_of_order": 0},
    "telegram": {"conversations": 50, "messages_per_s": 180.2, "p50_ms": 56.5, "p99_ms": 190.0,
                 "errors": 0, "lost": 0, "late": 0, "duplicated": 0, "out_of_order": 0,
                 "added_p50_ms_vs_users": 3.5, "added_p99_ms_vs_users": -10.1},
    "step": {"p99_target_ms": 100.0, "knee_messages_per_s": 140.5, "knee_conversations": 25,
             "levels": [{"conversations": 25, "messages_per_s": 140.5, "p50_ms": 20.0,
                         "p99_ms": 80.0, "errors": 0, "lost": 0, "late": 3, "duplicated": 0,
                         "out_of_order": 0}]},
    "soak": {"conversations": 50, "duration_s": 600.0, "messages_per_s": 150.0, "p99_ms": 190.0,
             "errors": 0, "lost": 0, "warmup_s": 120.0, "memory_flat": True,
             "services": {"gateway": {"rss_start_mb": 100.0, "rss_end_mb": 103.0,
                                      "rss_growth_pct": 3.0, "fds_start": 40, "fds_end": 41,
                                      "threads_start": 5, "threads_end": 5}}},
    "quick": False, "cpus": 2,
}


def test_renders_every_figure_from_the_results() -> None:
    cases = [AbuseCase("tests/unit/test_x.py", "test_keys_reach_nothing", "Nothing at all.")]
    text = render({"chaos": CHAOS, "e2e_load": LOAD, "rpa_throughput": None}, cases)
    assert "| user messages accepted (200/202) | 1234 |" in text
    assert "| 1 | nats | 10.2 | 0.31 | 2.75 | True |" in text
    assert "| 2 | dialogue-1 | 20 | 3.1 | – | False |" in text
    assert "| users | 50 | 186.3 | 53 | 200.1 | 0 | 0 | – | 0 | 0 |" in text
    assert "| telegram | 50 | 180.2 | 56.5 | 190 | 0 | 0 | 0 | 0 | 0 |" in text
    assert "over the users shape of the same run: p50 3.5 ms, p99 -10.1 ms" in text
    assert "| step 25 | 25 | 140.5 | 20 | 80 | 0 | 0 | 3 | 0 | 0 |" in text
    assert "**140.5 msg/s** at 25 conversations" in text
    assert "flat within 10%" in text and "| gateway | 100 | 103 | 3 | 40 → 41 | 5 → 5 |" in text
    assert "Not measured yet (no `benchmarks/results/rpa_throughput.json`)" in text
    assert "- Keys reach nothing — Nothing at all." in text
    assert "Measured (`--quick`) on a 2-CPU machine, 2026-01-02T03:04:05Z." in text


def test_renders_the_telegram_users_of_the_chaos_run() -> None:
    text = render({"chaos": CHAOS, "e2e_load": None, "rpa_throughput": None}, [])
    assert "Of these users, 10 talk through the Telegram channel" in text
    assert "Load: 50 concurrent users (40 through the HTTP API, 10 as Telegram chats)" in text
    assert "| updates accepted (200) | 248 |" in text
    assert "| updates sent again after an answer other than 200 (redeliveries) | 31 |" in text
    assert "| redeliveries by cause | 503 20, ClientConnectorError 11 |" in text
    assert "| lost (on the stream, never at the platform) | 0 |" in text
    assert "| duplicated at the platform | 1 |" in text
    assert "| `sendMessage` calls refused by the fake: 429 / 500 | 5 / 6 |" in text
    assert "| telegram-42 | How much? | 12.5, 19 | gateway at 12.1 s |" in text
    without = render({"chaos": {k: v for k, v in CHAOS.items() if k != "telegram"},
                      "e2e_load": None, "rpa_throughput": None}, [])
    assert "Telegram" not in without.split("## Load held")[0]


def test_a_missing_knee_and_growing_memory_are_said_plainly() -> None:
    load = {**LOAD, "step": {**LOAD["step"], "knee_messages_per_s": None},
            "soak": {**LOAD["soak"], "memory_flat": False}}
    text = render({"chaos": None, "e2e_load": load, "rpa_throughput": None}, [])
    assert "Knee: no step met p99 <= 100 ms." in text
    assert "NOT flat within 10%" in text
    assert "no `benchmarks/results/chaos.json`" in text


def test_abuse_cases_are_collected_from_the_suites() -> None:
    cases = abuse_cases()
    files = {c.file for c in cases}
    assert files == {"tests/integration/test_abuse.py", "tests/unit/test_fuzzing.py",
                     "tests/unit/test_security.py"}
    names = {c.name for c in cases}
    assert "test_keys_of_another_tenant_reach_nothing" in names
    assert all(n.startswith("test_") for n in names)


def test_abuse_cases_read_docstrings(tmp_path: Path) -> None:
    suite = tmp_path / "tests" / "test_a.py"
    suite.parent.mkdir()
    suite.write_text('class TestX:\n    async def test_b(self):\n        """First.\n\n'
                     '        More."""\n\ndef helper():\n    pass\n\ndef test_a():\n    pass\n')
    assert abuse_cases(tmp_path, ["tests/test_a.py"]) == [
        AbuseCase("tests/test_a.py", "test_a", ""),
        AbuseCase("tests/test_a.py", "test_b", "First.")]


def test_the_committed_document_matches_the_committed_results() -> None:
    expected = render(load_results(), abuse_cases())
    assert DOC.read_text(encoding="utf-8") == expected, \
        "docs/reliability.md is out of date: run `make reliability-doc` and commit it"
    assert main(["--check"]) == 0
