"""Checkpoint loading: clear errors for missing, damaged, foreign, newer and hostile files."""

import os
import pickle
import shutil

import pytest
import torch
from conftest import run_config
from torch.testing import assert_close

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


def test_run_directory_resolves_to_best_checkpoint(trained, tmp_path):
    """A run directory loads best.pt even where last.pt is later and newer on disk (best at step
    4, last at step 8, with other weights); without best.pt it falls back to last.pt."""
    state = load_checkpoint(trained / "last.pt")
    best = {**state, "step": 4,
            "model": {k: v + 1 if v.is_floating_point() else v for k, v in state["model"].items()}}
    last = {**state, "step": 8}
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "best.pt", best)
    save_checkpoint(run / "last.pt", last)
    os.utime(run / "best.pt", (1_000_000, 1_000_000))  # best.pt is the older file
    assert load_checkpoint(run)["step"] == 4
    model, tokenizer = load(run)
    assert_close(model.state_dict(), best["model"], rtol=0, atol=0)
    assert model.config.vocab_size == tokenizer.vocab_size
    assert not model.training
    (run / "best.pt").unlink()
    assert load_checkpoint(run)["step"] == 8


def test_latest_run_picks_the_newest(trained, tmp_path):
    """Newest by the time its checkpoints were written, not by name: b-run was written last,
    c-run (last by name) first; a folder without a checkpoint is not a run."""
    written = {"a-run": 2_000_000, "b-run": 3_000_000, "c-run": 1_000_000}
    for name, when in written.items():
        (tmp_path / name).mkdir()
        shutil.copy(trained / "last.pt", tmp_path / name / "last.pt")
        os.utime(tmp_path / name / "last.pt", (when, when))
    (tmp_path / "d-unstarted").mkdir()  # newest folder, no checkpoint
    (tmp_path / "d-unstarted" / "config.json").write_text("{}")
    assert latest_run(tmp_path) == tmp_path / "b-run"
    os.utime(tmp_path / "c-run" / "last.pt", (4_000_000, 4_000_000))  # c-run saves again
    assert latest_run(tmp_path) == tmp_path / "c-run"
    (tmp_path / "a-run" / "best.pt").write_bytes((trained / "last.pt").read_bytes())  # now
    assert latest_run(tmp_path) == tmp_path / "a-run"  # its newest file counts, whichever it is


def test_a_folder_without_runs_has_no_latest_run(tmp_path):
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
