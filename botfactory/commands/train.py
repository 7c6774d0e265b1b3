"""`botfactory train` and `botfactory train-sentiment`: fine-tune, export, check and write a
model directory (docs/model-format.md).

Bad input (missing bot folder or data, invalid bot definition, a base model that cannot be
loaded) exits 2 with `error: ...` on stderr; a failed export check (ONNX vs torch, int8 vs
fp32) exits 1. Either way no model directory is written. torch and transformers are
imported only when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botfactory.commands import train_remote

EXIT_OK = 0
EXIT_CHECK = 1
EXIT_USAGE = 2


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _common(parser: argparse.ArgumentParser, *, out_required: bool = True) -> None:
    parser.add_argument("--out", type=Path, required=out_required, metavar="MODEL_DIR",
                        help="model directory to write (replaced atomically when it exists)")
    parser.add_argument("--base-model", default=None, metavar="PATH_OR_NAME",
                        help="base encoder: a local folder or a Hugging Face hub name "
                             "(default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--epochs", type=_positive_int, default=None,
                        help="maximum epochs (default: the bot's nlu.epochs, else chosen "
                             "from the data size; early stopping may end sooner)")
    parser.add_argument("--seed", type=_non_negative_int, default=None,
                        help="random seed (default: the bot's nlu.seed, else 13)")
    parser.add_argument("--patience", type=_positive_int, default=3,
                        help="epochs without held-out improvement before stopping (default 3)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `train` and `train-sentiment` commands."""
    train = subparsers.add_parser(
        "train", help="fine-tune a bot's NLU model and write a model directory",
        description="Fine-tune the joint intent + entity model of a bot folder, export it to "
                    "ONNX (fp32 and int8), check both and write a model directory.")
    train.add_argument("bot_dir", type=Path, metavar="BOT_DIR", help="bot folder (bot.yml)")
    _common(train, out_required=False)
    train.add_argument("--from", dest="init_from", type=Path, default=None, metavar="MODEL_DIR",
                       help="warm start: fine-tune from this model directory (its encoder and "
                            "heads; new intents and entity labels get fresh rows) instead of "
                            "the base encoder")
    train.add_argument("--events", type=Path, default=None, metavar="FILE",
                       help="append progress events to FILE as JSON lines (stages, each "
                            "epoch's loss and held-out metrics); the trainer service reads them")
    train_remote.add_arguments(train)
    train.add_argument("--require-int8", action="store_true",
                       help="fail (exit 1, nothing written) when the int8 graph disagrees "
                            "with fp32 measurably more than the tolerance, instead of serving "
                            "the model with fp32 parts (the default picks the precision)")
    train.set_defaults(func=run_train)

    sentiment = subparsers.add_parser(
        "train-sentiment", help="train the platform sentiment model",
        description="Train the 3-class sentiment model (negative, neutral, positive) from "
                    "GoEmotions files or a text,label CSV, and write a model directory.")
    sentiment.add_argument("--data", type=Path, required=True, metavar="DIR_OR_CSV",
                           help="GoEmotions folder (train/dev/test.tsv, emotions.txt) or a "
                                "CSV with columns text,label")
    _common(sentiment)
    sentiment.add_argument("--max-train", type=_positive_int, default=None, metavar="N",
                           help="train on a seeded, stratified subsample of N examples")
    sentiment.add_argument("--max-heldout", type=_positive_int, default=None, metavar="N",
                           help="subsample the held-out split to N examples")
    sentiment.add_argument("--max-length", type=_positive_int, default=64,
                           help="tokens per text after truncation (default 64)")
    sentiment.set_defaults(func=run_train_sentiment)


