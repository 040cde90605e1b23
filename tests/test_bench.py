"""The benchmark harness runs end to end on tiny settings and reports consistent figures."""

import json
import sys

import torch

from minigpt import bench


def test_flops_per_token_of_the_cpu_recipe():
    # 4 layers x 12 x 128^2 matmul weights + the 65 x 128 head, x 6, plus attention scores.
    assert bench.flops_per_token(bench.MODELS["cpu_recipe"][0]) == 6 * (786_432 + 8_320) + 393_216


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
