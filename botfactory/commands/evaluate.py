"""`botfactory test`: evaluate an NLU model on labelled data and write a report folder.

Input: a bot folder (`bot.yml`), a BIO folder (`seq.in`, `seq.out`, `label`) or a CSV file.
On a bot folder it evaluates on the model's held-out split (the examples training held out,
`heldout.json` in the model directory), unless `--split all` asks for every example, most of
which the model trained on (the command then says its figures are optimistic).
Predictions go through `services.nlu.engine.NluModel`, the onnxruntime path the server uses.
Writes `report.json`, `errors.json`, `confusion.png` and `reliability.png` (see
`botfactory.evaluation.report`) and prints a summary. Bad input (missing paths, unreadable
data or model) exits 2 with `error: ...` on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from botfactory.evaluation.metrics import (
    DEFAULT_OUT_OF_SCOPE,
    Evaluation,
    Gold,
    Predicted,
    Sample,
    Span,
    evaluate,
    is_out_of_scope,
)

if TYPE_CHECKING:
    from botfactory.evaluation.report import ReportFiles
    from services.botdef import Example

BOT_FILES = ("bot.yml",)
SPLITS = ("heldout", "all")
BIO_FILES = ("seq.in", "seq.out", "label")
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input: reported as `error: ...` with exit status 2."""


class SpanLike(Protocol):
    @property
    def entity(self) -> str: ...
    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...


class PredictionLike(Protocol):
    """`services.nlu.engine.Prediction`."""

    @property
    def intent(self) -> str: ...
    @property
    def confidence(self) -> float: ...
    @property
    def entities(self) -> Sequence[SpanLike]: ...


class ModelLike(Protocol):
    """`services.nlu.engine.NluModel`."""

    @property
    def bot(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def confidence_threshold(self) -> float: ...
    @property
    def out_of_scope_intent(self) -> str | None: ...
    def predict(self, texts: Sequence[str], batch_size: int = 64) -> Sequence[PredictionLike]: ...


@dataclass(frozen=True)
class Dataset:
    path: Path
    format: str  # "bot", "bio" or "csv"
    examples: list[Example]
    split: dict[str, Any] | None = None  # a bot folder's: {"split", "source", "n_total"}


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `test` command."""
    parser = subparsers.add_parser(
        "test", help="evaluate an NLU model on labelled data",
        description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("data", type=Path, metavar="BOT_DIR_OR_DATA",
                        help="bot folder (bot.yml), BIO folder (seq.in/seq.out/label) or CSV")
    parser.add_argument("--model", type=Path, required=True, metavar="MODEL_DIR",
                        help="model directory written by `botfactory train`")
    parser.add_argument("--report", type=Path, required=True, metavar="DIR",
                        help="folder for report.json, errors.json, confusion.png and "
                           "reliability.png")
    parser.add_argument("--batch-size", type=_positive_int, default=64,
                        help="texts per onnxruntime run (default 64)")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--int8", dest="quantized", action="store_true", default=True,
                           help="evaluate the graph the model is served with: int8, mixed or "
                                "fp32, as training chose (metadata.json serving.file; "
                                "default)")
    precision.add_argument("--fp32", dest="quantized", action="store_false",
                           help="evaluate model.onnx")
    parser.add_argument("--split", choices=SPLITS, default="heldout",
                        help="a bot folder's examples to evaluate on: the model's held-out "
                             "split (default), or all of them, most of which the model trained "
                             "on (optimistic figures)")
    parser.add_argument("--oos-intent", default=None, metavar="NAME",
                        help="out-of-scope intent of the gold data (default: the model's, "
                             f"else {DEFAULT_OUT_OF_SCOPE})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of `botfactory test`."""
    try:
        return _run(args, sys.stdout)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace, out: TextIO) -> int:
    dataset = load_dataset(args.data)
    _check_report_dir(args.report)
    model = load_model(args.model, quantized=args.quantized)
    if dataset.format == "bot":
        dataset = select_split(dataset, args.model, args.split)
        print(split_note(dataset), file=out)
        if args.split == "all":
            print(f"warning: {split_note(dataset)}", file=sys.stderr)
    evaluation, samples = evaluate_model(model, dataset.examples, args.batch_size,
                                         args.oos_intent)
    files = _write(args.report, evaluation, samples, _model_info(model, args), dataset)
    print_summary(evaluation, model, files, out)
    return 0


