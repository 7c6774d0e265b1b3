"""Train a bot's joint intent + entity model into a model directory (docs/model-format.md)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botfactory.training import pipeline
from botfactory.training.data import LabeledText, from_examples, stratified_split
from botfactory.training.export import CheckThresholds
from botfactory.training.trainer import OnEvent, TrainConfig

if TYPE_CHECKING:
    from services.botdef import BotDefinition


def train_bot(bot: BotDefinition, out_dir: Path, *, base_model: str | None = None,
              epochs: int | None = None, seed: int | None = None, progress: bool = True,
              config: TrainConfig | None = None,
              checks: CheckThresholds | None = None,
              init_from: Path | None = None,
              on_event: OnEvent | None = None) -> dict[str, Any]:
    """Fine-tune the bot's NLU model and write it to `out_dir`; returns its metadata.

    Precedence for each setting: the keyword argument, then the bot's `nlu:` section, then
    `config` (default `TrainConfig()`). `base_model=None` uses the bot's `nlu.base_model`
    (a path relative to the bot folder works), else the packaged all-MiniLM-L6-v2.
    `init_from`: fine-tune from that model directory instead (a warm start: its encoder and
    heads, new labels get fresh rows; reproducible with the seed like a cold start).
    `on_event`: progress events (botfactory.training.trainer.OnEvent).
    Raises `TrainingError` subclasses: `DataError`, `BaseModelError`, `ExportCheckError`.
    """
    settings = bot.nlu
    config = config or TrainConfig()
    overrides: dict[str, Any] = {}
    for name, value in (("epochs", settings.epochs), ("learning_rate", settings.learning_rate),
                        ("batch_size", settings.batch_size), ("seed", settings.seed)):
        if value is not None:
            overrides[name] = value
    if epochs is not None:
        overrides["epochs"] = epochs
    if seed is not None:
        overrides["seed"] = seed
    config = replace(config, **overrides)
    if base_model is None and settings.base_model is not None:
        relative = Path(bot.path) / settings.base_model
        base_model = str(relative) if relative.exists() else settings.base_model

    texts = from_examples(bot.examples())
    pipeline.require(bool(texts), f"bot {bot.name!r} has no examples")
    train, heldout = split_texts(texts, config)
    job = pipeline.Job(
        kind="nlu",
        bot=bot.name,
        train=train,
        heldout=heldout,
        with_tags=True,
        max_length=settings.max_length,
        confidence_threshold=settings.confidence_threshold,
        out_of_scope_intent=settings.out_of_scope_intent or None,
        entities_config=bot.entities_runtime_config(),
        extend_vocab=True,
    )
    return pipeline.run(job, Path(out_dir), base_model=base_model, config=config,
                        checks=checks, progress=progress, init_from=init_from,
                        on_event=on_event)


def split_texts(texts: list[LabeledText], config: TrainConfig) -> tuple[list[LabeledText],
                                                                        list[LabeledText]]:
    """(train, held-out) of a bot's texts, as training splits them (seeded, stratified)."""
    return stratified_split(texts, lambda t: t.label, config.heldout_fraction_for(len(texts)),
                            config.seed)
