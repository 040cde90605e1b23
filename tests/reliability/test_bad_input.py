"""Bad input tried at every entry point: each gives a specific error (API) or one clear line and a
non-zero exit (command line), never a traceback, and leaves existing runs untouched."""

import importlib.util
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt.checkpoint import CheckpointError, load
from minigpt.cli import run_cli
from minigpt.config import SECTIONS, ConfigError, build_config, load_config
from minigpt.tokenizer import (
    BPETokenizer,
    CharTokenizer,
    UnknownCharactersError,
    WordTokenizer,
    tokenizer_from_dict,
)
from minigpt.training import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import run_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATE = script("generate")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bad-input")
    return train(run_config(tmp_path, **{"data.tokenizer": "char"}), progress=False).run_dir


def snapshot(directory: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def run_generate(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: GENERATE.main(list(args)))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def generate_cases(tmp_path: Path, run_dir: Path) -> list[tuple[list[str], str]]:
    (tmp_path / "binary.pt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "prompt.bin").write_bytes(b"\xff\xfe\x00bad")
    (tmp_path / "empty_dir").mkdir()
    with open(tmp_path / "huge.txt", "wb") as f:  # sparse: 17 MiB of NULs, as /dev/zero would give
        f.truncate(17 * 2**20)
    ck = ["--checkpoint", str(run_dir), "--max-new-tokens", "3"]
    return [
        ([*ck, "--temperature", "-0.1"], "temperature must be a finite number >= 0"),
        ([*ck, "--temperature", "nan"], "temperature must be a finite number >= 0"),
        ([*ck, "--temperature", "inf"], "temperature must be a finite number >= 0"),
        ([*ck, "--top-p", "nan"], "top_p must be in (0, 1]"),
        ([*ck, "--max-new-tokens", "1000000000"], "max_new_tokens must be at most"),
        ([*ck, "--num-samples", "1000000"], "num_samples must be >= 1 and at most"),
        ([*ck, "--seed", "-1"], "seed must be in [0, 2**63)"),
        ([*ck, "--seed", str(2**70)], "seed must be in [0, 2**63)"),
        ([*ck, "--stop", ""], "a stop string must not be empty"),
        ([*ck, "--stop", "."], None),  # fine: to check the table's own harness, not an error
        ([*ck, "--top-p", "1.5"], "top_p must be in (0, 1]"),
        ([*ck, "--top-p", "0"], "top_p must be in (0, 1]"),
        ([*ck, "--top-k", "-3"], "top_k must be >= 0"),
        ([*ck, "--max-new-tokens", "-1"], "max_new_tokens must be >= 0"),
        ([*ck, "--num-samples", "0"], "num_samples must be >= 1"),
        ([*ck, "--temperature", "warm"], "invalid float value"),
        ([*ck, "--prompt", "Zebra \U0001F993 \x07\x1b[31m"], "not in the tokenizer's vocabulary"),
        ([*ck, "--prompt-file", str(tmp_path / "nope.txt")], "No such file"),
        ([*ck, "--prompt-file", str(tmp_path / "prompt.bin")], "is not UTF-8"),
        ([*ck, "--prompt-file", str(tmp_path)], "Is a directory"),
        ([*ck, "--prompt-file", str(tmp_path / "huge.txt")], "holds more than 16 MiB"),
        (["--checkpoint", str(tmp_path / "missing.pt")], "not found"),
        (["--checkpoint", str(tmp_path / "empty_dir")], "holds no checkpoint"),
        (["--checkpoint", str(tmp_path / "binary.pt")], "not a checkpoint"),
        (["--checkpoint", str(ROOT / "README.md")], "not a checkpoint"),
        ([*ck, "--device", "quantum"], "device"),
        (["--checkpoint", "b" * 300], "cannot be a checkpoint path: it is longer"),
        ([*ck, "--save-attention", "a" * 300 + ".png"], "cannot write"),
        ([*ck, "--temperature", "1e-300"], None),  # fine: all but greedy, no NaN
        ([*ck, "--top-p", "1e-300"], None),  # fine: the top token only
        ([*ck, "--prompt", "x", "--prompt-file", str(ROOT / "README.md")], "not both"),
        ([*ck, "--unknown-flag"], "unrecognized arguments"),
    ]


def test_generate_bad_input_table(trained, tmp_path, capsys):
    before = snapshot(trained)
    cases = generate_cases(tmp_path, trained)
    for args, message in cases:
        code, out, err = run_generate(capsys, *args)
        if message is None:
            assert code == 0 and out, (args, err)
            continue
        lines = err.strip().splitlines()
        assert code not in (0, None), args
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, err)
        assert message.lower() in lines[0].lower(), (args, lines[0])
    assert snapshot(trained) == before


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("prompt", ["the cat " * 130_000, "\x00\x01\x02", "the \U0001F408 sat",
                                    "\t\r\n", "é" * 10],
                         ids=["1MB", "control", "emoji", "whitespace", "accents"])
def test_odd_prompts_are_cropped_refused_or_dropped_cleanly(trained, capsys, prompt):
    code, out, err = run_generate(capsys, "--checkpoint", str(trained), "--prompt", prompt,
                                  "--max-new-tokens", "3", "--drop-unknown", "--seed", "0")
    assert "Traceback" not in err
    if code == 0:  # warnings, and the line saying which checkpoint it samples from
        assert all(line.startswith(("warning: ", "sampling from "))
                   for line in err.strip().splitlines() if line)
    else:
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")


def test_python_loader_errors_are_specific(tmp_path, trained):
    for path in (tmp_path / "missing", tmp_path, ROOT / "README.md"):
        with pytest.raises(CheckpointError):
            load(path)
    with pytest.raises(CheckpointError):
        load(None, out_dir=tmp_path)


def test_absurd_model_size_is_refused_up_front_with_the_estimate(tmp_path):
    cfg = run_config(tmp_path, **{"model.embed_dim": 65536, "model.num_heads": 1,
                                  "model.num_layers": 64})
    with pytest.raises(ConfigError, match=r"needs about [\d,.]+ GiB .* choose a smaller model"):
        train(cfg, progress=False)
    assert not (tmp_path / "runs").exists()


SETTABLE = {s: [f.name for f in __import__("dataclasses").fields(cls)] for s, cls in SECTIONS.items()}
values = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                   st.floats(allow_nan=True), st.text(max_size=20),
                   st.lists(st.integers(), max_size=3))
