"""NLU quality on public data sets, trained and served as a user would: SNIPS (intent accuracy,
slot F1, ECE), Banking77 (intent accuracy, ECE), GoEmotions sentiment (macro-F1, accuracy) and
CAIS, Chinese (intent accuracy, slot F1, ECE), beside the targets of issues 16 and 23.

    python benchmarks/nlu_quality.py [--data DIR] [--only snips,banking77,sentiment,cais]
        [--work DIR] [--quick] [--out FILE]

Training is the CLI with its defaults, run as subprocesses (no hyper-parameter is chosen here):
`botfactory import bio DIR/snips/train` (the train split only, as `import bio` reads it for
users; the held-out split comes out of it), `botfactory import csv DIR/banking77/train.csv` and
`botfactory import conll DIR/cais/train/ch.train --intents DIR/cais/train/ch.train.intent`,
each followed by `botfactory train BOT --out MODEL` (for CAIS, the vocabulary extension of
botfactory/training/vocab.py gives the characters MiniLM reads as [UNK] pieces of their own);
`botfactory train-sentiment --data DIR/goemotions` (train.tsv, dev.tsv held out). Evaluation
is `botfactory test`'s (botfactory/commands/evaluate.py) on the test split through the serving
engine (`NluModel.load`, the graph the model is served with): SNIPS test/, Banking77 test.csv,
CAIS test/ch.test (read with `import_conll`), GoEmotions test.tsv mapped to negative / neutral
/ positive as `train-sentiment` maps it. ECE is the expected calibration error of the top
intent's confidence (15 bins, botfactory/evaluation/calibration.py).

`--quick`: the same figures from seeded, stratified subsamples (600 training examples for
SNIPS, Banking77 and CAIS (topped up to 2 an intent), 1,500 for sentiment with 300 held out;
300 test examples each) and
`--epochs 2` (the CLI's default picks epochs for about 400 optimiser steps whatever the data
size: 13 minutes for the Banking77 subsample on this 2-core host), a few minutes a data set;
the JSON then says `"quick": true` and the figures are no measure of the targets.

Writes `--out` (default benchmarks/results/nlu_quality.json): for each data set its figures,
`targets` and `met`, `train_seconds`, `epochs` (metadata.json `training.epochs_run`),
`model_version`, `precision` (metadata.json `serving.precision`, "int8" for models without it),
`n_train`, `n_heldout`, `n_test` (CAIS also `vocab_added`). Models and `botfactory
test`-style reports stay in `--work` (default: a temporary folder, removed). Without the data
it exits 2 with a message; `--if-data` (or BOTFACTORY_BENCH_IF_DATA=1, set by `make bench`)
skips the missing data sets with "skipped: ..." and exits 0.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.improvement_loop import LoopError, botfactory  # noqa: E402
from benchmarks.paths import shown  # noqa: E402

if TYPE_CHECKING:
    from botfactory.evaluation.metrics import Evaluation
    from services.botdef import Example

RESULTS = ROOT / "benchmarks" / "results" / "nlu_quality.json"
DEFAULT_DATA = ROOT.parent / "shared" / "data"
SETS = ("snips", "banking77", "sentiment", "cais")
SEED = 13
QUICK_TRAIN = {"snips": 600, "banking77": 600, "sentiment": 1500, "cais": 600}
QUICK_HELDOUT = 300  # sentiment: `train-sentiment --max-heldout`
QUICK_TEST = 300
QUICK_EPOCHS = 2
BIO_FILES = ("seq.in", "seq.out", "label")
REQUIRED = {
    "snips": [f"snips/{split}/{name}" for split in ("train", "test") for name in BIO_FILES],
    "banking77": ["banking77/train.csv", "banking77/test.csv"],
    "sentiment": [f"goemotions/{name}" for name in
                  ("train.tsv", "dev.tsv", "test.tsv", "emotions.txt")],
    "cais": [f"cais/{split}/ch.{split}{end}" for split in ("train", "test")
             for end in ("", ".intent")],
}
TEST_SPLITS = {"snips": "snips/test", "banking77": "banking77/test.csv",
               "sentiment": "goemotions/test.tsv", "cais": "cais/test/ch.test"}
FIGURES = {"snips": ("intent_accuracy", "slot_f1", "ece"),
           "banking77": ("intent_accuracy", "ece"),
           "sentiment": ("macro_f1", "accuracy", "ece"),
           "cais": ("intent_accuracy", "slot_f1", "ece")}
EXIT_NO_DATA = 2
T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """A figure's target: at least (or at most) `value`."""

    value: float
    at_least: bool = True

    def met(self, figure: float) -> bool:
        return figure >= self.value if self.at_least else figure <= self.value

    def __str__(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.value:g}"


