"""The benchmark harness runs end to end on tiny settings and reports consistent figures."""

import json
import shutil
import sys
from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from minigpt import bench, bench_gpt2, bench_train, speedrun
from minigpt.cli import run_cli
from minigpt.corpus import load_corpus
from minigpt.model import GPT
from minigpt.optim import make_optimizers
from minigpt.step import Trainer

ATEN = torch.ops.aten
# FlopCounterMode has no formula for the CPU flash-attention kernel; these use torch's own SDPA counts.
CPU_ATTENTION = {
    ATEN._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v),
    ATEN._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad, q, k, v),
}


def counted_flops(step) -> dict:
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        step()
    return {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}


def test_flops_per_token_matches_torchs_count_of_a_real_step():
    """GPT.flops_per_token against torch.utils.flop_counter on one Trainer.step: the weight
    matmuls exactly, and attention as 3 forward passes (torch counts the fused backward as 2.5,
    as the kernel recomputes the scores; the usual convention counts 2)."""
    for cfg, _batch_size in bench_train.MODELS.values():
        cfg = replace(cfg, context_length=32)  # the count does not depend on speed
        counts = counted_flops(bench_train.training_step(cfg, 2, "fused", torch.device("cpu")))
        attention = counts["aten._scaled_dot_product_flash_attention_for_cpu"]
        tokens = 2 * cfg.context_length
        assert counts["aten.mm"] + 3 * attention == GPT.flops_per_token(cfg) * tokens
        assert set(counts) == {"aten.mm", *map(str, CPU_ATTENTION)}


def test_floor_runs_exactly_the_matmuls_of_a_training_step():
    for cfg, _batch_size in bench_train.MODELS.values():
        cfg = replace(cfg, context_length=32)
        shapes = bench_train.step_matmuls(cfg, 2)
        # 3 per linear layer (forward, grad input, grad weight), 6 for attention, per layer
        assert len(shapes) == cfg.num_layers * (4 * 3 + 6) + 3
        counts = counted_flops(bench_train.matmul_floor_step(cfg, 2, torch.device("cpu")))
        assert counts == {"aten.bmm": GPT.flops_per_token(cfg) * 2 * cfg.context_length}
    row = bench_train.train_one("cpu_recipe", "floor", steps=2, device=torch.device("cpu"))
    assert row["variant"] == "floor" and row["timed_steps"] == 2 and row["ms_per_step"] > 0


def test_the_bench_times_the_step_train_runs(monkeypatch):
    """train_one calls Trainer.step, the function train() calls, and nothing else per step."""
    calls = []
    real_step = Trainer.step

    def counted(self, next_batch):
        calls.append(self)
        return real_step(self, next_batch)

    monkeypatch.setattr(Trainer, "step", counted)
    row = bench_train.train_one("cpu_recipe", "fused", steps=4, device=torch.device("cpu"))
    assert row["timed_steps"] == 4 and len(calls) == 3 + 4  # 3 warm-up steps, then the timed ones
    assert len(set(calls)) == 1 and row["ms_per_step"] > 0 and row["peak_memory_mb"] > 0


def test_generate_benchmark_and_report(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["generate", "--generate-model", "cpu_recipe", "--new-tokens", "4",
                "--batch-sizes", "1", "2", "--json", str(out)])
    report = json.loads(out.read_text())
    assert [r["batch_size"] for r in report["generate"]] == [1, 2]
    assert all(r["cached_exact"] > 0 and r["cached_fast"] > 0 and r["recompute"] > 0
               for r in report["generate"])
    printed = capsys.readouterr().out
    assert "cache exact" in printed and "cache fast" in printed and "recompute" in printed


