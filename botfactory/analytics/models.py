"""Model versions over time: what the model store says about each version of a bot (creation
time, held-out / test scores from its metadata), when it was activated (the activation
history), and how it did live (`VersionLive` from the conversation events). Pure, no I/O: the
report command reads the store (services/common/modelstore.py) and passes what it found."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from botfactory.analytics.trends import VersionLive
from services.common.modelstore import Activation, VersionInfo


@dataclass(frozen=True)
class StoreState:
    """The bot's versions, activation history (oldest first) and active version."""

    versions: list[VersionInfo]
    history: list[Activation]
    active: str | None


@dataclass(frozen=True)
class ModelRow:
    version: str
    created_at: str
    """From metadata.json (ISO 8601); "" when unknown (e.g. a version only seen in events)."""
    scores: dict[str, float]
    """`heldout.intent_accuracy`, `test.entity_micro_f1`, ... (numbers only)."""
    activations: list[Activation] = field(default_factory=list)
    active: bool = False
    in_store: bool = True
    live: VersionLive | None = None


def scores(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric metrics of metadata.json's `metrics` (`{split: {name: value}}`) as flat
    `split.name` keys; counts (`n`) are left out."""
    found: dict[str, float] = {}
    for split, values in metrics.items():
        if not isinstance(values, Mapping):
            continue
        for name, value in values.items():
            if name != "n" and isinstance(value, int | float) and not isinstance(value, bool):
                found[f"{split}.{name}"] = float(value)
    return found


def timeline(store: StoreState | None, live: Sequence[VersionLive]) -> list[ModelRow]:
    """One row per version: the store's versions (oldest first), then versions seen only in
    the events (in order of first use)."""
    by_version = {v.version: v for v in live}
    rows: list[ModelRow] = []
    if store is not None:
        for info in store.versions:
            rows.append(ModelRow(
                version=info.version, created_at=info.created_at or info.uploaded_at,
                scores=scores(info.metrics),
                activations=[a for a in store.history if a.version == info.version],
                active=info.version == store.active, live=by_version.get(info.version)))
    known = {row.version for row in rows}
    rows.extend(ModelRow(version=v.version, created_at="", scores={}, in_store=False,
                         active=store is not None and v.version == store.active, live=v)
                for v in live if v.version not in known)
    return rows
