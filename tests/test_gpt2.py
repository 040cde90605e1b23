"""GPT-2 in and out, offline: small random GPT-2 models made with transformers go into minigpt and
back with the same logits, and minigpt's BPE gives the reference GPT-2 tokenizer's ids."""

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import run_config
from torch.testing import assert_close

from minigpt import checkpoint, export, gpt2
from minigpt.checkpoint import load
from minigpt.config import load_config
from minigpt.corpus import load_corpus
from minigpt.data import prepare_data
from minigpt.errors import CheckpointError, ConfigError
from minigpt.evaluation import split_loss
from minigpt.generation import generate
from minigpt.gpt2 import bytes_to_unicode, export_gpt2, load_gpt2
from minigpt.inspection import inspect_prompt
from minigpt.model import GPT, ModelConfig
from minigpt.resume import init_config
from minigpt.runtime import Runtime
from minigpt.tokenizer import BPETokenizer, CharTokenizer
from minigpt.training import train

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parent.parent
UNICODE_TEXT = ("Héllo wörld! It's 2026… 東京タワーは333m。 Ελληνικά, русский, العربية, हिन्दी "
                "😀👍🏽 ½ Ⅻ ²\t\n\n  don't WE'LL they've I'm you'd  ‘quotes’ «guillemets» "
                "naïve café—dash 3.14159 1,000,000 $5 #tag @user e-mail_address x²+y² ≤ z")


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(load_corpus() + UNICODE_TEXT, 320)


def write_tokenizer_files(tokenizer: BPETokenizer, directory: Path, end_of_text: bool = True):
    """GPT-2's vocab.json and merges.txt for tokenizer, plus <|endoftext|> as real GPT-2 has."""
    stand_in = bytes_to_unicode()
    spell = ["".join(stand_in[b] for b in t) for t in tokenizer.token_bytes]
    vocab = {s: i for i, s in enumerate(spell)}
    if end_of_text:
        vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{spell[a]} {spell[b]}\n" for a, b in tokenizer.merges),
        encoding="utf-8")


def make_hf_gpt2(directory: Path, tokenizer: BPETokenizer, safe: bool = True, **options):
    """A small random GPT-2 saved by transformers, with tokenizer files: what a downloaded GPT-2
    directory looks like."""
    torch.manual_seed(0)
    end = tokenizer.vocab_size  # <|endoftext|>
    config = transformers.GPT2Config(**{"vocab_size": end + 1, "n_positions": 64, "n_embd": 32,
                                        "n_layer": 2, "n_head": 4, "bos_token_id": end,
                                        "eos_token_id": end, **options})
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(directory, safe_serialization=safe)
    write_tokenizer_files(tokenizer, directory)
    return model


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pytorch_model.bin"])
def test_an_imported_gpt2_gives_transformers_logits(tmp_path, bpe, safe):
    reference = make_hf_gpt2(tmp_path, bpe, safe)
    model, tokenizer = load_gpt2(tmp_path)
    assert model.config.activation == "gelu_tanh" and model.config.tie_weights
    ids = torch.randint(0, bpe.vocab_size + 1, (3, 40))
    with torch.no_grad():
        assert_close(model(ids), reference(ids).logits, atol=1e-5, rtol=1e-5)
    assert tokenizer.vocab_size == bpe.vocab_size + 1
    assert tokenizer.special == {"<|endoftext|>": bpe.vocab_size}


def test_minigpt_bpe_gives_the_reference_gpt2_tokenizers_ids(tmp_path, bpe):
    write_tokenizer_files(bpe, tmp_path)
    reference = transformers.GPT2Tokenizer(str(tmp_path / "vocab.json"),
                                           str(tmp_path / "merges.txt"))
    ours = load_gpt2.__globals__["gpt2_tokenizer"](tmp_path)
    for text in (UNICODE_TEXT, load_corpus()[:3000], "  leading spaces\r\nand\tTabs  ", ""):
        ids = ours.encode(text)
        assert ids == reference.encode(text)
        assert ours.decode(ids) == text
    assert ours.encode(UNICODE_TEXT) == bpe.encode(UNICODE_TEXT)  # the same tokenizer, renumbered


