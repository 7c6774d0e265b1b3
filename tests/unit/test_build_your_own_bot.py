"""docs/build-your-own-bot.md, run as written: its commands in order (new → validate → train →
test-conversations --offline → run) in an empty folder, training with a tiny base encoder and
one epoch; `make run BOT=...` is checked up to the plan of what it starts (the stack itself:
tests/integration/test_run_bot.py)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from botfactory.cli import build_parser
from botfactory.cli import main as botfactory
from botfactory.local.stack import plan_run
from tests.support.models import make_tiny_encoder

DOC = Path(__file__).resolve().parents[2] / "docs" / "build-your-own-bot.md"
TUTORIAL = ["new", "validate", "train", "test-conversations", "run"]
TINY_TRAINING = ["--epochs", "1", "--quiet"]


def doc_commands() -> list[list[str]]:
    """The commands of the page's ```bash blocks, as argument lists (comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    lines = [line.split(" #")[0].strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line]


def as_cli(command: list[str]) -> list[str]:
    """`botfactory ARGS` -> ARGS; `make run BOT=DIR` -> `run DIR` (the same, README)."""
    if command[:2] == ["make", "run"]:
        bot = next(arg.split("=", 1)[1] for arg in command if arg.startswith("BOT="))
        return ["run", bot]
    assert command[0] == "botfactory", command
    return command[1:]


def test_the_tutorial_is_the_five_steps_in_order() -> None:
    commands = [as_cli(command) for command in doc_commands()]
    assert [command[0] for command in commands] == TUTORIAL
    assert "--offline" in commands[3]
    assert len({command[1] for command in commands[1:]}) == 1  # one bot folder throughout


def test_the_tutorial_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    tiny = make_tiny_encoder(tmp_path / "tiny-encoder")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    commands = [as_cli(command) for command in doc_commands()]
    for command in commands[:4]:
        extra = [*TINY_TRAINING, "--base-model", str(tiny)] if command[0] == "train" else []
        code = botfactory([*command, *extra])
        assert code == 0, f"botfactory {shlex.join(command)}:\n{capsys.readouterr()}"
    out = capsys.readouterr().out
    assert "1 passed, 0 failed" in out
    bot_dir = Path(commands[1][1])
    assert (work / ".botfactory" / "models" / bot_dir.name / "metadata.json").is_file()
    plan = plan_run(build_parser().parse_args(commands[4]))
    assert plan.name == bot_dir.name and not plan.demo_bank
    assert plan.missing_secrets == ("ORDERS_API_TOKEN",)  # the scaffold's, until secrets.env