# ---- input -------------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    """The format of a data path: "bot", "bio" or "csv"; UsageError if none of them."""
    if not path.exists():
        raise UsageError(f"{path}: no such file or directory")
    if path.is_dir():
        if any((path / name).is_file() for name in BOT_FILES):
            return "bot"
        if all((path / name).is_file() for name in BIO_FILES):
            return "bio"
        raise UsageError(f"{path}: neither a bot folder (bot.yml) nor a BIO folder "
                         f"({', '.join(BIO_FILES)})")
    if path.suffix.lower() == ".csv":
        return "csv"
    raise UsageError(f"{path}: not a bot folder, a BIO folder or a .csv file")


def _bot_examples(path: Path) -> list[Example]:
    from services.botdef import load_bot

    return list(load_bot(path).examples())


def loader_for(format_: str) -> Callable[[Path], Sequence[Example]]:
    """The `services.botdef` reader of a data format ("bot", "bio" or "csv")."""
    from services.botdef import import_bio, import_csv

    loaders: dict[str, Callable[[Path], Sequence[Example]]] = {
        "bot": _bot_examples, "bio": import_bio, "csv": import_csv}
    return loaders[format_]


def load_dataset(path: Path) -> Dataset:
    """The labelled examples of a bot folder, BIO folder or CSV file."""
    from services.botdef import BotDefinitionError

    format_ = detect_format(path)
    load = loader_for(format_)
    try:
        examples = list(load(path))
    except BotDefinitionError as exc:  # str() lists every issue, one per line
        issues = "".join(f"\n  {line}" for line in str(exc).splitlines())
        raise UsageError(f"{path}: invalid bot definition:{issues}") from exc
    except (ValueError, OSError) as exc:  # DataImportError is a ValueError naming file:line
        raise UsageError(f"cannot read {format_} data: {exc}") from exc
    if not examples:
        raise UsageError(f"{path}: no labelled examples")
    return Dataset(path, format_, examples)


def select_split(dataset: Dataset, model_dir: Path, split: str) -> Dataset:
    """A bot folder's examples to evaluate on: the model's held-out split, or all."""
    from botfactory.evaluation.heldout import SplitError, heldout_examples

    n_total = len(dataset.examples)
    if split == "all":
        return replace(dataset, split={"split": "all", "source": None, "n_total": n_total})
    try:
        held = heldout_examples(model_dir, dataset.examples)
    except SplitError as exc:
        raise UsageError(f"{exc}\n(`--split all` evaluates on every example of {dataset.path}, "
                         "most of which the model trained on)") from exc
    return replace(dataset, examples=held.examples,
                   split={"split": "heldout", "source": held.source, "n_total": n_total})


def split_note(dataset: Dataset) -> str:
    """What a bot folder's evaluation measured, in one line."""
    split = dataset.split or {}
    n, total = len(dataset.examples), split.get("n_total", len(dataset.examples))
    if split.get("split") == "heldout":
        return (f"data: the model's held-out split ({split['source']}): {n} of the {total} "
                f"examples of {dataset.path}, none of which it trained on")
    return (f"data: all {n} examples of {dataset.path}, including those the model trained on: "
            "the figures are optimistic (without --split all, the held-out split is used)")


def _check_report_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise UsageError(f"--report {path}: exists and is not a folder")


def load_model(model_dir: Path, *, quantized: bool) -> ModelLike:
    """Load a model directory with the serving engine; UsageError with its message if bad."""
    if not model_dir.is_dir():
        raise UsageError(f"--model {model_dir}: no such model directory")
    from services.nlu.engine import ModelLoadError, NluModel

    try:
        return NluModel.load(model_dir, quantized=quantized)
    except ModelLoadError as exc:
        raise UsageError(f"cannot load model: {exc}") from exc


