"""The benchmark harness runs end to end on tiny settings and reports consistent figures."""

import json
import sys

import pytest
import torch

from minigpt import bench
from minigpt.cli import run_cli


def test_flops_per_token_of_the_cpu_recipe():
    # 4 layers x 12 x 128^2 matmul weights + the 65 x 128 head, x 6, plus attention scores.
    assert bench.flops_per_token(bench.MODELS["cpu_recipe"][0]) == 6 * (786_432 + 8_320) + 393_216


def test_floor_runs_exactly_the_matmuls_of_a_training_step():
    for cfg, batch_size in bench.MODELS.values():
        shapes = bench.step_matmuls(cfg, batch_size)
        # 3 per linear layer (forward, grad input, grad weight), 6 for attention, per layer
        assert len(shapes) == cfg.num_layers * (4 * 3 + 6) + 3
        flops = sum(2 * b * m * k * n for b, m, k, n in shapes)
        assert flops == bench.flops_per_token(cfg) * batch_size * cfg.context_length
    row = bench.train_one("cpu_recipe", "floor", steps=2, device=torch.device("cpu"))
    assert row["variant"] == "floor" and row["timed_steps"] == 2 and row["ms_per_step"] > 0


def test_train_one_measures_a_step():
    row = bench.train_one("cpu_recipe", "fused", steps=2, device=torch.device("cpu"))
    assert row["timed_steps"] == 2 and row["ms_per_step"] > 0 and row["peak_memory_mb"] > 0
    expected = 12 * 64 / (row["ms_per_step"] / 1000)
    assert abs(row["tokens_per_sec"] - expected) < 1e-6 * expected


def test_generate_benchmark_and_report(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["generate", "--generate-model", "cpu_recipe", "--new-tokens", "4",
                "--batch-sizes", "1", "2", "--json", str(out)])
    report = json.loads(out.read_text())
    assert [r["batch_size"] for r in report["generate"]] == [1, 2]
    assert all(r["cached"] > 0 and r["recompute"] > 0 for r in report["generate"])
    printed = capsys.readouterr().out
    assert "KV cache" in printed and "recompute" in printed


def test_train_variants_run_in_rounds_and_report_medians(capsys, tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["train", "--models", "cpu_recipe", "--variants", "eager", "tuned", "--steps", "5",
                "--rounds", "2", "--device", "cpu", "--json", str(out)])
    rows = json.loads(out.read_text())["train"]
    assert [r["variant"] for r in rows] == ["eager", "tuned"]
    for row in rows:
        assert "error" not in row and len(row["rounds_ms_per_step"]) == 2
        assert min(row["rounds_ms_per_step"]) <= row["ms_per_step"] <= max(row["rounds_ms_per_step"])
    printed = capsys.readouterr().out
    assert "median of 2 rounds" in printed and "1.00x" in printed
    # The tuned variant keeps freed memory (glibc), so its steps stop page-faulting their
    # activations in anew (0-100 faults a step); the eager baseline faults 800-1,900 pages.
    if sys.platform.startswith("linux"):
        eager, tuned = (r["page_faults_per_step"] for r in rows)
        assert tuned <= max(50, eager / 4)


def test_speedrun_reports_time_to_target_and_mfu(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["speedrun", "--target", "100", "--device", "cpu", "--json", str(out), "--set",
                "train.max_steps=6", "train.eval_interval=3", "train.eval_batches=2",
                "train.batch_size=4", "train.sample_tokens=0", "model.num_layers=1",
                f"train.out_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}"])
    report = json.loads(out.read_text())
    run = report["speedrun"]
    assert run["reached_at_step"] == 3 and run["steps"] == 3  # any first eval is <= 100
    assert 0 < run["time_to_target_s"] <= run["wall_s"]
    assert run["mfu_datasheet"] is None  # no datasheet peak for a CPU
    assert 0 < run["mfu_measured_peak"] < 1.5 and run["tokens_per_sec"] > 0
    assert report["peak"]["dtype"] == "float32"
    printed = capsys.readouterr().out
    assert "val <= 100.0 reached at step 3" in printed and "of the measured matmul peak" in printed


def test_speedrun_that_misses_its_target_says_so(tmp_path, capsys):
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
        assert bench.datasheet_peak_tflops(cuda) == tflops
    assert bench.datasheet_peak_tflops(torch.device("cpu")) is None


def test_bad_speedrun_input_is_one_line_and_a_non_zero_exit(tmp_path, capsys):
    for args, code, message in [
        (["--set", "foo"], 2, "--set takes KEY=VALUE, got 'foo'"),
        (["--target", "-1"], 2, "--target must be a val loss > 0"),
        (["--set", "train.lr=fast"], 1, "train.lr must be float, got 'fast'"),
        (["--config", str(tmp_path / "nowhere.toml")], 1, "not found"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda args=args: bench.main(["speedrun", "--json", str(tmp_path / "b.json"),
                                                  *args]))
        err = capsys.readouterr().err
        assert exit_info.value.code == code and message in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "b.json").exists()
