"""Running any bot locally (`make run BOT=DIR`, `botfactory run DIR`): its settings, its
secrets (secrets.env or the environment), free ports, the demo bank for the demo only; and
`botfactory new`, whose folder is the bot that runs."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from botfactory.cli import build_parser
from botfactory.cli import main as botfactory
from botfactory.local import stack
from botfactory.local.botrun import (
    BotRunError,
    Ports,
    missing_secrets,
    read_secrets,
    secret_env,
    settings_overrides,
    stale_model,
)
from botfactory.local.stack import plan_run
from botfactory.scaffold import ScaffoldError, create_bot
from services.botdef import load_bot

ROOT = Path(__file__).resolve().parents[2]
SUPPORTING = {"greet", "goodbye", "affirm", "deny", "inform", "out_of_scope", "handoff"}


@pytest.fixture()
def new_bot(tmp_path: Path) -> Path:
    create_bot("insurance", tmp_path / "insurance")
    return tmp_path / "insurance"


# -- botfactory new -----------------------------------------------------------------------------


def test_new_bot_has_the_supporting_intents_one_flow_workflow_and_test(new_bot: Path) -> None:
    bot = load_bot(new_bot)
    assert bot.name == "insurance"
    assert set(bot.intent_names()) >= SUPPORTING
    assert len(bot.conversation.flows) == 1 and len(bot.raw["workflows"]) == 1
    assert (new_bot / "tests" / "conversations.yml").is_file()
    assert all(path.read_text().startswith("#") for path in new_bot.rglob("*.yml"))  # teaches
    assert (new_bot / ".gitignore").read_text().splitlines()[-1] == "secrets.env"


def test_new_refuses_a_bad_name_and_a_folder_in_use(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ScaffoldError, match="lowercase"):
        create_bot("My Bot", tmp_path / "x")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "bot.yml").write_text("x")
    assert botfactory(["new", "used", "--out", str(tmp_path / "used")]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "used" / "bot.yml").read_text() == "x"


def test_new_defaults_to_bots_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert botfactory(["new", "claims"]) == 0
    assert load_bot(tmp_path / "bots" / "claims").name == "claims"


# -- secrets and settings -----------------------------------------------------------------------


def test_secrets_file_lines(tmp_path: Path) -> None:
    path = tmp_path / "secrets.env"
    path.write_text("# comment\n\nAPI_TOKEN=abc=def\nexport pin = '1234'\nquoted=\"x y\"\n")
    assert read_secrets(path) == {"API_TOKEN": "abc=def", "PIN": "1234", "QUOTED": "x y"}
    path.write_text("OK=1\nnot a line\n")
    with pytest.raises(BotRunError, match=r"secrets.env:2: expected NAME=value"):
        read_secrets(path)


def test_environment_secrets_win_over_the_file(new_bot: Path) -> None:
    (new_bot / "secrets.env").write_text("ORDERS_API_TOKEN=from-file\nOTHER=1\n")
    env = secret_env(new_bot, None, {"BOTFACTORY_SECRET_ORDERS_API_TOKEN": "from-env",
                                     "UNRELATED": "x"})
    assert env == {"BOTFACTORY_SECRET_ORDERS_API_TOKEN": "from-env",
                   "BOTFACTORY_SECRET_OTHER": "1"}
    assert secret_env(new_bot / "nowhere", None, {}) == {}
    with pytest.raises(BotRunError, match="cannot read"):
        secret_env(new_bot, new_bot / "missing.env", {})


def test_missing_secrets_are_those_the_workflows_read(new_bot: Path) -> None:
    workflows = load_bot(new_bot).raw["workflows"]
    assert missing_secrets(workflows, {}) == ["ORDERS_API_TOKEN"]
    assert missing_secrets(workflows, {"BOTFACTORY_SECRET_ORDERS_API_TOKEN": "t"}) == []


def test_settings_overrides_are_checked() -> None:
    assert settings_overrides(["orders_api_url=http://h:1"]) == ["orders_api_url=http://h:1"]
    for bad in ("no-equals", "a=1,b=2", "bad name=1"):
        with pytest.raises(BotRunError, match="--setting"):
            settings_overrides([bad])


# -- the plan of a run --------------------------------------------------------------------------


def test_a_new_bot_runs_without_the_demo_bank_with_its_secrets(new_bot: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.delenv("BOTFACTORY_SECRET_ORDERS_API_TOKEN", raising=False)
    (new_bot / "secrets.env").write_text("ORDERS_API_TOKEN=t0k3n\n")
    result = plan_run(build_parser().parse_args(
        ["run", str(new_bot), "--setting", "orders_api_url=http://127.0.0.1:9000"]))
    assert result.name == "insurance" and not result.demo_bank
    assert result.secrets["BOTFACTORY_SECRET_ORDERS_API_TOKEN"] == "t0k3n"
    assert result.missing_secrets == ()
    assert result.settings == ("orders_api_url=http://127.0.0.1:9000",)
    assert result.ports == Ports()  # the README's defaults unless asked
    forced = plan_run(build_parser().parse_args(["run", str(new_bot), "--demo-bank"]))
    assert forced.demo_bank


def test_the_demo_bot_gets_the_demo_bank() -> None:
    result = plan_run(build_parser().parse_args(["run", str(ROOT / "bots" / "banking")]))
    assert result.name == "banking" and result.demo_bank


def test_free_ports_are_real_and_distinct(new_bot: Path) -> None:
    result = plan_run(build_parser().parse_args(["run", str(new_bot), "--free-ports"]))
    ports = [getattr(result.ports, name) for name in Ports.__dataclass_fields__]
    assert all(port > 0 for port in ports) and ports != list(Ports().__dict__.values())
    one = plan_run(build_parser().parse_args(["run", str(new_bot), "--http-port", "0"]))
    assert one.ports.http > 0 and one.ports.nats == 4222


def test_an_invalid_bot_is_an_error_without_traceback(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "bot.yml").write_text('version: "1"\nname: Bad Name\n')
    assert botfactory(["run", str(tmp_path / "bad"), "--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bot.yml" in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()  # nothing started


def test_make_run_passes_bot() -> None:
    def dry(*args: str) -> str:
        return subprocess.run(["make", "-n", "--no-print-directory", "run", *args], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout

    assert "scripts/run_local.py --bot bots/insurance" in dry("BOT=bots/insurance")
    assert "--bot" not in dry().splitlines()[-1]  # the demo, as README's `make run`


# -- the model: trained again when it no longer fits the bot -------------------------------------


def fake_model(model_dir: Path, intents: list[str]) -> Path:
    model_dir.mkdir(parents=True)
    (model_dir / "labels.json").write_text(json.dumps({"intents": intents, "tags": ["O"]}))
    (model_dir / "metadata.json").write_text("{}")
    return model_dir


def age(path: Path, seconds: float) -> None:
    stat = path.stat()
    os.utime(path, (stat.st_atime - seconds, stat.st_mtime - seconds))


def test_stale_model(new_bot: Path, tmp_path: Path) -> None:
    intents = load_bot(new_bot).intent_names()
    model = fake_model(tmp_path / "model", intents)
    assert stale_model(new_bot, model, intents) is None
    assert stale_model(new_bot, model, [*intents, "file_claim"]) == \
        "the intents changed (new: ['file_claim'], gone: none)"
    age(model / "metadata.json", 60)
    assert stale_model(new_bot, model, intents) == \
        "bot.yml, data/entities.yml, data/nlu/conversation.yml changed since it was trained"
    (model / "labels.json").unlink()
    assert stale_model(new_bot, model, intents) == "the model folder is incomplete"


def test_run_trains_only_when_needed(new_bot: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    trained: list[tuple[str, ...]] = []
    monkeypatch.setattr(stack, "_botfactory", lambda *args: trained.append(args))
    intents = load_bot(new_bot).intent_names()
    models = tmp_path / "models"
    stack.prepare_model(new_bot, models, "insurance", intents=intents)
    assert trained == [("train", str(new_bot), "--out", str(models / "insurance"))]
    fake_model(models / "insurance", intents)
    stack.prepare_model(new_bot, models, "insurance", intents=intents)
    assert len(trained) == 1  # up to date: served as it is
    stack.prepare_model(new_bot, models, "insurance", retrain=True, intents=intents)
    stack.prepare_model(new_bot, models, "insurance", intents=[*intents, "file_claim"])
    assert len(trained) == 3
    out = capsys.readouterr().out
    assert "again (--retrain" in out and "again: the intents changed" in out


def test_taken_ports_stop_the_run_before_anything_starts(new_bot: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        code = botfactory(["run", str(new_bot), "--http-port", str(port), "--data-dir",
                           str(tmp_path / "data")])
    assert code == 2
    err = capsys.readouterr().err
    # Other default ports may be taken on a shared machine too: the message names this one.
    assert re.search(rf"error: ports \[[0-9, ]*\b{port}\b[0-9, ]*\] are taken", err), err
    assert "--free-ports" in err
    assert not (tmp_path / "data").exists()
