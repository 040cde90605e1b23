"""What the three GPT-2 uses cost here with the 124M model (disk, load, inspection, sampling, a
fine-tuning step), on random weights so nothing is downloaded: `python -m minigpt.bench gpt2`.
"""

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from minigpt.config import load_config
from minigpt.generation import generate
from minigpt.gpt2 import export_gpt2, load_gpt2
from minigpt.inspection import inspect_prompt
from minigpt.model import GPT, ModelConfig
from minigpt.runtime import Runtime, peak_rss_mb
from minigpt.speedrun import sync_device
from minigpt.step import Trainer
from minigpt.tokenizer import BPETokenizer

GPT2_SMALL = ModelConfig(vocab_size=50257, context_length=1024, embed_dim=768, num_heads=12,
                         num_layers=12, activation="gelu_tanh")  # GPT-2's 124M model


def gpt2_sized_tokenizer() -> BPETokenizer:
    """A tokenizer of GPT-2's sizes: 50,000 merges, every one a pair of bytes, and
    <|endoftext|> as id 50,256 (the real one needs a download)."""
    merges = [(a, b) for a in range(256) for b in range(256)][:50_000]
    tokens = [bytes([b]) for b in range(256)] + [bytes(pair) for pair in merges]
    return BPETokenizer(merges, "gpt2", [*tokens, b"<|endoftext|>"], {"<|endoftext|>": 50_256})


def bench_gpt2(device: torch.device, finetune: str = "finetune_shakespeare") -> dict:
    """What the three GPT-2 uses cost with the 124M model: its directory on disk and the time to
    load it, a prompt looked inside, sampling speed, and one fine-tuning step as the finetune
    config takes it. The weights are random and the tokenizer synthetic (GPT-2's sizes: 50,000
    merges, every one a pair of bytes, and <|endoftext|>), so nothing is downloaded; the costs are
    those of the real model."""
    torch.manual_seed(0)
    tokenizer = gpt2_sized_tokenizer()
    source = GPT(GPT2_SMALL)
    row = {"parameters": source.num_params()}
    with tempfile.TemporaryDirectory() as scratch:
        export_gpt2(source, tokenizer, scratch)
        row["disk_mb"] = sum(p.stat().st_size for p in Path(scratch).iterdir()) / 2**20
        start = time.perf_counter()
        model, tokenizer = load_gpt2(scratch, device)
        row["load_s"] = time.perf_counter() - start
    prompt = "the quick brown fox jumps over the lazy dog " * 2
    start = time.perf_counter()
    inspect_prompt(model, tokenizer, prompt)
    row["inspect_s"] = time.perf_counter() - start
    ids = torch.tensor([tokenizer.encode(prompt)], device=device)
    row["prompt_tokens"] = ids.size(1)
    start = time.perf_counter()
    generate(model, ids, 50, generator=torch.Generator(device=device).manual_seed(0))
    sync_device(device)
    row["generate_tokens_per_s"] = 50 / (time.perf_counter() - start)
    finetune_cfg = load_config(finetune)
    tc, context = replace(finetune_cfg.train, device=str(device)), finetune_cfg.model.context_length
    model.train()
    trainer = Trainer(model, tc, Runtime.from_config(tc))
    tokens = torch.randint(0, 50257, (tc.batch_size, context + 1), device=device)
    trainer.step(lambda: (tokens[:, :-1], tokens[:, 1:]))  # warm-up: optimizer state allocated
    sync_device(device)
    start = time.perf_counter()
    trainer.step(lambda: (tokens[:, :-1], tokens[:, 1:]))
    sync_device(device)
    row["finetune_step_s"] = time.perf_counter() - start
    row["finetune_tokens_per_step"] = tc.batch_size * tc.grad_accum * context
    row["peak_memory_mb"] = (torch.cuda.max_memory_allocated(device) / 2**20
                             if device.type == "cuda" else peak_rss_mb())
    return row
