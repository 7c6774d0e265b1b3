"""The held-out split of a model among a bot folder's examples (`botfactory test BOT_DIR`).

Training records the texts it held out of fine-tuning in the model directory (`heldout.json`,
example ids: docs/model-format.md). For a model written before that file existed, the split
is rebuilt as training made it (same seed, same share), provided the bot's examples are still
those it was trained on (the counts in metadata.json agree).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.botdef import Example
from services.common.modelformat import HELDOUT_FILE, METADATA_FILE, example_id


class SplitError(ValueError):
    """The model's held-out split cannot be found among the examples (message says why)."""


@dataclass(frozen=True)
class HeldOut:
    examples: list[Example]
    source: str  # where the split came from: HELDOUT_FILE, or "training seed N"


def heldout_examples(model_dir: Path, examples: Sequence[Example]) -> HeldOut:
    """The examples (in their order) the model at `model_dir` did not train on."""
    ids = recorded_ids(model_dir)
    if ids is None:
        return _rebuilt(model_dir, examples)
    chosen = [e for e in examples if example_id(e.intent, e.text) in ids]
    if not chosen:
        raise SplitError(f"none of the {len(ids)} texts {model_dir / HELDOUT_FILE} records "
                         "is among the examples: was the model trained on this bot?")
    return HeldOut(chosen, HELDOUT_FILE)


def recorded_ids(model_dir: Path) -> set[str] | None:
    """The ids of HELDOUT_FILE; None when the model has none."""
    path = model_dir / HELDOUT_FILE
    if not path.is_file():
        return None
    record = _read_json(path)
    ids = record.get("ids") if isinstance(record, dict) else None
    if not isinstance(ids, list):
        raise SplitError(f"{path}: expected {{\"ids\": [...]}}")
    return {str(i) for i in ids}


def _rebuilt(model_dir: Path, examples: Sequence[Example]) -> HeldOut:
    seed, n_train, n_heldout = _training_counts(model_dir)
    if n_train + n_heldout != len(examples):
        raise SplitError(f"{model_dir} has no {HELDOUT_FILE}, and the bot's examples changed "
                         f"since training ({len(examples)} now, {n_train + n_heldout} then): "
                         "its held-out split cannot be rebuilt")
    from botfactory.training.data import from_examples
    from botfactory.training.nlu import split_texts
    from botfactory.training.trainer import TrainConfig

    _, heldout = split_texts(from_examples(examples), TrainConfig(seed=seed))
    if len(heldout) != n_heldout:
        raise SplitError(f"{model_dir} has no {HELDOUT_FILE}, and rebuilding its split with "
                         f"seed {seed} holds out {len(heldout)} texts, not {n_heldout}")
    held = {(t.label, t.text) for t in heldout}
    return HeldOut([e for e in examples if (e.intent, e.text) in held], f"training seed {seed}")


def _training_counts(model_dir: Path) -> tuple[int, int, int]:
    """(seed, n_train, n_heldout) of the model's metadata.json."""
    metadata = _read_json(model_dir / METADATA_FILE)
    training = metadata.get("training") if isinstance(metadata, dict) else None
    found = [training.get(k) for k in ("seed", "n_train", "n_heldout")] \
        if isinstance(training, dict) else []
    values = [v for v in found if isinstance(v, int)]
    if len(values) != 3:
        raise SplitError(f"{model_dir}: no {HELDOUT_FILE}, and no training seed and counts in "
                         f"{METADATA_FILE}: the held-out split is unknown")
    return values[0], values[1], values[2]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SplitError(f"{path}: cannot read: {exc}") from None