@pytest.mark.slow  # four fresh processes, 20-30 s: .ci/run runs it after the default suite
def test_train_variants_run_in_rounds_and_report_medians(capsys, tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["train", "--models", "cpu_recipe", "--variants", "eager", "tuned", "--steps", "6",
                "--rounds", "2", "--device", "cpu", "--json", str(out)])
    rows = json.loads(out.read_text())["train"]
    assert [r["variant"] for r in rows] == ["eager", "tuned"]
    for row in rows:
        assert "error" not in row and len(row["rounds_ms_per_step"]) == 2
        assert min(row["rounds_ms_per_step"]) <= row["ms_per_step"] <= max(row["rounds_ms_per_step"])
    printed = capsys.readouterr().out
    assert "median of 2 rounds" in printed and "1.00x" in printed
    # The tuned variant keeps freed memory (glibc), so its steps stop page-faulting their
    # activations in anew: 0-50 faults a step against the eager baseline's 800-1,300 on an idle
    # VM. Memory reclaim on a busy one (DAMON runs here) faults pages back into both: one CI run
    # counted 102 against 357, so the test asks for a third, not a twentieth.
    if sys.platform.startswith("linux"):
        eager, tuned = (r["page_faults_per_step"] for r in rows)
        assert tuned <= max(50, eager / 3)


def muon_config(tmp_path):
    """A tiny Muon config on the embedded corpus, two micro-batches a step."""
    path = tmp_path / "tiny_muon.toml"
    path.write_text(f"""
[model]
context_length = 16
embed_dim = 32
num_heads = 2
num_layers = 2

[data]
dataset = "embedded"
tokenizer = "char"
cache_dir = "{(tmp_path / 'cache').as_posix()}"

[train]
optimizer = "muon"
batch_size = 3
grad_accum = 2
""")
    return path


def test_a_configs_step_is_timed_with_its_model_batch_and_optimizer(tmp_path, monkeypatch):
    path = muon_config(tmp_path)
    seen = []
    real_step = Trainer.step

    def spy(self, next_batch):
        seen.append(([type(o).__name__ for o in self.optimizers], tuple(next_batch()[0].shape)))
        return real_step(self, next_batch)

    monkeypatch.setattr(Trainer, "step", spy)
    row = bench_train.train_one(f"config:{path}", "fused", steps=2, device=torch.device("cpu"))
    assert seen[0] == (["Muon", "AdamW"], (3, 16)) and row["model"] == str(path)
    assert row["batch_size"] == 3
    assert row["tokens_per_sec"] == pytest.approx(3 * 2 * 16 / (row["ms_per_step"] / 1000))
    cfg, _, _ = bench_train.bench_setup(f"config:{path}")
    assert cfg.vocab_size == len(set(load_corpus())) and cfg.embed_dim == 32


def test_the_floor_of_a_muon_config_holds_its_newton_schulz_matmuls(tmp_path):
    cfg, batch_size, train_cfg = bench_train.bench_setup(f"config:{muon_config(tmp_path)}")
    muon = make_optimizers(GPT(cfg), train_cfg)[0]
    for group in muon.param_groups:
        for p in group["params"]:
            p.grad = torch.randn_like(p)
    newton_schulz = sum(2 * b * m * k * n for b, m, k, n in bench_train.muon_matmuls(cfg, train_cfg))
    assert sum(counted_flops(muon.step).values()) == newton_schulz  # what Muon.step multiplies
    floor = counted_flops(bench_train.matmul_floor_step(cfg, batch_size, torch.device("cpu"), train_cfg))
    tokens = batch_size * train_cfg.grad_accum * cfg.context_length
    assert floor == {"aten.bmm": GPT.flops_per_token(cfg) * tokens + newton_schulz}
    assert bench_train.step_flops(cfg, tokens, train_cfg) == floor["aten.bmm"]  # GFLOP/s counts it
    assert bench_train.muon_matmuls(cfg, replace(train_cfg, optimizer="adamw")) == []


