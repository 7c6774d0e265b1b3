"""The precision a model is served at, chosen per model when it is trained.

int8 is the fastest graph and on most models gives fp32's answers, but a model with near-tied
logits (often a small bot) can be sensitive to quantisation, and by how much depends on the
CPU's int8 kernels. Training therefore never fails on it; it goes down a ladder:

1. `int8`: every weight matrix quantised;
2. `mixed`: int8 with the last quarter, then the last half, of the weight matrices in graph
   order (the output heads and the top encoder layers, where errors add up) kept in fp32;
3. `fp32`: the exported graph as it is.

Each candidate is compared with fp32 on the check texts (held-out and training texts). It is
accepted unless its disagreement is *measurably* above the tolerance: the lower end of the 95%
Wilson interval of the share of texts whose intent differs (and of the share of words whose
tag differs) is above `CheckThresholds.max_int8_disagreement`. One text in 74 therefore never
decides; a systematic drift does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from botfactory.training.data import Encoded
from botfactory.training.errors import ExportCheckError, TrainingError
from botfactory.training.export import CheckThresholds, Outputs, tag_disagreements
from services.common.modelformat import FP32_FILE, INT8_FILE

MIXED_SHARES = (0.25, 0.5)
Z_95 = 1.96
RULE = ("int8, else int8 with the last 25% then 50% of the weight matrices in fp32, else fp32; "
        "a candidate is refused when the lower end of the 95% Wilson interval of its "
        "disagreement with fp32 (texts' intents, words' tags) is above the tolerance")


def wilson_lower(count: int, total: int, z: float = Z_95) -> float:
    """Lower end of the Wilson score interval of the proportion `count / total`."""
    if total <= 0:
        return 0.0
    p = count / total
    denominator = 1 + z * z / total
    centre = p + z * z / (2 * total)
    margin = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return max(0.0, (centre - margin) / denominator)


@dataclass(frozen=True)
class Trial:
    """One candidate precision and how it compared with fp32."""

    precision: str
    fp32_share: float
    fp32_matrices: int
    texts: int
    intent_disagreements: int
    words: int
    tag_disagreements: int
    accepted: bool
    error: str | None = None

    @property
    def intent_agreement(self) -> float | None:
        """Share of texts whose intent is fp32's (None when the graph did not build)."""
        if self.error is not None or not self.texts:
            return None
        return 1.0 - self.intent_disagreements / self.texts

    @property
    def tag_agreement(self) -> float | None:
        """Share of words whose tag is fp32's (None without tags or graph)."""
        if self.error is not None or not self.words:
            return None
        return 1.0 - self.tag_disagreements / self.words

    def to_json(self) -> dict[str, Any]:
        return {"precision": self.precision, "fp32_share": self.fp32_share,
                "fp32_matrices": self.fp32_matrices, "texts": self.texts,
                "intent_disagreements": self.intent_disagreements,
                "intent_disagreement_lower_bound": round(
                    wilson_lower(self.intent_disagreements, self.texts), 6),
                "words": self.words, "tag_disagreements": self.tag_disagreements,
                "tag_disagreement_lower_bound": round(
                    wilson_lower(self.tag_disagreements, self.words), 6),
                "accepted": self.accepted, "error": self.error}


@dataclass(frozen=True)
class Choice:
    """The served precision, its graph file, its logits on the check texts and the trials."""

    precision: str
    file: str
    outputs: Outputs
    trials: tuple[Trial, ...]
    tolerance: float

    @property
    def fp32_matrices(self) -> int:
        return self.trials[-1].fp32_matrices if self.precision == "mixed" else 0

    def to_json(self) -> dict[str, Any]:
        return {"precision": self.precision, "file": self.file,
                "fp32_matrices": self.fp32_matrices, "tolerance": self.tolerance,
                "rule": RULE, "trials": [trial.to_json() for trial in self.trials]}


def measure(precision: str, share: float, kept: int, items: Sequence[Encoded], fp32: Outputs,
            candidate: Outputs, tolerance: float) -> Trial:
    """Compare `candidate`'s logits with fp32's on `items`."""
    intents = int(np.sum(fp32.intent_logits.argmax(axis=-1)
                         != candidate.intent_logits.argmax(axis=-1)))
    tags = tag_disagreements(items, fp32, candidate) or (0, 0)
    accepted = (wilson_lower(intents, len(items)) <= tolerance
                and wilson_lower(tags[0], tags[1]) <= tolerance)
    return Trial(precision, share, kept, len(items), intents, tags[1], tags[0], accepted)


def choose(quantize: Callable[[float], int], run: Callable[[], Outputs],
           items: Sequence[Encoded], fp32: Outputs, thresholds: CheckThresholds) -> Choice:
    """Go down the ladder: `quantize(share)` writes the int8 graph with that share of the
    weight matrices kept in fp32 (returning how many), `run()` gives its logits on `items`.
    With `thresholds.require_int8`, a refused int8 raises ExportCheckError."""
    tolerance = thresholds.max_int8_disagreement
    trials: list[Trial] = []
    for precision, share in (("int8", 0.0), *(("mixed", s) for s in MIXED_SHARES)):
        try:
            kept = quantize(share)
            outputs = run()
        except TrainingError as exc:
            trials.append(Trial(precision, share, 0, len(items), 0, 0, 0, False, str(exc)))
        else:
            trials.append(measure(precision, share, kept, items, fp32, outputs, tolerance))
            if trials[-1].accepted:
                return Choice(precision, INT8_FILE, outputs, tuple(trials), tolerance)
        if thresholds.require_int8:
            raise ExportCheckError(f"int8 refused (--require-int8): "
                                   f"{_refusal(trials[-1].to_json())}, measurably more than "
                                   f"{tolerance:.1%}")
    return Choice("fp32", FP32_FILE, fp32, tuple(trials), tolerance)


def summary(serving: dict[str, Any]) -> str:
    """One line on the served precision, from metadata.json's `serving` record."""
    trials = serving["trials"]
    if serving["precision"] == "int8":
        first = trials[0]
        return (f"int8 (intents differ from fp32 on {first['intent_disagreements']} of "
                f"{first['texts']} texts)")
    kept = (f", {serving['fp32_matrices']} weight matrices in fp32"
            if serving["precision"] == "mixed" else "")
    refused = "; ".join(_refusal(trial) for trial in trials if not trial["accepted"])
    return f"{serving['precision']}{kept}; refused: {refused}"


def _refusal(trial: dict[str, Any]) -> str:
    name = ("int8" if trial["precision"] == "int8"
            else f"mixed with {trial['fp32_matrices']} matrices in fp32")
    if trial["error"]:
        return f"{name}: {trial['error']}"
    return (f"{name} differs from fp32 on the intents of {trial['intent_disagreements']} of "
            f"{trial['texts']} texts and the tags of {trial['tag_disagreements']} of "
            f"{trial['words']} words")
