"""Run by test_training's two-node test under torchrun (one process a node): train on the shared
prepared shards, and on rank 0 write the loss curve and the final weights."""

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import run_config  # noqa: E402

from minigpt.training import train  # noqa: E402

out, text, batch_size = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
cfg = run_config(out, **{"data.path": text, "data.tokenizer": "char", "train.batch_size": batch_size,
                         "data.cache_dir": sys.argv[4], "train.max_steps": 6,
                         "train.eval_batches": 0})  # the exact val loss: no batches to differ
result = train(cfg, progress=False)
if os.environ.get("RANK", "0") == "0":
    (out / "losses.json").write_text(json.dumps({"train": result.losses,
                                                 "val": result.val_losses}))
    torch.save(result.model.state_dict(), out / "weights.pt")