def test_train_times_a_config_named_on_the_command_line(tmp_path, capsys, small_peak):
    path, out = muon_config(tmp_path), tmp_path / "bench.json"
    bench.main(["train", "--config", str(path), "--variants", "floor", "--steps", "2",
                "--rounds", "1", "--device", "cpu", "--json", str(out)])
    report = json.loads(out.read_text())
    assert [(r["model"], r["variant"]) for r in report["train"]] == [(str(path), "floor")]
    assert report["models"][str(path)]["batch_size"] == 3
    assert "error" not in report["train"][0] and f"{path} floor" in capsys.readouterr().out
    for args, code, message in [
        (["--config", str(tmp_path / "nowhere.toml")], 1, "not found"),
        (["--config", str(path), "--models", "cpu_recipe"], 2, "give one"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda args=args: bench.main(["train", *args, "--json", str(out)]))
        err = capsys.readouterr().err
        assert exit_info.value.code == code and message in err
        assert len(err.strip().splitlines()) == 1


@pytest.fixture
def small_peak(monkeypatch):
    """The matmul peak measured on 512 x 512 matrices: the same code, 1/64 of the work."""
    def small(device, size=512, repeats=10):
        return matmul_peak_of(device, size=512, repeats=repeats)

    matmul_peak_of = speedrun.matmul_peak
    for module in (speedrun, bench):
        monkeypatch.setattr(module, "matmul_peak", small)


def test_speedrun_reports_time_to_target_and_mfu(tmp_path, capsys, small_peak):
    out = tmp_path / "bench.json"
    bench.main(["speedrun", "--target", "100", "--device", "cpu", "--json", str(out), "--set",
                "train.max_steps=6", "train.eval_interval=3", "train.eval_batches=2",
                "train.batch_size=4", "train.sample_tokens=0", "model.num_layers=1",
                f"train.out_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}"])
    report = json.loads(out.read_text())
    run = report["speedrun"]
    assert run["reached_at_step"] == 3 and run["steps"] == 3  # any first eval is <= 100
    assert 0 < run["time_to_target_s"] <= run["wall_s"]
    assert 0 < run["time_to_target_from_first_step_s"] < run["time_to_target_s"]
    # from the process's start: the imports come before train(), so it is the longest of the three
    assert run["time_to_target_s"] < run["time_to_target_from_process_start_s"] < 600
    assert run["start_up_s"] > run["time_to_target_s"] - run["time_to_target_from_first_step_s"]
    assert run["mfu_datasheet"] is None  # no datasheet peak for a CPU
    assert 0 < run["mfu_measured_peak"] < 1.5 and run["tokens_per_sec"] > 0
    assert report["peak"]["dtype"] == "float32"
    printed = capsys.readouterr().out
    assert "val <= 100.0 reached at step 3: " in printed and "of the measured matmul peak" in printed
    assert "s from the process's start" in printed and "start-up before the first step" in printed


def test_speedrun_that_misses_its_target_says_so(tmp_path, capsys, small_peak):
    bench.main(["speedrun", "--target", "0.001", "--device", "cpu",
                "--json", str(tmp_path / "bench.json"), "--set", "train.max_steps=2",
                "train.eval_interval=2", "train.eval_batches=1", "train.batch_size=2",
                "train.sample_tokens=0", "model.num_layers=1",
                f"train.out_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}"])
    assert "val <= 0.001 not reached in 2 steps" in capsys.readouterr().out


def test_datasheet_peaks_by_card_name(monkeypatch):
    cuda = torch.device("cuda", 0)
    for name, tflops in [("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0),
                         ("NVIDIA H200", 989.4), ("NVIDIA A100-SXM4-40GB", 312.0),
                         ("Tesla T4", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device, name=name: name)
        assert speedrun.datasheet_peak_tflops(cuda) == tflops
    assert speedrun.datasheet_peak_tflops(torch.device("cpu")) is None


def test_bad_speedrun_input_is_one_line_and_a_non_zero_exit(tmp_path, capsys):
    for args, code, message in [
        (["--set", "foo"], 2, "--set takes KEY=VALUE, got 'foo'"),
        (["--target", "-1"], 2, "--target must be a val loss > 0"),
        (["--set", "train.lr=fast"], 1, "train.lr must be float, got 'fast'"),
        (["--config", str(tmp_path / "nowhere.toml")], 1, "not found"),
        (["--json", str(tmp_path / "no" / "b.json")], 2, "cannot be written: its folder does not"),
        (["--json", "b" * 300], 2, "cannot be written: it is longer than file systems allow"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda args=args: bench.main(["speedrun", "--json", str(tmp_path / "b.json"),
                                                  *args]))
        err = capsys.readouterr().err
        assert exit_info.value.code == code and message in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "b.json").exists()


def test_bad_record_input_is_one_line_and_a_non_zero_exit(tmp_path, capsys):
    checkout = tmp_path / "nanoGPT"
    checkout.mkdir()
    for name in ("train.py", "model.py"):
        (checkout / name).write_text("")
    prepared = shutil.copytree(checkout, tmp_path / "prepared")
    (prepared / "data" / "shakespeare_char").mkdir(parents=True)
    (prepared / "data" / "shakespeare_char" / "train.bin").write_bytes(b"")
    for args, code, message in [
        (["--config", "shakespeare_char_speedrun"], 2, "record needs --nanogpt DIR and --config"),
        (["--nanogpt", str(checkout)], 2, "record needs --nanogpt DIR and --config"),
        (["--nanogpt", str(tmp_path), "--config", "x"], 1, "is not a nanoGPT checkout"),
        (["--nanogpt", str(checkout), "--config", "x"], 1,
         "nanoGPT's data is not prepared; run: cd"),
        (["--nanogpt", str(prepared), "--config", "nosuch"], 1,  # before nanoGPT's 140 s
         "config file nosuch not found; give a TOML file or one of the shipped configs"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda args=args: bench.main(["record", "--json", str(tmp_path / "b.json"),
                                                  *args]))
        err = capsys.readouterr().err
        assert exit_info.value.code == code and message in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_the_gpt2_benchmark_reports_each_use(monkeypatch, tmp_path):
    """The same code as for the 124M model, at a width that takes seconds."""
    monkeypatch.setattr(bench_gpt2, "GPT2_SMALL", replace(bench_gpt2.GPT2_SMALL, context_length=64,
                                                     embed_dim=16, num_heads=2, num_layers=1))
    finetune = tmp_path / "finetune.toml"
    finetune.write_text("[model]\ncontext_length = 16\n[train]\nbatch_size = 2\ngrad_accum = 2\n")
    row = bench_gpt2.bench_gpt2(torch.device("cpu"), str(finetune))
    assert row["parameters"] == GPT.count_params(bench_gpt2.GPT2_SMALL)
    assert row["finetune_tokens_per_step"] == 2 * 2 * 16 and row["prompt_tokens"] > 10
    assert all(row[key] > 0 for key in ("disk_mb", "load_s", "inspect_s", "generate_tokens_per_s",
                                        "finetune_step_s", "peak_memory_mb"))


@pytest.mark.slow  # fresh processes for each measurement: .ci/run runs it after the default suite
def test_the_data_benchmark_prepares_with_each_tokenizer_and_trains_small_and_big(tmp_path, capsys):
    pytest.importorskip("tiktoken", reason="nanoGPT's way encodes with tiktoken: pip install "
                        "-e '.[dev]'")
    bench.main(["data", "--mb", "3", "--json", str(tmp_path / "bench.json")])
    report = json.loads((tmp_path / "bench.json").read_text())["data"]
    rows = {r["tokenizer"]: r for r in report["prepare"]}
    assert set(rows) == {"char", "word", "bpe", "gpt2", "gpt2 (nanoGPT's way)"}
    assert all(r["mb_per_s"] > 0 and r["peak_rss_mb"] > 0 and r["tokens"] > 0
               for r in rows.values())
    assert rows["gpt2"]["tokens"] == rows["gpt2 (nanoGPT's way)"]["tokens"] + 1  # <|endoftext|>
    assert [r["data"] for r in report["train"]] == ["1 MB", "3 MB"]
    assert all(r["seconds"] > 0 and r["peak_rss_mb"] > 0 for r in report["train"])
    printed = capsys.readouterr().out
    assert "nanoGPT's way" in printed and "train 5 steps on" in printed


STUB_MODEL = '''
from dataclasses import dataclass
import torch
from torch import nn
from torch.nn import functional as F

@dataclass
class GPTConfig:
    block_size: int = 16
    vocab_size: int = 65

class GPT(nn.Module):  # a bigram table, as nanoGPT's model.py is called: logits and loss
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.table = nn.Embedding(config.vocab_size, config.vocab_size)

    def forward(self, idx, targets=None):
        logits = self.table(idx)
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())
'''
STUB_TRAIN = '''
import os, sys, torch
from model import GPT, GPTConfig
torch.manual_seed(0)
model = GPT(GPTConfig())
if "--no-checkpoint" not in open("mode").read():
    os.makedirs("out-shakespeare-char", exist_ok=True)
    torch.save({"model_args": {"block_size": 16, "vocab_size": 65},
                "model": {"_orig_mod." + k: v for k, v in model.state_dict().items()}},
               "out-shakespeare-char/ckpt.pt")
'''


@pytest.mark.slow  # a stand-in nanoGPT and two real train.py processes: 20 s
def test_record_runs_both_sides_in_turns_and_scores_nanogpts_checkpoint(tmp_path, capsys):
    """The whole record: a stand-in for nanoGPT (a bigram table, with nanoGPT's file layout and
    checkpoint format) against a small minigpt config, two rounds; its checkpoint scored with its
    own model code over its val.bin; a round that writes no checkpoint is an error, not a stale
    score."""
    checkout = tmp_path / "nanoGPT"
    data = checkout / "data" / "shakespeare_char"
    data.mkdir(parents=True)
    (checkout / "model.py").write_text(STUB_MODEL)
    (checkout / "train.py").write_text(STUB_TRAIN)
    (checkout / "mode").write_text("")
    val = torch.randint(0, 65, (1000,), dtype=torch.int16)
    (data / "train.bin").write_bytes(b"")
    (data / "val.bin").write_bytes(val.numpy().tobytes())
    config = tmp_path / "small.toml"
    config.write_text(f'[model]\ncontext_length = 16\nembed_dim = 16\nnum_heads = 2\n'
                      f'num_layers = 1\n[data]\ncache_dir = "{tmp_path / "cache"}"\n'
                      f'[train]\nmax_steps = 4\neval_interval = 2\neval_batches = 0\n'
                      f'probe = false\nsample_tokens = 0\n')
    out = tmp_path / "b.json"
    bench.main(["record", "--nanogpt", str(checkout), "--config", str(config), "--target", "50",
                "--rounds", "2", "--json", str(out)])
    report = json.loads(out.read_text())["record"]
    # the stand-in's untrained table scores log(65)-ish on its val.bin; as its own code says:
    table = torch.load(checkout / "out-shakespeare-char" / "ckpt.pt")["model"]["_orig_mod.table.weight"]
    expected = torch.nn.functional.cross_entropy(table[val[:-1].long()], val[1:].long()).item()
    for side in ("nanogpt", "minigpt"):
        assert len(report["rounds"][side]) == 2
        assert all(r["wall_s"] > 0 and r["peak_rss_mb"] > 0 for r in report["rounds"][side])
    assert [r["val"] for r in report["rounds"]["nanogpt"]] == pytest.approx([expected] * 2)
    assert all(r["val"] < 50 for r in report["rounds"]["minigpt"]) and report["reached"]
    assert report["ratio"] == pytest.approx(report["median_wall_s"]["minigpt"]
                                            / report["median_wall_s"]["nanogpt"])
    printed = capsys.readouterr().out
    assert "round 2: minigpt" in printed and "nanoGPT" in printed
    (checkout / "mode").write_text("--no-checkpoint")  # the old ckpt.pt is still there
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: bench.main(["record", "--nanogpt", str(checkout), "--config", str(config),
                                    "--target", "50", "--rounds", "1", "--json", str(out)]))
    assert exit_info.value.code == 1
    assert "recipe ended without writing a new" in capsys.readouterr().err
