"""What data preparation and training on a big corpus cost: `python -m minigpt.bench data`.

    python -m minigpt.bench data --mb 256                  # synthetic text of 256 MB
    python -m minigpt.bench data --text big.txt --tokenizers char bpe

For each tokenizer (char, word, a trained BPE, and a GPT-2 sized BPE) it prepares the text's token
shards in a fresh process (`train.py --prepare-only`'s work) and reports MB/s and peak memory;
beside them, nanoGPT's way on the same text with the same GPT-2 sized vocabulary (tiktoken's
encode_ordinary over the whole text read at once, then a uint16 array written for np.memmap).
Then it trains the same small model 5 steps on 1 MB and on the whole text, with shards prepared,
in fresh processes, in turn three times: the median whole-process time and peak memory of each.
The GPT-2 sized BPE is synthetic (50,000 merges of byte pairs and <|endoftext|>, as `bench gpt2`
builds it), so nothing is downloaded; its cost is that of a real 50,257-id vocabulary.
"""

import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from minigpt.bench_gpt2 import gpt2_sized_tokenizer
from minigpt.corpus import load_corpus
from minigpt.runtime import peak_rss_mb

TOKENIZERS = ("char", "word", "bpe", "gpt2")
MODEL = {"model.context_length": "64", "model.embed_dim": "128", "model.num_layers": "4",
         "train.batch_size": "12", "train.max_steps": "5", "train.eval_interval": "5",
         "train.eval_batches": "4"}  # the CPU recipe's shape, 5 steps


def synthetic_text(path: Path, megabytes: float, seed: int = 0) -> None:
    """The embedded corpus' lines in random order, megabytes of them (text unlike a repeat)."""
    lines = load_corpus().splitlines(keepends=True)
    rng, target, written = random.Random(seed), int(megabytes * 2**20), 0
    line = sum(map(len, lines)) / len(lines)  # characters in an average line
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            block = "".join(rng.choices(lines, k=min(50_000, int((target - written) / line) + 1)))
            f.write(block)
            written += len(block.encode())


def prepare_one(text: str, tokenizer: str, cache: str) -> dict:
    """In this (fresh) process: prepare the shards; seconds, peak memory, tokens, how encoded."""
    from minigpt.config import DataConfig
    from minigpt.data import data_sources
    from minigpt.encoders import encoder
    from minigpt.shards import prepare

    started = time.perf_counter()
    cfg = DataConfig(path=text, tokenizer="bpe" if tokenizer == "gpt2" else tokenizer,
                     cache_dir=cache)
    given = gpt2_sized_tokenizer() if tokenizer == "gpt2" else None
    shards = prepare(cfg, data_sources(cfg)[0], given, Path(cache))
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb(),
            "tokens": len(shards.tokens), "how": encoder(shards.tokenizer)[1]}


def nanogpt_way(text: str, out: str) -> dict:
    """nanoGPT's prepare.py on the same text: read it whole, tiktoken's encode_ordinary, uint16."""
    import numpy as np

    from minigpt.encoders import _tiktoken

    started = time.perf_counter()
    encoding = _tiktoken(gpt2_sized_tokenizer())
    with open(text, encoding="utf-8") as f:
        ids = encoding.encode_ordinary(f.read())
    np.array(ids, dtype=np.uint16).tofile(out)
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb(),
            "tokens": len(ids), "how": "tiktoken encode_ordinary, whole text"}


def _fresh(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "minigpt.bench_data", *args],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def train_one(text: str, cache: str, out: str) -> dict:
    """In this (fresh) process: train.py's training, 5 steps on text; peak memory."""
    from minigpt.config import load_config
    from minigpt.training import train

    cfg = load_config(None, {**MODEL, "data.path": text,
                             "data.tokenizer": "char", "data.cache_dir": cache,
                             "train.out_dir": out, "train.probe": "false"})
    train(cfg, progress=False)
    return {"peak_rss_mb": peak_rss_mb()}


def _train(text: str, cache: str, out: str) -> dict:
    """Training 5 steps on text with its shards prepared: whole-process seconds (start-up,
    imports included), peak memory."""
    started = time.perf_counter()
    row = _fresh("_train", text, cache, out)
    return {"seconds": time.perf_counter() - started, **row}


def _median(rows: list[dict]) -> dict:
    """The median of each figure over rounds (run in turn: small, big, small, big, ...)."""
    failed = [r for r in rows if "error" in r]
    if failed:
        return failed[0]
    return {key: statistics.median(r[key] for r in rows) for key in rows[0]} | {
        "rounds_s": [round(r["seconds"], 2) for r in rows]}


def bench_data(text: str | None, megabytes: float, tokenizers: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        if text is None:
            text = str(Path(scratch) / "synthetic.txt")
            synthetic_text(Path(text), megabytes)
        small = str(Path(scratch) / "one-mb.txt")
        with open(text, encoding="utf-8") as f:  # the text's first MB, for the training baseline
            Path(small).write_text(f.read(2**20), encoding="utf-8")
        size = Path(text).stat().st_size
        report = {"text": text, "megabytes": size / 2**20, "prepare": []}
        for name in tokenizers:
            row = _fresh("_prepare", text, name, str(Path(scratch) / f"cache-{name}"))
            report["prepare"].append({"tokenizer": name, **row})
        if "gpt2" in tokenizers:
            row = _fresh("_nanogpt", text, str(Path(scratch) / "nanogpt.bin"))
            report["prepare"].append({"tokenizer": "gpt2 (nanoGPT's way)", **row})
        for row in report["prepare"]:
            if "seconds" in row:
                row["mb_per_s"] = size / 2**20 / row["seconds"]
        cache, runs = str(Path(scratch) / "cache-char"), str(Path(scratch) / "runs")
        _fresh("_prepare", small, "char", cache)
        if "char" not in tokenizers:
            _fresh("_prepare", text, "char", cache)
        rounds = [[_train(small, cache, runs), _train(text, cache, runs)] for _ in range(3)]
        report["train"] = [{"data": name, **_median([r[i] for r in rounds])}
                           for i, name in enumerate(["1 MB", f"{size / 2**20:,.0f} MB"])]
    return report


def print_data_report(report: dict) -> None:
    print(f"data: {report['text']} ({report['megabytes']:,.0f} MB)")
    print(f"\n{'prepare with':24} {'seconds':>8} {'MB/s':>7} {'peak MB':>8} {'tokens':>14}  how")
    for r in report["prepare"]:
        if "error" in r:
            print(f"{r['tokenizer']:24} failed: {r['error']}")
            continue
        print(f"{r['tokenizer']:24} {r['seconds']:8.1f} {r['mb_per_s']:7.1f} "
              f"{r['peak_rss_mb']:8.0f} {r['tokens']:14,}  {r['how']}")
    print(f"\n{'train 5 steps on':24} {'seconds':>8} {'peak MB':>8}  (whole process, shards "
          "prepared; medians of 3 rounds)")
    for r in report["train"]:
        if "error" in r:
            print(f"{r['data']:24} failed: {r['error']}")
            continue
        print(f"{r['data']:24} {r['seconds']:8.1f} {r['peak_rss_mb']:8.0f}  rounds: "
              + ", ".join(f"{s:.1f}" for s in r["rounds_s"]))


if __name__ == "__main__":  # internal: one measurement in a fresh process
    what, *rest = sys.argv[1:]
    result = {"_prepare": prepare_one, "_nanogpt": nanogpt_way, "_train": train_one}[what](*rest)
    print(json.dumps(result))
