"""Checkpoint loading: clear errors for missing, damaged, foreign, newer and hostile files."""

import os
import pickle

import pytest
import torch
from conftest import run_config

from minigpt import checkpoint
from minigpt.checkpoint import (
    CheckpointError,
    latest_run,
    load,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from minigpt.training import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("trained")
    result = train(run_config(tmp_path), progress=False)
    return result.run_dir


def test_run_directory_resolves_to_best_checkpoint(trained):
    model, tokenizer = load(trained)
    assert model.config.vocab_size == tokenizer.vocab_size
    assert not model.training


def test_latest_run_picks_the_newest(trained, tmp_path):
    assert latest_run(trained.parent) == trained
    for nowhere in ("r" * 300, "runs\0"):  # a runs folder that cannot exist holds no run
        with pytest.raises(CheckpointError, match="no trained run found"):
            latest_run(nowhere)
    with pytest.raises(CheckpointError, match="no trained run found"):
        latest_run(tmp_path)


def test_missing_file_and_empty_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing.pt")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_checkpoint(tmp_path)


def test_truncated_file(trained, tmp_path):
    data = (trained / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")


def test_random_bytes_and_text(tmp_path):
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 10)
    (tmp_path / "text.pt").write_text("hello")
    for name in ("noise.pt", "text.pt"):
        with pytest.raises(CheckpointError, match="(truncated|damaged) or not a checkpoint"):
            load_checkpoint(tmp_path / name)


def test_foreign_torch_file(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a minigpt checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_newer_format_version(trained, tmp_path):
    state = load_checkpoint(trained / "last.pt")
    state["version"] = 99
    torch.save(state, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format version 99, newer than"):
        load_checkpoint(tmp_path / "future.pt")


@pytest.mark.parametrize("key,value,message", [
    ("version", "2", r"no valid format version \('2'\); the file is damaged"),
    ("version", -5, r"no valid format version \(-5\)"),
    ("version", True, r"no valid format version \(True\)"),
    ("model", [1, 2], r"holds no weights \(its 'model' is a list, not a dict of tensors\)"),
    ("model", None, r"holds no weights \(its 'model' is a NoneType"),
])
def test_damaged_fields_are_named(trained, tmp_path, key, value, message):
    state = load_checkpoint(trained / "last.pt")
    state[key] = value
    torch.save(state, tmp_path / "damaged.pt")
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "damaged.pt")


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": "minigpt", "version": 1, "model": Exploit(marker)}, tmp_path / "evil.pt")
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump(Exploit(marker), f)
    with pytest.raises(CheckpointError, match="refused: it holds objects .* could run code"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "evil.pkl")
    assert not marker.exists()


class RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_a_command_is_refused_as_such(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": "minigpt", "version": 2, "model": RunsCommand(marker)},
               tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(tmp_path / "evil.pt")
    message = str(refused.value)
    assert "could run code" in message and "damaged" not in message
    assert "touch" not in message  # nothing of the file's contents is echoed
    assert not marker.exists()


def test_non_finite_weights_are_refused(trained):
    state = load_checkpoint(trained / "last.pt")
    state["model"]["blocks.0.ffn.fc.weight"][0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"NaN or infinite values \(blocks.0.ffn.fc.weight\)"):
        model_from_checkpoint(state)


def test_weights_of_the_wrong_shape(trained, tmp_path):
    state = load_checkpoint(trained / "last.pt")
    state["model"]["blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match="do not fit its own model config.*qkv"):
        model_from_checkpoint(state)


def test_tokenizer_that_does_not_match_the_embedding(trained):
    state = load_checkpoint(trained / "last.pt")
    state["tokenizer"] = {"kind": "char", "chars": "abc"}
    with pytest.raises(CheckpointError, match="tokenizer has 3 tokens but its model expects"):
        model_from_checkpoint(state)


def test_absurd_model_config_is_refused_before_allocating(trained):
    state = load_checkpoint(trained / "last.pt")
    state["model_config"] = {**state["model_config"], "embed_dim": 2**20, "num_layers": 1000}
    with pytest.raises(CheckpointError, match="parameters, more than minigpt loads"):
        model_from_checkpoint(state)


def test_a_save_that_dies_half_way_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(1)}, "model_config": {}, "tokenizer": {}})
    before = path.read_bytes()

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(before[: len(before) // 2])  # as far as a killed process might have got
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"model": {"w": torch.zeros(1)}, "model_config": {}, "tokenizer": {}})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["x.pt"]
    monkeypatch.undo()
    save_checkpoint(path, {"model": {"w": torch.full((1,), 2.0)}, "model_config": {},
                           "tokenizer": {}})
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]
    assert load_checkpoint(path)["model"]["w"].item() == 2.0
