"""Warm start: `botfactory train BOT_DIR --from MODEL_DIR` fine-tunes from a trained model
(encoder and heads; new labels get fresh rows, removed ones are dropped), reproducibly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from botfactory.cli import main
from botfactory.training import train_bot
from botfactory.training.model import JointModel, load_parent, warm_start
from services.botdef import Example, NluSettings, load_bot, write_bot
from tests.support.models import TINY_ENTITIES, make_tiny_encoder, tiny_examples

SETTINGS: dict[str, Any] = {"epochs": 1, "batch_size": 8, "learning_rate": 5e-3, "seed": 7,
            "confidence_threshold": 0.0, "max_length": 32}
GOODBYE = ["bye", "goodbye", "see you later", "bye bye now", "farewell", "take care"]


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("warm")
    encoder = make_tiny_encoder(root / "encoder")
    bot_dir = write_bot(root / "v1", "tiny", tiny_examples(), entities=TINY_ENTITIES,
                        nlu=NluSettings(base_model=str(encoder), **SETTINGS))
    out = root / "parent"
    train_bot(load_bot(bot_dir), out, progress=False)
    return out


@pytest.fixture(scope="module")
def changed_bot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """check_balance removed, goodbye added."""
    examples = [e for e in tiny_examples() if e.intent != "check_balance"]
    examples += [Example(text, "goodbye") for text in GOODBYE]
    return write_bot(tmp_path_factory.mktemp("v2") / "bot", "tiny", examples,
                     entities=TINY_ENTITIES, nlu=NluSettings(**SETTINGS))


def test_heads_keep_the_rows_of_kept_labels_and_start_fresh_for_new_ones(parent: Path) -> None:
    loaded = load_parent(parent)
    intents = ("goodbye", "transfer_money", "greet")
    tags = ("O", "B-amount", "I-amount", "B-new", "I-new")
    torch.manual_seed(0)
    model = JointModel(loaded.model.encoder, len(intents), len(tags))
    fresh = model.intent_head.weight[0].detach().clone()
    info = warm_start(model, loaded, intents, tags)
    for index, name in enumerate(intents[1:], start=1):
        row = loaded.intents.index(name)
        assert torch.equal(model.intent_head.weight[index], loaded.model.intent_head.weight[row])
        assert torch.equal(model.intent_head.bias[index], loaded.model.intent_head.bias[row])
    assert torch.equal(model.intent_head.weight[0], fresh)
    assert model.tag_head is not None and loaded.model.tag_head is not None
    amount = loaded.tags.index("B-amount")
    assert torch.equal(model.tag_head.weight[1], loaded.model.tag_head.weight[amount])
    assert info["reused_intents"] == 2 and info["new_intents"] == ["goodbye"]
    assert info["dropped_intents"] == ["check_balance"] and info["reused_tags"] == 3


def test_cli_warm_start_is_reproducible_and_recorded(
        parent: Path, changed_bot: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    parent_meta = json.loads((parent / "metadata.json").read_text())
    metas: list[dict[str, Any]] = []
    for name in ("a", "b"):
        out = tmp_path / name
        code = main(["train", str(changed_bot), "--out", str(out), "--from", str(parent),
                     "--quiet"])
        assert code == 0, capsys.readouterr().err
        assert f"warm start from {parent_meta['version']}" in capsys.readouterr().out
        metas.append(json.loads((out / "metadata.json").read_text()))
    first, second = metas
    assert first["version"] == second["version"] != parent_meta["version"]
    assert first["training"]["history"] == second["training"]["history"]
    assert first["parent"] == {"version": parent_meta["version"], "path": str(parent)}
    assert first["base_model"] == parent_meta["base_model"]
    warm = first["training"]["warm_start"]
    assert warm["new_intents"] == ["goodbye"] and warm["dropped_intents"] == ["check_balance"]
    labels = json.loads((tmp_path / "a" / "labels.json").read_text())
    assert "goodbye" in labels["intents"] and "check_balance" not in labels["intents"]


def test_cli_warm_start_refuses_bad_arguments(
        parent: Path, changed_bot: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "m")
    assert main(["train", str(changed_bot), "--out", out, "--from", str(tmp_path / "none")]) == 2
    assert "no such model directory" in capsys.readouterr().err
    assert main(["train", str(changed_bot), "--out", out, "--from", str(parent),
                 "--base-model", str(parent)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["train", str(changed_bot), "--out", out, "--from", str(changed_bot)]) == 2
    assert "not a model directory" in capsys.readouterr().err
    assert not Path(out).exists()
