"""Benchmarks: training throughput, generation speed and the device's matmul peak, as a table + JSON.

    python -m minigpt.bench                        # peak, train and generate on the best device
    python -m minigpt.bench train --rounds 5       # training only, 5 interleaved rounds
    python -m minigpt.bench train --config shakespeare_char_long --variants tuned floor
    python -m minigpt.bench generate --new-tokens 1000 --batch-sizes 1 8
    python -m minigpt.bench --device cpu --json bench.json
    python -m minigpt.bench speedrun --config configs/shakespeare_char.toml --target 1.48
    python -m minigpt.bench gpt2                   # what GPT-2 124M costs: disk, load, sample, tune
    python -m minigpt.bench data --mb 2048         # preparing and training on a 2 GB text
    python -m minigpt.bench record --nanogpt ../nanoGPT --config shakespeare_char_speedrun \
        --target 1.90                              # against nanoGPT, in turns (docs/records.md)

Training is measured per variant in a fresh subprocess (`minigpt.bench_train`: eager, fused,
tuned, compiled and the matmul floor; with --config, that config's own step).

`speedrun` trains a config (as train.py would, in this process) until its val loss reaches
--target and reports the time that took (data, compile and evaluations included), the median
training tokens/s and the MFU: achieved FLOP/s over the card's bf16 datasheet peak on CUDA, and
over the matmul peak measured here.
"""

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from minigpt.bench_data import TOKENIZERS as DATA_TOKENIZERS
from minigpt.bench_data import bench_data, print_data_report
from minigpt.bench_gpt2 import bench_gpt2
from minigpt.bench_train import MODELS, VARIANTS, bench_setup, bench_train
from minigpt.cli import ArgumentParser, run_cli
from minigpt.errors import InputError
from minigpt.files import atomic_write, path_problem
from minigpt.generation import generate
from minigpt.model import GPT
from minigpt.records import print_record, record
from minigpt.runtime import resolve_device
from minigpt.speedrun import matmul_peak, speedrun, sync_device


@torch.no_grad()
def bench_generate(model_name: str, new_tokens: int, batch_sizes: list[int],
                   device: torch.device) -> list:
    cfg, _ = MODELS[model_name]
    torch.manual_seed(0)
    model = GPT(cfg).to(device).eval()
    rows = []
    for batch_size in batch_sizes:
        prompt = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        row = {"model": model_name, "batch_size": batch_size, "new_tokens": new_tokens}
        # the KV cache in its two modes past the context (generation.stream), and no cache at all
        for name, use_cache, past_context in [("cached_exact", True, "exact"),
                                              ("cached_fast", True, "fast"),
                                              ("recompute", False, "exact")]:
            generator = torch.Generator(device=device).manual_seed(0)
            sync_device(device)
            start = time.perf_counter()
            generate(model, prompt, new_tokens, temperature=1.0, generator=generator,
                     use_cache=use_cache, past_context=past_context)
            sync_device(device)
            row[name] = batch_size * new_tokens / (time.perf_counter() - start)
        row["speedup"] = row["cached_fast"] / row["recompute"]
        rows.append(row)
    return rows


