"""Run by test_training's multi-node and FSDP tests under torchrun: train on the shared prepared
shards (extra config keys as KEY=VALUE; resume=RUN_DIR continues a run), and on rank 0 write the
loss curve and the final weights."""

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import run_config  # noqa: E402

from minigpt.resume import resume_config  # noqa: E402
from minigpt.training import train  # noqa: E402

out, (text, batch_size, cache, *extra) = Path(sys.argv[1]), sys.argv[2:]
options = dict(item.split("=", 1) for item in extra)
resume = options.pop("resume", None)
cfg = run_config(out, **{"data.path": text, "data.tokenizer": "char", "train.batch_size": batch_size,
                         "data.cache_dir": cache, "train.max_steps": 6,
                         "train.eval_batches": 0,  # the exact val loss: no batches to differ
                         **options})
if resume:
    cfg = resume_config(resume, {k: v for k, v in options.items() if k.startswith("train.")})
result = train(cfg, resume=resume, progress=False)
if os.environ.get("RANK", "0") == "0":
    out.mkdir(parents=True, exist_ok=True)
    (out / "losses.json").write_text(json.dumps({"train": result.losses,
                                                 "val": result.val_losses}))
    torch.save(result.model.state_dict(), out / "weights.pt")
