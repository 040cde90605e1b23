"""Settings that cannot train are refused before anything is written, and a flag is taken only
when spelt in full: an abbreviation gets the same did-you-mean line as a misspelt key."""

import importlib.util
from pathlib import Path

import pytest

from minigpt.cli import run_cli
from minigpt.config import load_config
from minigpt.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(name: str, argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as ended:
        run_cli(lambda: script(name).main(argv))
    return ended.value.code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("rate,decay,values", [
    ("lr", "weight_decay", ("1e-3", "1e9")), ("lr", "weight_decay", ("0.5", "2")),
    ("muon_lr", "muon_weight_decay", ("0.02", "50")),
])
def test_a_decay_that_flips_the_weights_is_refused(rate, decay, values):
    with pytest.raises(ConfigError, match=rf"train\.{rate} \* train\.{decay} must be below 1"):
        load_config(None, {f"train.{rate}": values[0], f"train.{decay}": values[1]})


def test_a_decay_just_below_the_limit_is_accepted():
    cfg = load_config(None, {"train.lr": "0.5", "train.weight_decay": "1.99",
                             "train.muon_lr": "0.02", "train.muon_weight_decay": "49"})
    assert cfg.train.lr * cfg.train.weight_decay < 1


def test_train_py_refuses_it_before_writing_anything(tmp_path, capsys):
    code, err = run("train", ["--train.weight_decay", "1e9", "--train.out_dir",
                              str(tmp_path / "runs")], capsys)
    assert code == 1 and len(err.splitlines()) == 1
    assert "weights" in err and "sign" in err and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flag,meant", [("--train.max_step", "'max_steps'"),
                                        ("--model.emb", "'embed_dim'"),
                                        ("--train.eval_int", "'eval_interval'")])
def test_an_abbreviated_key_is_refused_with_did_you_mean(tmp_path, capsys, flag, meant):
    code, err = run("train", [flag, "10", "--train.out_dir", str(tmp_path / "runs")], capsys)
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith(f"error: unknown key '{flag[2:]}' (did you mean {meant}?)")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name,argv,meant", [
    ("train", ["--resum", "runs/x"], "--resume"),
    ("train", ["--qui"], "--quiet"),
    ("generate", ["--max-new", "5"], "--max-new-tokens"),
])
def test_an_abbreviated_option_is_refused_with_did_you_mean(capsys, name, argv, meant):
    code, err = run(name, argv, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert f"(did you mean {meant}?)" in err