def run_train(args: argparse.Namespace) -> int:
    """Entry point of `botfactory train` (`--remote`: on a trainer, through the gateway)."""
    bot_dir: Path = args.bot_dir
    if not bot_dir.is_dir():
        return _usage(f"bot folder not found: {bot_dir}")
    if args.remote:
        return train_remote.run(args)
    if args.out is None:
        return _usage("--out MODEL_DIR is required (or --remote to train on a trainer)")
    from services.botdef import BotDefinitionError, load_bot

    try:
        bot = load_bot(bot_dir)
    except BotDefinitionError as exc:
        return _usage(f"invalid bot definition in {bot_dir}:\n{exc}")
    if args.init_from is not None and args.base_model is not None:
        return _usage("give --from or --base-model, not both (a warm start keeps the encoder "
                      "of the model it starts from)")
    if args.init_from is not None and not args.init_from.is_dir():
        return _usage(f"--from {args.init_from}: no such model directory")
    from botfactory.training import CheckThresholds, TrainConfig, train_bot

    checks = CheckThresholds(require_int8=args.require_int8)
    on_event = None if args.events is None else _event_writer(args.events)
    return _guarded(lambda: train_bot(
        bot, args.out, base_model=args.base_model, epochs=args.epochs, seed=args.seed,
        progress=not args.quiet, config=TrainConfig(patience=args.patience),
        init_from=args.init_from, checks=checks, on_event=on_event), args.out)


def _event_writer(path: Path) -> Callable[[dict[str, Any]], None]:
    """Appends each event to `path` as one JSON line, flushed at once (a reader tails it)."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(event: dict[str, Any]) -> None:
        with path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(event, separators=(",", ":")) + "\n")

    return write


def run_train_sentiment(args: argparse.Namespace) -> int:
    """Entry point of `botfactory train-sentiment`."""
    data: Path = args.data
    if not data.exists():
        return _usage(f"sentiment data not found: {data}")
    from botfactory.training import TrainConfig, train_sentiment

    return _guarded(lambda: train_sentiment(
        data, args.out, base_model=args.base_model, epochs=args.epochs, seed=args.seed,
        max_train=args.max_train, max_heldout=args.max_heldout, max_length=args.max_length,
        progress=not args.quiet, config=TrainConfig(patience=args.patience)), args.out)


def _guarded(job: Callable[[], dict[str, Any]], out: Path) -> int:
    from botfactory.training import BaseModelError, DataError, ExportCheckError, TrainingError

    try:
        metadata = job()
    except (DataError, BaseModelError) as exc:
        return _usage(str(exc))
    except ExportCheckError as exc:
        print(f"error: export check failed: {exc}; nothing written to {out}", file=sys.stderr)
        return EXIT_CHECK
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CHECK
    print(_summary(metadata, out))
    return EXIT_OK


def _usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _summary(metadata: dict[str, Any], out: Path) -> str:
    parent = metadata.get("parent")
    start = f", warm start from {parent['version']}" if parent else ""
    lines = [f"wrote {out} ({metadata['kind']} model of {metadata['bot']}, "
             f"version {metadata['version']}{start})"]
    for split, metrics in metadata["metrics"].items():
        if metrics:
            parts = [f"intent accuracy {metrics['intent_accuracy']:.3f}"]
            if metrics.get("entity_micro_f1") is not None:
                parts.append(f"entity F1 {metrics['entity_micro_f1']:.3f}")
            lines.append(f"  {split} ({metadata['serving']['precision']}, n={metrics['n']}): "
                         f"{', '.join(parts)}")
    checks = metadata["checks"]
    training = metadata["training"]
    from botfactory.training.precision import summary

    lines.append(f"  served precision: {summary(metadata['serving'])}")
    lines.append(f"  checks: ONNX max abs diff {checks['onnx_max_abs_diff']:.2e}, "
                 f"served graph agrees with fp32 on {checks['served_intent_agreement']:.1%} "
                 f"of {checks['n_checked']} texts")
    lines.append(f"  epochs run {training['epochs_run']} (best {training['best_epoch']}), "
                 f"{training['seconds_per_epoch']:.1f} s/epoch")
    added = training.get("vocab_added")
    if added:
        unknown = training.get("vocabulary", {})
        lines.append(f"  vocabulary: added {added} word pieces for characters the base "
                     f"tokenizer read as [UNK] ({unknown.get('unknown_words_before')} unknown "
                     f"words in the training texts, {unknown.get('unknown_words_after')} left)")
    return "\n".join(lines)

