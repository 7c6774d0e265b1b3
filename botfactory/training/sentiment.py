"""The platform sentiment model: 3 classes (negative, neutral, positive), trained from the
GoEmotions format or a CSV, through the same export/check/quantise path as the NLU models.

GoEmotions folder: `train.tsv`, `dev.tsv`, `test.tsv` (tab-separated, no header: text,
comma-separated emotion ids, comment id) and `emotions.txt` (one name per line, id = line
index). Each emotion maps to a class; the ambiguous emotions (confusion, curiosity,
realization, surprise) map to none. A row keeps the one class its emotions map to; rows
whose emotions map to no class or to more than one are dropped. `dev.tsv` is the held-out
split (early stopping, export checks), `test.tsv` is evaluated through the int8 model.

CSV file: columns `text,label` (label: positive, negative or neutral); a seeded, stratified
15% is held out.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from botfactory.training import pipeline
from botfactory.training.data import LabeledText, stratified_sample, stratified_split
from botfactory.training.errors import DataError
from botfactory.training.export import CheckThresholds
from botfactory.training.trainer import TrainConfig

KIND = "sentiment"
BOT_NAME = "platform-sentiment"
CLASSES = ("negative", "neutral", "positive")
POSITIVE = frozenset({"admiration", "amusement", "approval", "caring", "desire", "excitement",
                      "gratitude", "joy", "love", "optimism", "pride", "relief"})
NEGATIVE = frozenset({"anger", "annoyance", "disappointment", "disapproval", "disgust",
                      "embarrassment", "fear", "grief", "nervousness", "remorse", "sadness"})
NEUTRAL = frozenset({"neutral"})
AMBIGUOUS = frozenset({"confusion", "curiosity", "realization", "surprise"})
SENTIMENT_OF: dict[str, str | None] = {
    **{name: "positive" for name in POSITIVE},
    **{name: "negative" for name in NEGATIVE},
    **{name: "neutral" for name in NEUTRAL},
    **{name: None for name in AMBIGUOUS},
}
SPLIT_FILES = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
EMOTIONS_FILE = "emotions.txt"


@dataclass
class SplitStats:
    rows: int = 0
    kept: int = 0
    dropped_ambiguous: int = 0  # only ambiguous emotions: no class
    dropped_mixed: int = 0  # emotions of more than one class
    classes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "kept": self.kept, "dropped_ambiguous": self.dropped_ambiguous,
                "dropped_mixed": self.dropped_mixed, "classes": dict(sorted(self.classes.items()))}


@dataclass
class SentimentData:
    """Train / held-out / test texts and per-source statistics."""

    train: list[LabeledText]
    heldout: list[LabeledText]
    test: list[LabeledText] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def emotion_classes(emotions: Iterable[str]) -> set[str]:
    """The sentiment classes the emotions map to (ambiguous emotions map to none).

    Raises KeyError for an emotion outside the GoEmotions taxonomy."""
    return {c for c in (SENTIMENT_OF[name] for name in emotions) if c is not None}


def sentiment_of(emotions: Iterable[str]) -> str | None:
    """The one class the emotions map to, or None (only ambiguous ones, or mixed classes)."""
    classes = emotion_classes(emotions)
    return classes.pop() if len(classes) == 1 else None


def read_emotions(directory: Path) -> list[str]:
    path = directory / EMOTIONS_FILE
    names = [line.strip() for line in _read_lines(path)]
    if not names or any(not name for name in names):
        raise DataError(f"{path}: expected one emotion name per line")
    unknown = sorted(set(names) - set(SENTIMENT_OF))
    if unknown:
        raise DataError(f"{path}: emotions outside the GoEmotions taxonomy: {', '.join(unknown)}")
    return names


def read_goemotions_split(path: Path, emotions: Sequence[str]) -> tuple[list[LabeledText],
                                                                         SplitStats]:
    """The rows of one GoEmotions TSV file mapped to sentiment classes, and the counts."""
    texts: list[LabeledText] = []
    stats = SplitStats()
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        parts = line.rsplit("\t", 2)
        if len(parts) != 3:
            raise DataError(f"{path}:{number}: expected text<TAB>emotion ids<TAB>id")
        text, ids, _ = parts
        try:
            names = [emotions[int(i)] for i in ids.split(",") if i.strip()]
        except (ValueError, IndexError) as exc:
            raise DataError(f"{path}:{number}: bad emotion ids {ids!r}") from exc
        stats.rows += 1
        classes = emotion_classes(names)
        if not classes:
            stats.dropped_ambiguous += 1
        elif len(classes) > 1:
            stats.dropped_mixed += 1
        else:
            label = classes.pop()
            texts.append(LabeledText(text, label))
            stats.kept += 1
            stats.classes[label] = stats.classes.get(label, 0) + 1
    return texts, stats


def load_goemotions(directory: Path) -> SentimentData:
    """The three GoEmotions splits of `directory` (dev is the held-out split)."""
    emotions = read_emotions(directory)
    splits: dict[str, list[LabeledText]] = {}
    stats: dict[str, Any] = {}
    for split, name in SPLIT_FILES.items():
        splits[split], split_stats = read_goemotions_split(directory / name, emotions)
        stats[split] = split_stats.to_json()
    return SentimentData(splits["train"], splits["dev"], splits["test"],
                         {"source": "goemotions", **stats})


def load_csv(path: Path) -> list[LabeledText]:
    """Rows of a `text,label` CSV (label: positive, negative or neutral)."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
                raise DataError(f"{path}: needs the columns text,label")
            texts = []
            for number, row in enumerate(reader, start=2):
                label = (row.get("label") or "").strip().lower()
                if label not in CLASSES:
                    raise DataError(f"{path}:{number}: label {row.get('label')!r} is not one of "
                                    f"{', '.join(CLASSES)}")
                texts.append(LabeledText(row.get("text") or "", label))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    return texts