# ---- prediction ----------------------------------------------------------------------------


def _spans(spans: Sequence[SpanLike]) -> tuple[Span, ...]:
    return tuple(Span(s.entity, s.start, s.end) for s in spans)


def to_gold(example: Example) -> Gold:
    return Gold(example.intent, _spans(example.entities))


def to_predicted(prediction: PredictionLike, oos_intent: str, threshold: float) -> Predicted:
    flag = is_out_of_scope(prediction.intent, prediction.confidence, oos_intent, threshold)
    return Predicted(prediction.intent, _spans(prediction.entities), prediction.confidence, flag)


def predict_samples(model: ModelLike, examples: Sequence[Example], batch_size: int,
                    oos_intent: str) -> list[Sample]:
    """Run the model over the examples' texts, in batches, and pair gold with predictions."""
    predictions = model.predict([e.text for e in examples], batch_size=batch_size)
    if len(predictions) != len(examples):
        raise RuntimeError(f"{len(predictions)} predictions for {len(examples)} texts")
    threshold = model.confidence_threshold
    return [Sample(e.text, to_gold(e), to_predicted(p, oos_intent, threshold))
            for e, p in zip(examples, predictions, strict=True)]


def evaluate_model(model: ModelLike, examples: Sequence[Example], batch_size: int = 64,
                   oos_intent: str | None = None) -> tuple[Evaluation, list[Sample]]:
    """Predict and score `examples` as `botfactory test` does. The gold out-of-scope intent:
    `oos_intent`, else the model's, else `DEFAULT_OUT_OF_SCOPE`."""
    oos = oos_intent or model.out_of_scope_intent or DEFAULT_OUT_OF_SCOPE
    samples = predict_samples(model, examples, batch_size, oos)
    return evaluate(samples, oos), samples


# ---- output --------------------------------------------------------------------------------


def _model_info(model: ModelLike, args: argparse.Namespace) -> dict[str, Any]:
    return {"bot": model.bot, "version": model.version, "path": str(args.model),
            "quantized": bool(args.quantized)}


def _write(out_dir: Path, evaluation: Evaluation, samples: Sequence[Sample],
           model: dict[str, Any], dataset: Dataset) -> ReportFiles:
    try:
        from botfactory.evaluation.report import write_report
    except ImportError as exc:
        raise UsageError(f"writing the report needs matplotlib "
                         f"(pip install 'botfactory[train]'): {exc}") from exc
    data = {"path": str(dataset.path), "format": dataset.format, **(dataset.split or {})}
    try:
        return write_report(out_dir, evaluation, samples, model, data)
    except OSError as exc:
        raise UsageError(f"--report {out_dir}: cannot write: {exc}") from exc


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def summary_rows(evaluation: Evaluation) -> list[tuple[str, str]]:
    """The summary table's (metric, value) rows."""
    oos = evaluation.out_of_scope
    return [
        ("intent accuracy", _percent(evaluation.intent_accuracy)),
        ("intent macro-F1", _percent(evaluation.intent_macro_f1)),
        ("intent ECE", f"{evaluation.intent_ece:.4f}"),
        ("entity micro-F1", _percent(evaluation.entities.micro.f1)),
        ("OOS precision", _percent(None if oos is None else oos.precision)),
        ("OOS recall", _percent(None if oos is None else oos.recall)),
        ("examples", str(evaluation.n_examples)),
    ]


def print_summary(evaluation: Evaluation, model: ModelLike, files: ReportFiles,
                  out: TextIO) -> None:
    print(f"model {model.bot} {model.version}", file=out)
    for name, value in summary_rows(evaluation):
        print(f"  {name:<16} {value:>8}", file=out)
    print(f"report: {files.report} (errors: {files.errors.name}, "
          f"confusion: {files.confusion.name}, reliability: {files.reliability.name})", file=out)