TARGETS = {
    "snips": {"intent_accuracy": Target(0.983), "slot_f1": Target(0.96),
              "ece": Target(0.03, at_least=False)},
    "banking77": {"intent_accuracy": Target(0.937), "ece": Target(0.03, at_least=False)},
    "sentiment": {"macro_f1": Target(0.70)},
    # issue 23: CM-Net's 0.9456 / 0.8616 (goal 0.955 / 0.88)
    "cais": {"intent_accuracy": Target(0.945), "slot_f1": Target(0.86)},
}


# --- data ---------------------------------------------------------------------------------


def missing_data(data: Path, name: str) -> str | None:
    """Why data set `name` cannot run from `data`, or None when its files are there."""
    absent = [path for path in REQUIRED[name] if not (data / path).is_file()]
    return None if not absent else f"{name}: not found in {data} (no {', '.join(absent)})"


def subsample(rows: Sequence[T], key: Callable[[T], str], size: int | None) -> list[T]:
    """A seeded subsample of `size` rows keeping the label proportions (all rows for None)."""
    if size is None:
        return list(rows)
    from botfactory.training.data import stratified_sample

    return stratified_sample(rows, key, size, SEED)


def read_bio(folder: Path) -> list[tuple[str, ...]]:
    """The (seq.in, seq.out, label) lines of a BIO folder."""
    columns = [(folder / name).read_text(encoding="utf-8").splitlines() for name in BIO_FILES]
    return list(zip(*columns, strict=True))


