"""Records against nanoGPT: its README's CPU recipe and a minigpt config, whole processes taking
turns on one machine, each judged by the exact loss of its whole val split. docs/records.md has
the rules and the records; `python -m minigpt.bench record` runs this:

    python -m minigpt.bench record --nanogpt ../nanoGPT --config shakespeare_char_speedrun \\
        --target 1.90 --rounds 3

A round is nanoGPT's recipe, then `train.py --config C --train.target_val_loss T`, each a fresh
process timed from its start to its exit (as /usr/bin/time does: the interpreter, imports, data,
evaluations and checkpoints all count), with its peak RSS. After each process, untimed, its
checkpoint is scored by one procedure (`minigpt.evaluation.split_loss`; nanoGPT's with its own
model code): the mean next-character loss over the whole val split in non-overlapping windows of
the model's context, every position once.
"""

import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

import torch
import torch.nn.functional as F

from minigpt.config import find_config, load_config
from minigpt.errors import InputError
from minigpt.evaluation import evaluate_run, windows

# nanoGPT's README, "I only have a macbook": its CPU recipe, unmodified.
NANOGPT_RECIPE = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
                  "--eval_iters=20", "--log_interval=1", "--block_size=64", "--batch_size=12",
                  "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
                  "--lr_decay_iters=2000", "--dropout=0.0"]
TRAIN_PY = Path("train.py")  # minigpt's, in the checkout this runs from


def timed(command: list[str], cwd: Path, log: Path) -> dict:
    """Run command to its end; its wall seconds and peak RSS (MB), its output in log."""
    with open(log, "wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:  # interrupted: the run goes too, before its folder is removed
            process.kill()
            process.wait()
            raise
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4
        wall = time.perf_counter() - started
    code = process.returncode
    if code:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:]
        raise InputError(f"{' '.join(command[:3])} ... failed (exit {code}): "
                         f"{tail[0] if tail else 'no output'}; its output is in {log}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}  # Linux: KB


@torch.no_grad()
def nanogpt_val_loss(nanogpt: Path, since: float) -> float:
    """The exact val loss of the checkpoint nanoGPT's recipe wrote (out-shakespeare-char/ckpt.pt)
    after time.time() was since, with nanoGPT's own model code, over its whole
    data/shakespeare_char/val.bin."""
    path = nanogpt / "out-shakespeare-char" / "ckpt.pt"
    if not path.is_file() or path.stat().st_mtime < since:
        raise InputError(f"nanoGPT's recipe ended without writing a new {path}")
    spec = importlib.util.spec_from_file_location("nanogpt_model", nanogpt / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # nanoGPT's own file, written by its own train.py a moment ago (it pickles its config)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    model = module.GPT(module.GPTConfig(**checkpoint["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v
                           for k, v in checkpoint["model"].items()})
    model.eval()
    ids = array("H")
    ids.frombytes((nanogpt / "data" / "shakespeare_char" / "val.bin").read_bytes())
    tokens = torch.tensor(ids, dtype=torch.long)
    total = 0.0
    for x, y in windows(tokens, model.config.block_size, 64):  # as minigpt's split_loss does
        logits, _ = model(x, y)  # given targets, nanoGPT returns every position's logits
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
    return total / (len(tokens) - 1)


def minigpt_val_loss(run_dir: Path) -> float:
    """The exact val loss of the checkpoint the run stopped with (last.pt), scored again after
    the run, as nanoGPT's is: split_loss over the whole val split (what `train.py --eval-only`
    does)."""
    return evaluate_run(run_dir, say=lambda line: None, splits=("val",),
                        checkpoints=("last.pt",))["last.pt"]["val"]