def test_an_exported_run_loads_in_transformers_with_the_same_logits_and_ids(tmp_path, capsys):
    options = {"data.tokenizer": "bpe", "data.bpe_vocab_size": "300", "model.activation":
               "gelu_tanh", "train.max_steps": "6"}
    run_dir = train(run_config(tmp_path, **options), progress=False).run_dir
    out = tmp_path / "exported"
    assert export.main([str(run_dir), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    ours, tokenizer = load(run_dir)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    ids = torch.tensor([tokenizer.encode("the cat sat on the mat. " + UNICODE_TEXT)[:16]])
    with torch.no_grad():
        assert_close(theirs(ids).logits, ours(ids), atol=1e-5, rtol=1e-5)
    reference = transformers.AutoTokenizer.from_pretrained(out, use_fast=False)
    assert reference.encode(UNICODE_TEXT) == tokenizer.encode(UNICODE_TEXT)
    prompt = ids[:, :8]  # and 8 new tokens: the 16 positions of the model
    greedy = theirs.generate(prompt, max_new_tokens=8, do_sample=False)
    assert greedy[0].tolist() == generate(ours, prompt, 8, temperature=0)[0].tolist()
    again, _ = load_gpt2(out)  # and back into minigpt
    assert_close(again(ids), ours(ids))


@pytest.mark.parametrize("options,named", [
    ({"pos_encoding": "rope"}, "rope positions"),
    ({"norm_placement": "post"}, "post-norm"),
    ({"tie_weights": False}, "untied output head"),
    ({"residual": False}, "ablation switch"),
    ({"activation": "relu2"}, "ReLU-squared"),
    ({"qk_norm": True}, "qk_norm"),
    ({"logit_softcap": 15.0}, "logit_softcap"),
    ({"short_conv": 4}, "short_conv"),
])
def test_export_refuses_what_gpt2_cannot_express(tmp_path, bpe, options, named):
    model = GPT(ModelConfig(vocab_size=bpe.vocab_size, context_length=16, embed_dim=32,
                            num_heads=4, num_layers=1, **options))
    with pytest.raises(CheckpointError, match=named):
        export_gpt2(model, bpe, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_refuses_other_tokenizers_and_a_used_directory(tmp_path, bpe):
    cfg = ModelConfig(vocab_size=bpe.vocab_size, context_length=16, embed_dim=32, num_heads=4,
                      num_layers=1)
    char = CharTokenizer("abc")
    with pytest.raises(CheckpointError, match="a char tokenizer"):
        export_gpt2(GPT(ModelConfig(**{**cfg.__dict__, "vocab_size": 3})), char, tmp_path / "a")
    old = BPETokenizer(bpe.merges, "minigpt")
    with pytest.raises(CheckpointError, match="splits text otherwise"):
        export_gpt2(GPT(cfg), old, tmp_path / "b")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not an empty directory"):
        export_gpt2(GPT(cfg), bpe, tmp_path / "used")
    assert (tmp_path / "used" / "keep.txt").read_text() == "mine"


def damage(directory: Path, how: str) -> None:
    if how == "no weights":
        (directory / "model.safetensors").unlink()
    elif how == "truncated weights":
        (directory / "model.safetensors").write_bytes(b"\x00" * 20)
    elif how == "not gpt2":
        (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))
    elif how == "variant":
        values = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps(
            {**values, "scale_attn_by_inverse_layer_idx": True}))
    elif how == "no merges":
        (directory / "merges.txt").unlink()
    elif how == "merges of another vocabulary":
        (directory / "merges.txt").write_text("#version: 0.2\nzz qq\n")


@pytest.mark.parametrize("how,message", [
    ("no weights", "not a Hugging Face model directory"),
    ("truncated weights", "damaged or not a weights file"),
    ("not gpt2", "imports GPT-2 models only"),
    ("variant", "scale_attn_by_inverse_layer_idx"),
    ("no merges", "merges.txt"),
    ("merges of another vocabulary", "do not fit together"),
])
def test_a_bad_gpt2_directory_is_one_clear_line(tmp_path, bpe, how, message):
    make_hf_gpt2(tmp_path, bpe)
    damage(tmp_path, how)
    with pytest.raises(CheckpointError, match=message):
        load_gpt2(tmp_path)
    if how == "truncated weights":  # and through the command line: one line, exit 1
        result = subprocess.run([sys.executable, str(ROOT / "generate.py"), "--checkpoint",
                                 str(tmp_path), "--prompt", "the"], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 1 and result.stderr.count("\n") == 1
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


@pytest.mark.slow  # real processes (python train.py, generate.py) or a whole app run
def test_generate_the_app_and_inspection_accept_a_gpt2_directory(tmp_path, bpe, monkeypatch):
    make_hf_gpt2(tmp_path / "gpt2", bpe)
    result = subprocess.run([sys.executable, str(ROOT / "generate.py"), "--checkpoint",
                             str(tmp_path / "gpt2"), "--prompt", "the cat", "--max-new-tokens",
                             "5", "--seed", "1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("the cat")
    model, tokenizer = load(tmp_path / "gpt2")
    seen = inspect_prompt(model, tokenizer, "the cat sat")
    assert len(seen.attentions) == 2 and seen.attentions[0].shape[0] == 4
    AppTest = pytest.importorskip("streamlit.testing.v1").AppTest
    import streamlit

    streamlit.cache_resource.clear()
    monkeypatch.setenv("MINIGPT_RUNS", str(tmp_path / "no-runs"))
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    app.run()
    app.text_input(key="checkpoint").input(str(tmp_path / "gpt2")).run()
    assert not app.exception and not app.error
    assert any("gelu" in c.value or "parameters" in c.value for c in app.sidebar.caption)


def test_a_hub_name_offline_is_one_clear_line(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError,
                       match="huggingface-cli download gpt2 config.json .* --local-dir DIR"):
        load("gpt2")


def test_fine_tuning_starts_from_the_checkpoints_loss(tmp_path):
    source = train(run_config(tmp_path, **{"train.max_steps": "60", "train.lr": "3e-3",
                                           "train.run_name": "source"}), progress=False)
    text = tmp_path / "other.txt"  # another text in the same vocabulary
    text.write_text("the dog sat on the mat . the cat ran to the park .\n" * 200)
    cfg = init_config(run_config(tmp_path, **{
        "data.path": str(text), "train.init_from": str(source.run_dir), "train.max_steps": "3",
        "train.run_name": "tuned", "train.eval_interval": "3", "train.batch_size": "8"}))
    assert cfg.model == replace(source.model.config, vocab_size=None)
    data = prepare_data(cfg.data, cfg.model.context_length, load(source.run_dir)[1])
    expected = split_loss(source.model, data.train, 8, Runtime(torch.device("cpu")))
    tuned = train(cfg, progress=False)
    assert abs(tuned.losses[0] - expected) < 0.5
    uniform = math.log(source.model.config.vocab_size)  # where a fresh model starts
    assert tuned.losses[0] < uniform - 1.0
    saved = json.loads((tuned.run_dir / "config.json").read_text())
    assert saved["train"]["init_from"] == str(source.run_dir)
    resumed = train(replace(cfg, train=replace(cfg.train, max_steps=4)), resume=tuned.run_dir,
                    progress=False)
    assert resumed.step == 4  # the fine-tuned run resumes, encoding text with its own tokenizer


def test_describe_gives_what_load_gives_without_the_weights(tmp_path, bpe, monkeypatch):
    make_hf_gpt2(tmp_path / "gpt2", bpe)
    model, tokenizer = load(tmp_path / "gpt2")
    run = train(run_config(tmp_path, **{"train.max_steps": "1"}), progress=False)
    run_model, run_tokenizer = load(run.run_dir)

    def no_weights(*args, **kwargs):
        raise AssertionError("describe built a model or read GPT-2 weights")
    monkeypatch.setattr(checkpoint.GPT, "__init__", no_weights)
    monkeypatch.setattr(gpt2, "read_weights", no_weights)
    for source, expected, words in ((tmp_path / "gpt2", (model, tokenizer), UNICODE_TEXT),
                                    (run.run_dir, (run_model, run_tokenizer), "the cat sat")):
        cfg, described = checkpoint.describe(source)
        assert cfg == expected[0].config
        assert described.encode(words) == expected[1].encode(words)


def test_fine_tuning_refuses_model_keys_the_weights_do_not_fit(tmp_path, bpe):
    make_hf_gpt2(tmp_path / "gpt2", bpe)
    for key, value in (("model.embed_dim", "64"), ("model.context_length", "128"),
                       ("model.pos_encoding", "rope")):
        cfg = load_config(None, {"train.init_from": str(tmp_path / "gpt2"), key: value})
        with pytest.raises(ConfigError, match=f"{key} = .* does not fit the weights"):
            init_config(cfg, [key])
    shorter = init_config(load_config(None, {"train.init_from": str(tmp_path / "gpt2"),
                                             "model.context_length": "32"}),
                          ["model.context_length"])
    assert shorter.model.context_length == 32 and shorter.data.tokenizer == "bpe"


@pytest.mark.slow  # real processes (python train.py, generate.py) or a whole app run
def test_the_finetune_config_runs_from_a_gpt2_directory(tmp_path, bpe):
    make_hf_gpt2(tmp_path / "gpt2", bpe, n_positions=256)
    text = tmp_path / "plays.txt"
    text.write_text("ROMEO: the cat sat on the mat.\nJULIET: the dog ran.\n" * 300)
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--config",
         str(ROOT / "configs" / "finetune_shakespeare.toml"), "--init-from", str(tmp_path / "gpt2"),
         "--data.path", str(text), "--train.max_steps", "2", "--train.eval_interval", "2",
         "--train.batch_size", "1", "--train.grad_accum", "1", "--train.out_dir",
         str(tmp_path / "runs"), "--train.device", "cpu", "--quiet"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "best val loss" in result.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    model, tokenizer = load(run_dir)
    assert model.config.context_length == 256 and tokenizer.vocab_size == bpe.vocab_size + 1