keys = st.one_of(st.sampled_from(sorted({k for ks in SETTABLE.values() for k in ks})),
                 st.text(max_size=12))
tables = st.dictionaries(st.one_of(st.sampled_from(list(SECTIONS)), st.text(max_size=8)),
                         st.one_of(st.dictionaries(keys, values, max_size=4), values), max_size=4)


@settings(max_examples=300, deadline=None)
@given(tables)
def test_fuzz_config_parser_raises_only_config_errors(data):
    try:
        build_config(data)
    except ConfigError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["train.lr", "train.max_steps", "model.embed_dim",
                                        "train.compile", "data.tokenizer", "model.dropout",
                                        "train.device", "x.y", "train.nope"]),
                       st.text(max_size=12), max_size=4))
def test_fuzz_command_line_overrides_raise_only_config_errors(overrides):
    try:
        load_config(None, overrides)
    except ConfigError:
        pass


CHAR = CharTokenizer.train("abcdefghijklmnopqrstuvwxyz .,\n")
WORD = WordTokenizer.train("the cat sat on the mat. the dog ran!")
BPE = BPETokenizer.train("the cat sat on the mat. the dog ran! " * 5, 300)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_fuzz_tokenizers(text):
    try:
        assert CHAR.decode(CHAR.encode(text)) == text
    except UnknownCharactersError as err:
        assert err.unknown and set(err.unknown) <= set(text)
    ids = WORD.encode(text)
    assert all(0 <= i < WORD.vocab_size for i in ids)
    WORD.decode(ids)
    assert BPE.decode(BPE.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-5, 400), max_size=20))
def test_fuzz_decode_of_arbitrary_ids(ids):
    for tokenizer in (CHAR, WORD, BPE):
        try:
            tokenizer.decode(ids)
        except ValueError as err:
            assert "outside the vocabulary" in str(err)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=6), st.one_of(values, st.dictionaries(
    st.text(max_size=4), values, max_size=2)), max_size=4))
def test_fuzz_saved_tokenizer_dicts(data):
    try:
        tokenizer_from_dict(data)
    except ValueError:
        pass


def test_tokenizer_dict_with_wrong_types_is_a_clear_error():
    with pytest.raises(ValueError):
        tokenizer_from_dict({"kind": "word", "words": 5})
    with pytest.raises(ValueError):
        tokenizer_from_dict({"kind": "bpe", "merges": [[1]]})


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_drop_unknown_echoes_the_prompt_the_model_saw(trained, capsys):
    code, out, err = run_generate(capsys, "--checkpoint", str(trained), "--prompt",
                                  "the \U0001F408 cat", "--max-new-tokens", "2", "--drop-unknown",
                                  "--seed", "0")
    assert code == 0, err
    assert out.startswith("the  cat") and "\U0001F408" not in out