def write_bio(folder: Path, rows: Sequence[tuple[str, ...]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(BIO_FILES):
        (folder / name).write_text("".join(f"{row[index]}\n" for row in rows), encoding="utf-8")
    return folder


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV file."""
    with path.open(encoding="utf-8-sig", newline="") as stream:
        header, *rows = list(csv.reader(stream))
    return header, rows


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def bio_train_source(data: Path, work: Path, size: int | None) -> Path:
    """SNIPS train/ itself, or a subsample of it written under `work`."""
    train = data / "snips" / "train"
    if size is None:
        return train
    return write_bio(work / "train", subsample(read_bio(train), lambda row: row[2], size))


def csv_train_source(data: Path, work: Path, size: int | None) -> Path:
    """Banking77 train.csv itself, or a subsample of it written under `work`."""
    train = data / "banking77" / "train.csv"
    if size is None:
        return train
    header, rows = read_csv(train)
    return write_csv(work / "train.csv", header, subsample(rows, lambda row: row[-1], size))


def read_conll(path: Path) -> list[list[str]]:
    """The utterances of a token-per-line file: each its lines, blank lines between."""
    utterances: list[list[str]] = [[]]
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            utterances[-1].append(line)
        elif utterances[-1]:
            utterances.append([])
    return [lines for lines in utterances if lines]


def conll_train_source(data: Path, work: Path, size: int | None) -> tuple[Path, Path]:
    """CAIS train (token file, intent file) itself, or a subsample of it written under `work`:
    stratified by intent, topped up to 2 utterances an intent (a bot needs that many)."""
    train = data / "cais" / "train"
    token_file, intent_file = train / "ch.train", train / "ch.train.intent"
    if size is None:
        return token_file, intent_file
    rows = list(enumerate(zip(read_conll(token_file),
                              intent_file.read_text(encoding="utf-8").splitlines(),
                              strict=True)))
    picked = {index for index, _ in subsample(rows, lambda row: row[1][1], size)}
    for intent in sorted({row[1] for _, row in rows}):
        have = sum(1 for index in picked if rows[index][1][1] == intent)
        more = [index for index, row in rows if row[1] == intent and index not in picked]
        picked.update(more[:max(0, 2 - have)])
    chosen = [row for index, row in rows if index in picked]
    work.mkdir(parents=True, exist_ok=True)
    (work / "ch.train").write_text("".join("\n".join(lines) + "\n\n" for lines, _ in chosen),
                                   encoding="utf-8")
    (work / "ch.train.intent").write_text("".join(f"{intent}\n" for _, intent in chosen),
                                          encoding="utf-8")
    return work / "ch.train", work / "ch.train.intent"


def sentiment_examples(tsv: Path) -> list[Example]:
    """A GoEmotions split as `train-sentiment` maps it: one class per kept row (negative,
    neutral or positive); rows with only ambiguous emotions or mixed classes are dropped."""
    from botfactory.training.sentiment import read_emotions, read_goemotions_split
    from services.botdef import Example

    texts, _ = read_goemotions_split(tsv, read_emotions(tsv.parent))
    return [Example(t.text, t.label) for t in texts]


def labelled_test_split(name: str, data: Path) -> list[Example]:
    """The labelled test split of a data set, read as `botfactory test` reads it."""
    path = data / TEST_SPLITS[name]
    if name == "sentiment":
        return sentiment_examples(path)
    if name == "cais":
        from services.botdef import import_conll

        return import_conll(path, path.with_name(path.name + ".intent"))
    from botfactory.commands.evaluate import load_dataset

    return load_dataset(path).examples


# --- training (the CLI, as a user runs it) --------------------------------------------------


def train(name: str, data: Path, work: Path, quick: bool) -> float:
    """Train the data set's model into `work/model` with the CLI; the seconds `train` took."""
    log, model = work / "botfactory.log", work / "model"
    size = QUICK_TRAIN[name] if quick else None
    if name == "sentiment":
        limits = ["--max-train", str(size), "--max-heldout", str(QUICK_HELDOUT)] if quick else []
        args = ["train-sentiment", "--data", str(data / "goemotions"), *limits]
    elif name == "cais":
        tokens, intents = conll_train_source(data, work / "train", size)
        botfactory(log, "import", "conll", str(tokens), "--intents", str(intents),
                   "--out", str(work / "bot"), "--name", name, "--force")
        args = ["train", str(work / "bot")]
    else:
        source = (bio_train_source if name == "snips" else csv_train_source)(data, work, size)
        botfactory(log, "import", "bio" if name == "snips" else "csv", str(source),
                   "--out", str(work / "bot"), "--name", name, "--force")
        args = ["train", str(work / "bot")]
    epochs = ["--epochs", str(QUICK_EPOCHS)] if quick else []
    began = time.perf_counter()
    botfactory(log, *args, *epochs, "--out", str(model), "--quiet")
    return time.perf_counter() - began


# --- evaluation (as served) and results ------------------------------------------------------


def measure(model_dir: Path, examples: Sequence[Example], data: Path,
            report: Path) -> Evaluation:
    """Evaluate the served graph as `botfactory test` does (its report files go to `report`;
    `data`: where the examples come from)."""
    from botfactory.commands.evaluate import evaluate_model, load_model
    from botfactory.evaluation.report import write_report

    model = load_model(model_dir, quantized=True)
    evaluation, samples = evaluate_model(model, examples)
    write_report(report, evaluation, samples,
                 {"bot": model.bot, "version": model.version, "path": str(model_dir)},
                 {"path": str(data), "examples": len(examples)})
    return evaluation


def figures_of(name: str, evaluation: Evaluation) -> dict[str, float]:
    """The data set's figures (FIGURES) from an evaluation, rounded to 4 digits."""
    every = {"intent_accuracy": evaluation.intent_accuracy, "accuracy": evaluation.intent_accuracy,
             "macro_f1": evaluation.intent_macro_f1, "slot_f1": evaluation.entities.micro.f1,
             "ece": evaluation.intent_ece}
    return {key: round(every[key], 4) for key in FIGURES[name]}


def served_precision(metadata: dict[str, Any]) -> str:
    """metadata.json `serving.precision`; "int8" for models written before it existed."""
    serving = metadata.get("serving")
    return str(serving.get("precision", "int8")) if isinstance(serving, dict) else "int8"


def result_of(name: str, figures: dict[str, float], metadata: dict[str, Any],
              train_seconds: float, n_test: int) -> dict[str, Any]:
    """One data set's entry of the results JSON."""
    training = metadata.get("training", {})
    targets = TARGETS[name]
    return {
        **figures,
        "targets": {key: str(target) for key, target in targets.items()},
        "met": {key: target.met(figures[key]) for key, target in targets.items()},
        "train_seconds": round(train_seconds, 1),
        "epochs": training.get("epochs_run"),
        "model_version": metadata.get("version"),
        "precision": served_precision(metadata),
        "n_train": training.get("n_train"),
        "n_heldout": training.get("n_heldout"),
        "n_test": n_test,
        **({"vocab_added": training["vocab_added"]} if "vocab_added" in training else {}),
    }


def assemble(results: dict[str, dict[str, Any]], data: Path, quick: bool,
             skipped: Sequence[str]) -> dict[str, Any]:
    """The results JSON: run information and one entry per data set that ran."""
    return {
        "benchmark": "nlu_quality", "quick": quick, "data": shown(data),
        "seed": SEED, **results, "skipped": list(skipped),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    """The printed table: data set, figure, value, target and whether it is met."""
    lines = [f"{'data set':<10} {'figure':<16} {'value':>7}  {'target':<9} met"]
    for name, result in results.items():
        for key in FIGURES[name]:
            target = TARGETS[name].get(key)
            met = "-" if target is None else ("yes" if result["met"][key] else "no")
            lines.append(f"{name:<10} {key:<16} {result[key]:>7.4f}  "
                         f"{'' if target is None else str(target):<9} {met}")
    return lines


def run_one(name: str, data: Path, work: Path, quick: bool) -> dict[str, Any]:
    """Train, evaluate and describe one data set."""
    seconds = train(name, data, work, quick)
    print(f"{name}: trained in {seconds:.0f} s", flush=True)
    examples = subsample(labelled_test_split(name, data), lambda e: e.intent,
                         QUICK_TEST if quick else None)
    evaluation = measure(work / "model", examples, data / TEST_SPLITS[name], work / "report")
    metadata = json.loads((work / "model" / "metadata.json").read_text(encoding="utf-8"))
    return result_of(name, figures_of(name, evaluation), metadata, seconds, len(examples))


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder with snips/, banking77/, goemotions/ and cais/ (default: "
                             "../shared/data beside the repository)")
    parser.add_argument("--only", default=",".join(SETS),
                        help=f"comma-separated data sets (default: {','.join(SETS)})")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the bots, models and reports here (default: a temporary "
                             "folder, removed at the end)")
    parser.add_argument("--quick", action="store_true",
                        help=f"small stratified subsamples, {QUICK_EPOCHS} epochs: a few "
                             "minutes, not the real figures")
    parser.add_argument("--if-data", action="store_true",
                        help="skip missing data sets with 'skipped: ...' (exit 0; make bench)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (%(default)s)")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(SETS))
    if unknown or not args.only:
        parser.error(f"--only takes {', '.join(SETS)}; got {args.only}")
    return args


def available(args: argparse.Namespace) -> tuple[list[str], list[str]] | None:
    """(data sets to run, messages of those skipped); None when missing data is an error."""
    problems = {name: missing_data(args.data, name) for name in args.only}
    found = [name for name, problem in problems.items() if problem is None]
    missing = [problem for problem in problems.values() if problem is not None]
    if missing and not (args.if_data or os.environ.get("BOTFACTORY_BENCH_IF_DATA") == "1"):
        for problem in missing:
            print(f"error: {problem}; pass --data DIR (see ../shared/data/SOURCE.md)",
                  file=sys.stderr)
        return None
    for problem in missing:
        print(f"skipped: {problem}")
    return found, missing


def main(argv: Sequence[str] | None = None) -> int:
    from botfactory.commands.evaluate import UsageError

    args = parse_args(argv)
    chosen = available(args)
    if chosen is None:
        return EXIT_NO_DATA
    names, skipped = chosen
    if not names:
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="nlu-quality-"))
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in names:
            (work / name).mkdir(parents=True, exist_ok=True)
            results[name] = run_one(name, args.data, work / name, args.quick)
    except (LoopError, UsageError) as exc:
        print(f"error: {exc}\n(files in {work})", file=sys.stderr)
        return 1
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(table(results)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = assemble(results, args.data, args.quick, skipped)
    args.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}{' (quick: subsamples, not the real figures)' if args.quick else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
