"""The benchmark harness runs end to end on tiny settings and reports consistent figures."""

import json

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