def print_report(report: dict) -> None:
    peak = report.get("peak")
    print(f"device: {report['device']} ({report['machine']}), torch {report['torch']}, "
          f"{report['threads']} threads")
    if peak:
        print(f"matmul peak: {peak['gflops']:.0f} GFLOP/s ({peak['dtype']}, {peak['size']}^3)")
    if report.get("train"):
        rounds = max(len(r.get("rounds_ms_per_step", [])) for r in report["train"])
        print(f"\ntraining (median step, median of {rounds} rounds)")
        width = max(12, *(len(r["model"]) for r in report["train"]))
        print(f"{'model':{width}} {'variant':9} {'ms/step':>8} {'tokens/s':>9} {'GFLOP/s':>8} "
              f"{'of peak':>8} {'vs eager':>8} {'warmup s':>8} {'memory MB':>10} {'faults/step':>11}")
        eager = {r["model"]: r for r in report["train"]
                 if r["variant"] == "eager" and "error" not in r}
        for r in report["train"]:
            if "error" in r:
                print(f"{r['model']:{width}} {r['variant']:9} failed: {r['error']}")
                continue
            ratio = (f"{r['tokens_per_sec'] / eager[r['model']]['tokens_per_sec']:7.2f}x"
                     if r["model"] in eager else f"{'-':>8}")  # eager not timed this run
            share = r["gflops"] / peak["gflops"] if peak else float("nan")
            print(f"{r['model']:{width}} {r['variant']:9} {r['ms_per_step']:8.1f} "
                  f"{r['tokens_per_sec']:9,.0f} {r['gflops']:8.1f} {share:8.0%} {ratio} "
                  f"{r['warmup_s']:8.1f} {r['peak_memory_mb']:10.0f} {r['page_faults_per_step']:11.0f}")
    if report.get("speedrun"):
        r = report["speedrun"]
        reached = (f"reached at step {r['reached_at_step']}: "
                   f"{r['time_to_target_from_process_start_s']:.1f} s from the process's start, "
                   f"{r['time_to_target_s']:.1f} s from train()'s, "
                   f"{r['time_to_target_from_first_step_s']:.1f} s from the first step"
                   if r["reached_at_step"] is not None else f"not reached in {r['steps']} steps")
        print(f"\nspeedrun {r['config']}: val <= {r['target']} {reached}; best val "
              f"{r['best_val_loss']:.4f}, {r['wall_s']:.1f} s in all (compile "
              f"{'on' if r['compile'] else 'off'}); start-up before the first step "
              f"{r['start_up_s']:.1f} s")
        mfu = [f"{r['mfu_measured_peak']:.1%} of the measured matmul peak"]
        if r["mfu_datasheet"] is not None:
            mfu.insert(0, f"MFU {r['mfu_datasheet']:.1%} of the bf16 datasheet peak")
        print(f"training: {r['tokens_per_sec']:,.0f} tokens/s (median step), "
              f"{r['tflops']:.2f} TFLOP/s; " + ", ".join(mfu))
    if report.get("record"):
        print_record(report["record"])
    if report.get("gpt2"):
        r = report["gpt2"]
        print(f"\nGPT-2 124M ({r['parameters']:,} parameters): {r['disk_mb']:,.0f} MB on disk, "
              f"loaded in {r['load_s']:.1f} s; a {r['prompt_tokens']}-token prompt looked inside in "
              f"{r['inspect_s']:.2f} s; sampling {r['generate_tokens_per_s']:.1f} tokens/s; a "
              f"fine-tuning step of {r['finetune_tokens_per_step']:,} tokens "
              f"{r['finetune_step_s']:.1f} s; peak memory {r['peak_memory_mb']:,.0f} MB")
    if report.get("data"):
        print_data_report(report["data"])
    if report.get("generate"):
        print("\ngeneration (tokens/s, all samples together; cache modes past the context: "
              "exact recomputes the window, fast rolls or re-prefills it)")
        print(f"{'model':12} {'batch':>5} {'tokens':>6} {'cache exact':>11} {'cache fast':>10} "
              f"{'recompute':>9} {'fast/recompute':>14}")
        for r in report["generate"]:
            print(f"{r['model']:12} {r['batch_size']:5} {r['new_tokens']:6} "
                  f"{r['cached_exact']:11,.0f} {r['cached_fast']:10,.0f} {r['recompute']:9,.0f} "
                  f"{r['speedup']:13.1f}x")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line, checked: one line and exit 2 for values that mean nothing."""
    parser = ArgumentParser(prog="python -m minigpt.bench", description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="all",
                        choices=["all", "peak", "train", "generate", "speedrun", "gpt2", "data",
                                 "record"],
                        help="peak: the device's matmul GFLOP/s; train: the training step's "
                             "speed per variant; generate: tokens/s with and without the KV "
                             "cache; speedrun: time for --config to reach --target; gpt2: what "
                             "GPT-2 124M costs here; data: preparing token shards and training "
                             "on a big text (minigpt.bench_data); record: nanoGPT's CPU recipe "
                             "and `train.py --config` to --target, whole processes in turns "
                             "(minigpt.records); all: peak, train and generate (default)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS),
                        help="train: the model sizes to time (default: both); --config "
                             "times a config's step instead")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        help="train: eager AdamW, fused, tuned (as train.py runs), compiled, "
                             "floor (the matmuls alone) (default: all)")
    parser.add_argument("--steps", type=int, default=50, help="timed training steps per variant")
    parser.add_argument("--max-seconds", type=float, default=30.0,
                        help="stop timing a variant after this long (at least 3 steps)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="times each variant is measured, in turn; figures are medians")
    parser.add_argument("--generate-model", default="gpu_recipe", choices=list(MODELS),
                        help="generate: the model size (default: gpu_recipe)")
    parser.add_argument("--new-tokens", type=int, default=1000,
                        help="generate: tokens per sample (default: 1000)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8],
                        help="generate: samples decoded at once (default: 1 8)")
    parser.add_argument("--config", help="speedrun, record: the TOML config to train; train: "
                                         "time this config's step (its model, batch and "
                                         "optimizer) instead of --models")
    parser.add_argument("--target", type=float, default=1.48,
                        help="speedrun, record: the val loss to reach")
    parser.add_argument("--nanogpt", help="record: a checkout of karpathy/nanoGPT with its "
                                          "data/shakespeare_char prepared")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="speedrun: config overrides, e.g. train.max_steps=3000")
    parser.add_argument("--text", help="data: a text file (default: synthetic text of --mb MB)")
    parser.add_argument("--mb", type=float, default=256, help="data: MB of synthetic text")
    parser.add_argument("--tokenizers", nargs="+", default=list(DATA_TOKENIZERS),
                        choices=DATA_TOKENIZERS, help="data: the tokenizers to prepare with")
    parser.add_argument("--json", default="bench.json", help="where to write the results")
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """parser.error (one line, exit 2) for values that mean nothing."""
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be at least 1")
    if not 0 < args.max_seconds < float("inf"):
        parser.error("--max-seconds must be a positive number of seconds")
    if not 1 <= args.new_tokens <= 100_000 or not all(1 <= b <= 1024 for b in args.batch_sizes):
        parser.error("--new-tokens must be in [1, 100000] and --batch-sizes in [1, 1024]")
    if args.text and not Path(args.text).is_file():
        parser.error(f"--text {args.text[:80]!r} is not a file")
    if not 0 < args.mb <= 1e6:
        parser.error("--mb must be a size in MB, more than 0")
    if args.what in ("speedrun", "record") and not 0 < args.target < float("inf"):
        parser.error("--target must be a val loss > 0")
    if args.what == "record" and not (args.nanogpt and args.config):
        parser.error("record needs --nanogpt DIR and --config CONFIG")
    if args.models and args.config and args.what in ("all", "train"):
        parser.error("--models and --config both choose what train times; give one")
    bad = [item for item in args.set if "=" not in item]
    if bad:
        parser.error(f"--set takes KEY=VALUE, got {bad[0]!r}")
    problem = path_problem(args.json) or (None if Path(args.json).absolute().parent.is_dir()
                                          else "its folder does not exist")
    if problem:  # found now, not after minutes of measuring
        parser.error(f"--json {args.json[:80]!r} cannot be written: {problem}")


def run_benchmarks(args: argparse.Namespace) -> dict:
    """The report: the machine, then each benchmark args.what asks for."""
    overrides = dict(item.split("=", 1) for item in args.set)
    if args.device != "auto":
        overrides.setdefault("train.device", args.device)
    device = resolve_device(overrides.get("train.device", args.device))
    report = {"device": str(device), "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "models": {name: {**asdict(cfg), "batch_size": b} for name, (cfg, b) in MODELS.items()}}
    models = args.models or list(MODELS)
    if args.config and args.what in ("all", "train"):  # a bad config is one line, before timing
        cfg, batch_size, _ = bench_setup(f"config:{args.config}")
        report["models"][args.config] = {**asdict(cfg), "batch_size": batch_size}
        models = [f"config:{args.config}"]
    if args.what in ("all", "peak", "train"):
        report["peak"] = matmul_peak(device)
    if args.what == "speedrun":
        report["peak"], report["speedrun"] = speedrun(args.config, args.target, overrides)
    if args.what in ("all", "train"):
        report["train"] = bench_train(models, args.variants, args.steps, device,
                                      args.max_seconds, args.rounds)
    if args.what in ("all", "generate"):
        report["generate"] = bench_generate(args.generate_model, args.new_tokens,
                                            args.batch_sizes, device)
    if args.what == "gpt2":
        report["gpt2"] = bench_gpt2(device)
    if args.what == "data":
        report["data"] = bench_data(args.text, args.mb, args.tokenizers)
    if args.what == "record":
        report["record"] = record(args.nanogpt, args.config, args.target, args.rounds)
    return report


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    report = run_benchmarks(args)
    print_report(report)
    try:
        atomic_write(args.json, lambda f: f.write(json.dumps(report, indent=2).encode()))
    except OSError as err:
        raise InputError(f"cannot write {args.json}: {err.strerror or err}") from None
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    run_cli(lambda: main() or 0, whole_process=True)