def load_sentiment_data(path: Path, *, seed: int, heldout_fraction: float = 0.15) -> SentimentData:
    """GoEmotions folder or `text,label` CSV file → the data splits."""
    if path.is_dir():
        return load_goemotions(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        texts = load_csv(path)
        train, heldout = stratified_split(texts, _label, heldout_fraction, seed)
        counts = Counter(t.label for t in texts)
        return SentimentData(train, heldout, [], {"source": "csv", "rows": len(texts),
                                                  "classes": dict(sorted(counts.items()))})
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    raise DataError(f"{path}: expected a GoEmotions folder or a .csv file")


def train_sentiment(data: Path, out_dir: Path, *, base_model: str | None = None,
                    epochs: int | None = None, seed: int | None = None,
                    max_train: int | None = None, max_heldout: int | None = None,
                    max_length: int = 64, progress: bool = True,
                    config: TrainConfig | None = None,
                    checks: CheckThresholds | None = None) -> dict[str, Any]:
    """Train the classification-only sentiment model and write it to `out_dir`.

    `max_train` / `max_heldout` subsample the training / held-out split (seeded, keeping
    the class proportions). Returns the metadata; raises `TrainingError` subclasses."""
    config = config or TrainConfig()
    if epochs is not None:
        config = replace(config, epochs=epochs)
    if seed is not None:
        config = replace(config, seed=seed)
    dataset = load_sentiment_data(Path(data), seed=config.seed,
                                  heldout_fraction=config.heldout_fraction)
    train, heldout = dataset.train, dataset.heldout
    if max_train is not None:
        train = stratified_sample(train, _label, max_train, config.seed)
    if max_heldout is not None:
        heldout = stratified_sample(heldout, _label, max_heldout, config.seed)
    pipeline.require(len({t.label for t in train}) >= 2,
                     f"{data}: the training data needs at least two sentiment classes")
    job = pipeline.Job(
        kind=KIND,
        bot=BOT_NAME,
        train=train,
        heldout=heldout,
        test=dataset.test,
        with_tags=False,
        max_length=max_length,
        confidence_threshold=0.0,
        out_of_scope_intent=None,
        info={"data": {**dataset.stats, "max_train": max_train, "max_heldout": max_heldout}},
    )
    return pipeline.run(job, Path(out_dir), base_model=base_model, config=config,
                        checks=checks, progress=progress)


def _label(text: LabeledText) -> str:
    return text.label


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
