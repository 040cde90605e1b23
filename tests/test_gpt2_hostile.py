"""GPT-2 directories from strangers (minigpt.gpt2): sizes that would need terabytes, weights that do
not fit, lying safetensors headers, pickled code, broken tokenizer files and symlinks out of the
directory are each one CheckpointError, before anything large is allocated and without running
anything; an export is written whole or not at all."""

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from minigpt import GPT
from minigpt.checkpoint import load
from minigpt.cli import run_cli
from minigpt.errors import CheckpointError
from minigpt.gpt2 import export_gpt2, hf_state_dict, load_gpt2
from minigpt.tokenizer import train_tokenizer

pytest.importorskip("safetensors")
from safetensors.torch import save_file  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A small GPT-2 directory as minigpt exports it."""
    tokenizer = train_tokenizer("bpe", "the cat sat on the mat. a dog ran. " * 40, 270)
    model = GPT(tiny_config(vocab_size=tokenizer.vocab_size, bias=True, tie_weights=True,
                            pos_encoding="learned", activation="gelu_tanh"))
    return export_gpt2(model, tokenizer, tmp_path_factory.mktemp("gpt2") / "model")


@pytest.fixture
def stranger(exported, tmp_path) -> Path:
    """A copy of the exported directory to damage."""
    directory = tmp_path / "stranger"
    directory.mkdir()
    for path in exported.iterdir():
        (directory / path.name).write_bytes(path.read_bytes())
    return directory


def edit_config(directory: Path, **values) -> None:
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **values}))


def test_the_untouched_directory_loads(stranger):
    model, tokenizer = load_gpt2(stranger)
    assert model.config.vocab_size >= tokenizer.vocab_size


@pytest.mark.parametrize("sizes", [{"n_embd": 10**9, "n_inner": None}, {"vocab_size": 10**12},
                                   {"n_layer": 10**7}, {"n_positions": 10**13}])
def test_sizes_that_need_terabytes_are_refused_before_allocating(stranger, sizes):
    edit_config(stranger, **sizes)
    with pytest.raises(CheckpointError, match=r"describes a model of [\d,]+ parameters, which "
                                              r"needs about [\d,.]+ GiB"):
        load_gpt2(stranger)


@pytest.mark.parametrize("value", ["768", 1.5, True, 0, -4, None, [32]])
def test_sizes_of_the_wrong_type_are_refused(stranger, value):
    edit_config(stranger, n_embd=value)
    with pytest.raises(CheckpointError, match="n_embd must be a positive integer"):
        load_gpt2(stranger)


def test_n_inner_zero_is_refused_not_divided_by(stranger):
    edit_config(stranger, n_inner=0)
    with pytest.raises(CheckpointError, match="n_inner must be a positive integer"):
        load_gpt2(stranger)


def test_weights_of_another_shape_are_refused(stranger):
    edit_config(stranger, n_embd=64)
    with pytest.raises(CheckpointError, match=r"has shape \[\d+, 32\] but config.json's model "
                                              r"needs \[\d+, 64\]"):
        load_gpt2(stranger)


def weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors")


def test_weights_of_an_integer_dtype_are_refused(stranger):
    state = weights(stranger)
    state["transformer.wte.weight"] = state["transformer.wte.weight"].to(torch.int32)
    save_file(state, stranger / "model.safetensors")
    with pytest.raises(CheckpointError, match="wte.weight holds I32 values, not floating-point"):
        load_gpt2(stranger)


def test_missing_weights_are_refused(stranger):
    state = weights(stranger)
    del state["transformer.h.1.mlp.c_fc.weight"]
    save_file(state, stranger / "model.safetensors")
    with pytest.raises(CheckpointError, match="lacks transformer.h.1.mlp.c_fc.weight"):
        load_gpt2(stranger)


@pytest.mark.parametrize("lie", ["header longer than the file", "offsets past the end",
                                 "not JSON"])
def test_a_safetensors_header_that_lies_is_refused(stranger, lie):
    path = stranger / "model.safetensors"
    blob = path.read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + length])
    if lie == "header longer than the file":
        blob = struct.pack("<Q", 2**62) + blob[8:]
    elif lie == "offsets past the end":
        name = next(k for k in header if k != "__metadata__")
        header[name]["data_offsets"][1] += 10**12
        text = json.dumps(header).encode()
        blob = struct.pack("<Q", len(text)) + text + blob[8 + length:]
    else:
        blob = blob[:8] + b"{" * length + blob[8 + length:]
    path.write_bytes(blob)
    with pytest.raises(CheckpointError, match="is damaged or not a weights file"):
        load_gpt2(stranger)


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_payload_in_pytorch_model_bin_is_refused_and_never_run(stranger, tmp_path):
    state = weights(stranger)
    marker = tmp_path / "the payload ran"
    torch.save({**state, "extra": Payload(marker)}, stranger / "pytorch_model.bin")
    (stranger / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="was refused: it holds objects other than tensors"):
        load_gpt2(stranger)
    assert not marker.exists()


def test_pytorch_model_bin_with_the_right_tensors_loads(stranger):
    torch.save(weights(stranger), stranger / "pytorch_model.bin")
    (stranger / "model.safetensors").unlink()
    model, _ = load_gpt2(stranger)
    assert model.config.embed_dim == 32


@pytest.mark.parametrize("damage,message", [
    ("no vocab.json", "vocab.json is missing or not a regular file"),
    ("no merges.txt", "merges.txt is missing or not a regular file"),
    ("ids with a gap", "vocab.json must map each token to one id of 0..N-1"),
    ("a huge id", "vocab.json must map each token to one id of 0..N-1"),
    ("a merge of unknown tokens", "vocab.json and merges.txt do not fit together"),
])
def test_missing_or_mismatched_tokenizer_files_are_refused(stranger, damage, message):
    vocab = json.loads((stranger / "vocab.json").read_text(encoding="utf-8"))
    if damage == "no vocab.json":
        (stranger / "vocab.json").unlink()
    elif damage == "no merges.txt":
        (stranger / "merges.txt").unlink()
    elif damage in ("ids with a gap", "a huge id"):
        token = next(iter(vocab))
        vocab[token] = len(vocab) + 5 if damage == "ids with a gap" else 10**12
        (stranger / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    else:
        with open(stranger / "merges.txt", "a", encoding="utf-8") as f:
            f.write("zzzq qqqz\n")
    with pytest.raises(CheckpointError, match=message):
        load_gpt2(stranger)


@pytest.mark.parametrize("name", ["config.json", "vocab.json", "merges.txt",
                                  "model.safetensors"])
def test_a_symlink_out_of_the_directory_is_refused(stranger, tmp_path, name):
    outside = tmp_path / f"outside-{name}"
    outside.write_bytes((stranger / name).read_bytes())
    (stranger / name).unlink()
    (stranger / name).symlink_to(outside)
    with pytest.raises(CheckpointError, match=f"{name} points outside"):
        load_gpt2(stranger)


def test_a_symlink_to_a_device_is_refused_not_read(stranger):
    (stranger / "vocab.json").unlink()
    (stranger / "vocab.json").symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match="points outside"):
        load_gpt2(stranger)


def script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("command", ["generate", "train"])
def test_the_command_lines_say_it_in_one_line(stranger, tmp_path, capsys, command):
    edit_config(stranger, n_embd=10**9, n_inner=None)
    argv = (["--checkpoint", str(stranger), "--max-new-tokens", "1"] if command == "generate"
            else ["--init-from", str(stranger), "--train.out_dir", str(tmp_path / "runs")])
    with pytest.raises(SystemExit) as ended:
        run_cli(lambda: script(command).main(argv))
    err = capsys.readouterr().err.strip()
    assert ended.value.code == 1 and len(err.splitlines()) == 1, err
    assert "parameters, which needs about" in err and not (tmp_path / "runs").exists()


def test_export_refuses_a_non_empty_directory_and_replaces_an_empty_one(exported, tmp_path):
    model, tokenizer = load(exported)
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="already exists and is not an empty directory"):
        export_gpt2(model, tokenizer, full)
    assert [p.name for p in full.iterdir()] == ["mine.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    export_gpt2(model, tokenizer, empty)
    assert {p.name for p in empty.iterdir()} >= {"config.json", "model.safetensors"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_export_into_a_read_only_file_system_writes_nothing(exported, tmp_path):
    model, tokenizer = load(exported)
    disk = tmp_path / "ro"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({mounted.stderr.strip()}); CI is root")
    try:
        with pytest.raises(CheckpointError, match="cannot write .*: Read-only file system; "
                                                  "choose a writable output directory"):
            export_gpt2(model, tokenizer, disk / "gpt2")
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


def test_hf_state_dict_names_match_what_the_loader_expects(exported):
    """The export and the import agree on every tensor (the loader's check uses the names)."""
    model, _ = load(exported)
    assert set(hf_state_dict(model)) == set(weights(exported))
