"""Config: TOML sections into frozen dataclasses, command-line overrides, clear errors."""

import itertools
import re
from pathlib import Path

import pytest

from minigpt.config import ConfigError, describe_keys, load_config

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_precedence_defaults_then_toml_then_overrides(tmp_path):
    path = write(tmp_path, "[train]\nlr = 0.01\nbatch_size = 7\n[model]\nembed_dim = 48\n")
    cfg = load_config(path, {"train.lr": "3e-4"})
    assert cfg.train.lr == 3e-4  # override beats file
    assert cfg.train.batch_size == 7  # file beats default
    assert cfg.model.embed_dim == 48
    assert cfg.train.max_steps == 1000  # default
    assert cfg.name == "run"


def test_configs_are_frozen(tmp_path):
    cfg = load_config()
    with pytest.raises(AttributeError):
        cfg.train.lr = 1.0


def test_int_in_toml_is_accepted_for_float(tmp_path):
    assert load_config(write(tmp_path, "[train]\nlr = 1\n")).train.lr == 1.0


@pytest.mark.parametrize("text,message", [
    ("[trian]\nlr = 1e-3\n", r"unknown section \[trian\].*did you mean 'train'"),
    ("[train]\nlrr = 1e-3\n", r"unknown key 'train.lrr' \(did you mean 'lr'\?\); valid keys"),
    ("[train]\nbatch_size = \"big\"\n", r"train.batch_size must be int, got str 'big'"),
    ("[train]\nbatch_size = 3.5\n", r"train.batch_size must be int, got float"),
    ("[train]\ncompile = 1\n", r"train.compile must be bool, got int"),
    ("[model]\npos_encoding = \"alibi\"\n", r"model.pos_encoding must be one of \['sinusoidal'"),
    ("[model]\nvocab_size = 100\n", r"model.vocab_size is set from the tokenizer"),
    ("[model]\nembed_dim = 30\nnum_heads = 4\n", r"divisible by model.num_heads"),
    ("[train]\nbatch_size = 0\n", r"train.batch_size must be > 0"),
    ("[data]\nval_fraction = 1.5\n", r"data.val_fraction must be in \(0, 1\)"),
    ("train = 3\n", r"\[train\] must be a table"),
    ("[train\nlr = 1\n", r"is not valid TOML"),
    ('[data]\npath = "a\\u0000b"\n', r"data.path cannot be a file name: it holds a NUL"),
    ('[train]\nout_dir = "runs\\u0000"\n', r"train.out_dir cannot be a file name: it holds a NUL"),
    (f'[data]\ncache_dir = "{"c" * 300}"\n', r"data.cache_dir cannot be a file name: it is longer"),
])
def test_bad_config_files_fail_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("key,value,message", [
    ("train.lr", "fast", r"train.lr must be float, got 'fast'"),
    ("train.compile", "maybe", r"train.compile must be true or false"),
    ("train.target_val_loss", "-1", r"train.target_val_loss must be >= 0"),
    ("model.norm_placement", "mid", r"must be one of \['pre', 'post'\]"),
    ("nosection.x", "1", r"unknown section 'nosection'"),
    ("train", "1", r"unknown key 'train'; valid keys in \[train\]"),
    ("train.seq_len", "-8", r"train.seq_len must be >= 0"),
    ("train.seq_len", "129", r"train.seq_len \(129\) must not exceed model.context_length \(128\)"),
    ("train.seq_len", "64", r"needs model.pos_encoding rope or none: the learned positions past 64"),
])
def test_bad_overrides_fail_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, {key: value})


def test_overrides_convert_by_declared_type():
    cfg = load_config(None, {"train.compile": "true", "train.max_steps": "12",
                             "model.dropout": "0.25", "data.tokenizer": "char"})
    assert cfg.train.compile is True and cfg.train.max_steps == 12
    assert cfg.model.dropout == 0.25 and cfg.data.tokenizer == "char"


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file nowhere.toml not found"):
        load_config("nowhere.toml")


def test_config_values_are_data_never_code(tmp_path):
    """Values that Python would evaluate (to run a command, or to compute a number) are refused or
    kept as plain text, from the command line and from TOML alike."""
    marker = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {marker}')"
    for key, text in [("train.lr", f"{payload} or 1e-3"), ("train.max_steps", "10 * 10"),
                      ("train.compile", f"{payload} == 0"), ("model.embed_dim", "2 ** 7")]:
        with pytest.raises(ConfigError, match=key):
            load_config(None, {key: text})
    with pytest.raises(ConfigError, match="train.lr must be float"):
        load_config(write(tmp_path, '[train]\nlr = "2 * 1e-3"\n'))
    cfg = load_config(write(tmp_path, f'[train]\nsample_prompt = "{payload}"\n'),
                      {"data.path": payload})
    assert cfg.train.sample_prompt == payload and cfg.data.path == payload
    assert not marker.exists()


def test_describe_keys_lists_every_key_with_help():
    rows = {key: (default, text) for key, default, text in describe_keys()}
    assert rows["train.lr"][0] == "0.001" and rows["train.lr"][1]
    assert "model.vocab_size" not in rows
    assert all(text for _, text in rows.values())
    # written as in TOML, and a key with a fixed set of values lists them
    assert rows["model.tie_weights"][0] == "true" and rows["model.pos_encoding"][0] == '"learned"'
    assert rows["data.tokenizer"][1].endswith("one of: char, word, bpe")
    assert rows["train.precision"][1].endswith("one of: auto, fp32, bf16, fp16")


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_explain_themselves(path):
    """Each config opens with a comment of at least 20 words, before its first setting, that
    names the data set it trains on and says what a run costs or gives (a time, steps, a loss)."""
    cfg = load_config(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    header = " ".join(line.lstrip("#").strip()
                      for line in itertools.takewhile(lambda line: line.startswith("#"), lines))
    assert len(re.findall(r"[A-Za-z][A-Za-z'-]+", header)) >= 20, f"no header to speak of: {header!r}"
    assert cfg.data.dataset in header.lower(), f"the header does not name {cfg.data.dataset!r}"
    assert re.search(r"\b(loss|val \d|minutes?|\d+ s|steps)\b", header), "no cost or outcome"


def test_required_configs_exist():
    names = {p.stem for p in (ROOT / "configs").glob("*.toml")}
    assert {"default", "seed_demo", "shakespeare_char", "shakespeare_char_cpu"} <= names


def test_to_dict_round_trips():
    from minigpt.config import build_config

    cfg = load_config(None, {"train.lr": "0.005"})
    values = cfg.to_dict()
    values["model"].pop("vocab_size")
    assert build_config(values) == cfg


def test_training_sequences_are_the_context_unless_train_seq_len_says_shorter():
    assert load_config(None, {"model.context_length": "64"}).train_window == 64
    cfg = load_config(None, {"model.context_length": "64", "model.pos_encoding": "rope",
                             "train.seq_len": "32"})
    assert cfg.train_window == 32 and cfg.model.context_length == 64


def test_fine_tuning_checks_train_seq_len_against_the_weights_model_not_the_default_one():
    cfg = load_config(None, {"train.init_from": "run.pt", "train.seq_len": "256"})  # 128 default
    with pytest.raises(ConfigError, match=r"must not exceed model.context_length \(128\)"):
        cfg.check_train_window(pretrained=True)
    cfg = load_config(None, {"train.init_from": "run.pt", "train.seq_len": "64"})
    cfg.check_train_window(pretrained=True)  # learned positions, but trained before: allowed
    with pytest.raises(ConfigError, match="learned positions past 64"):
        cfg.check_train_window()