def record(nanogpt: str, config: str, target: float, rounds: int) -> dict:
    """rounds of nanoGPT's recipe and then minigpt's config, in turn; each side's walls, peak RSS
    and val losses, and the ratio of the medians."""
    nanogpt = Path(nanogpt).resolve()
    if not (nanogpt / "train.py").is_file() or not (nanogpt / "model.py").is_file():
        raise InputError(f"--nanogpt {nanogpt} is not a nanoGPT checkout (no train.py and "
                         f"model.py); git clone https://github.com/karpathy/nanoGPT")
    if not (nanogpt / "data" / "shakespeare_char" / "train.bin").is_file():
        raise InputError(f"nanoGPT's data is not prepared; run: cd {nanogpt} && python "
                         f"data/shakespeare_char/prepare.py")
    if not TRAIN_PY.is_file():
        raise InputError("record runs minigpt's train.py, and this folder has none; run it from "
                         "the root of a minigpt checkout")
    load_config(find_config(config))  # a bad config stops here, not after nanoGPT's first round
    rows = {"nanogpt": [], "minigpt": []}
    with tempfile.TemporaryDirectory(prefix="minigpt-record-") as scratch:
        # untimed: both sides start with their data prepared (nanoGPT's prepare.py ran before)
        timed([sys.executable, str(TRAIN_PY), "--config", config, "--prepare-only", "--quiet"],
              Path.cwd(), Path(scratch) / "prepare.log")
        for i in range(rounds):
            log, started = Path(scratch) / f"nanogpt-{i}.log", time.time()
            theirs = timed([sys.executable, "train.py", *NANOGPT_RECIPE], nanogpt, log)
            rows["nanogpt"].append({**theirs, "val": nanogpt_val_loss(nanogpt, started)})
            print(f"round {i + 1}: nanoGPT {theirs['wall_s']:.1f} s, val "
                  f"{rows['nanogpt'][-1]['val']:.4f}", flush=True)
            log = Path(scratch) / f"minigpt-{i}.log"
            ours = timed([sys.executable, str(TRAIN_PY), "--config", config, "--quiet",
                          "--train.target_val_loss", str(target), "--train.out_dir", scratch,
                          "--train.run_name", f"record-{i}"], Path.cwd(), log)
            rows["minigpt"].append({**ours, "val": minigpt_val_loss(Path(scratch) / f"record-{i}")})
            print(f"round {i + 1}: minigpt {ours['wall_s']:.1f} s, val "
                  f"{rows['minigpt'][-1]['val']:.4f}", flush=True)
    medians = {side: statistics.median(r["wall_s"] for r in runs) for side, runs in rows.items()}
    return {"config": config, "target": target, "rounds": rows, "median_wall_s": medians,
            "ratio": medians["minigpt"] / medians["nanogpt"],
            "reached": all(r["val"] <= target for r in rows["minigpt"]),
            "nanogpt_commit": _commit(nanogpt), "minigpt_commit": _commit(Path.cwd()),
            "cpu": _cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads()}


def _commit(folder: Path) -> str | None:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=folder, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _cpu_name() -> str:
    """The CPU's model name and core count, and whether it has AVX-512 (Linux; else its arch)."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.machine()
    names = [line.split(":", 1)[1].strip() for line in info.splitlines()
             if line.startswith("model name")]
    flags = "AVX-512" if "avx512f" in info else "no AVX-512"
    return f"{names[0] if names else platform.machine()} x {len(names)} ({flags})"


def print_record(r: dict) -> None:
    for side in ("nanogpt", "minigpt"):
        runs = r["rounds"][side]
        walls = ", ".join(f"{x['wall_s']:.1f}" for x in runs)
        vals = ", ".join(f"{x['val']:.4f}" for x in runs)
        print(f"{side}: median {r['median_wall_s'][side]:.1f} s ({walls}); val {vals}; "
              f"peak RSS {max(x['peak_rss_mb'] for x in runs):.0f} MB")
    verdict = "reached in every round" if r["reached"] else "NOT reached in every round"
    print(f"{r['config']} to val <= {r['target']}: {verdict}, in {r['ratio']:.2f} of nanoGPT's "
          f"median wall")
    print(f"machine: {r['cpu']}, torch {r['torch']}, {r['threads']} threads; minigpt "
          f"{r['minigpt_commit']}, nanoGPT {r['nanogpt_commit']}")
