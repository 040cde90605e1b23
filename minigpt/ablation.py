"""Take the transformer apart: train the default model and, with the same budget, one model per
removed part, then compare their losses.

    python -m minigpt.ablation                    # all of them, a few minutes on a laptop CPU
    python -m minigpt.ablation --only no-residual no-positions --max-steps 300
    tensorboard --logdir runs/ablation-20261127-101500   # the curves side by side

Every ablation is a model config switch (`model.pos_encoding = "none"`, `model.residual`,
`model.layer_norm`, `model.num_heads = 1`, `model.ffn`, `model.causal`), so each run is an
ordinary run directory that generate.py and the app open like any other. The table at the end
(also written to results.md in the parent folder) gives each run's exact val loss over the whole
split, and the loss it has when it generates, where no later token can be seen: the two differ
only for the model trained without the causal mask, which reads the answer during training.
Ctrl-C stops the run in progress (its last.pt is saved, as in train.py) and the ablation with it;
the table then holds the runs that finished.
"""

import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from minigpt.cli import ArgumentParser, exit_code, run_cli
from minigpt.config import Config, default_config_path, load_config
from minigpt.data import prepare_data
from minigpt.errors import ConfigError
from minigpt.evaluation import split_loss
from minigpt.files import atomic_write
from minigpt.model import GPT
from minigpt.runtime import Runtime, tune_process
from minigpt.training import train

ABLATIONS = {  # run name -> (what is taken away, model config overrides)
    "baseline": ("nothing: the default model", {}),
    "no-positions": ("position information (pos_encoding = none)", {"model.pos_encoding": "none"}),
    "no-residual": ("the residual connections", {"model.residual": "false"}),
    "no-layernorm": ("every LayerNorm", {"model.layer_norm": "false"}),
    "single-head": ("multiple heads (one head as wide as all of them)", {"model.num_heads": "1"}),
    "no-ffn": ("the feed-forward sublayers", {"model.ffn": "false"}),
    "no-causal-mask": ("the causal mask (training cheats)", {"model.causal": "false"}),
}


def parse_args(argv: list[str]):
    parser = ArgumentParser(prog="python -m minigpt.ablation",
                            description="Train the default model and one model per removed part "
                                        "with the same budget, and compare their losses.")
    parser.add_argument("--config", default=str(default_config_path()),
                        help="the config every run starts from: a TOML file or a shipped config's "
                             "name (default: configs/default.toml)")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=list(ABLATIONS),
                        help=f"train only these, out of: {', '.join(ABLATIONS)}")
    parser.add_argument("--max-steps", type=int, help="steps per run (default: the config's)")
    parser.add_argument("--out-dir", default="runs",
                        help="where the parent folder ablation-<time> is made (default: runs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def generating_loss(model: GPT, cfg: Config) -> float:
    """The val loss with the causal mask on, as when generating: no later token is there to see.
    For a causally trained model it equals the val loss."""
    runtime = Runtime.from_config(cfg.train)
    causal = GPT(replace(model.config, causal=True)).to(runtime.device)
    causal.load_state_dict(model.state_dict())
    val = prepare_data(cfg.data, cfg.model.context_length).val
    return split_loss(causal, val, cfg.train.batch_size, runtime)


def results_table(rows: list[dict]) -> str:
    lines = ["| run | what is removed | parameters | val loss | val loss when generating | "
             "time |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['name']} | {r['removed']} | {r['params']:,} | {r['val']:.3f} | "
              f"{r['generating']:.3f} | {r['seconds']:.0f} s |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.max_steps is not None and args.max_steps <= 0:
        raise ConfigError(f"--max-steps must be > 0, got {args.max_steps}")
    parent = Path(args.out_dir) / f"ablation-{datetime.now():%Y%m%d-%H%M%S}"
    common = {"train.out_dir": str(parent), "train.eval_batches": "0"}
    if args.max_steps:
        common["train.max_steps"] = str(args.max_steps)
    names = args.only or list(ABLATIONS)
    configs = {name: load_config(args.config, {**common, **ABLATIONS[name][1],
                                               "train.run_name": name}) for name in names}
    tune_process()
    rows = []
    for name, cfg in configs.items():  # every config was checked before the first run starts
        print(f"--- {name}: without {ABLATIONS[name][0]}", flush=True)
        started = time.perf_counter()
        result = train(cfg, progress=not args.quiet)
        seconds = time.perf_counter() - started
        if result.stopped_by:  # Ctrl-C or a kill: the runs that finished make the table
            break
        val = result.val_losses[result.step]  # the last evaluation: exact (eval_batches = 0)
        rows.append({"name": name, "removed": ABLATIONS[name][0],
                     "params": result.model.num_params(), "seconds": seconds, "val": val,
                     "generating": val if cfg.model.causal else generating_loss(result.model, cfg)})
    table = results_table(rows)
    atomic_write(parent / "results.md", lambda f: f.write((table + "\n").encode()))
    print(table)
    print(f"curves:  tensorboard --logdir {parent}")
    return exit_code(result.stopped_by)


if __name__ == "__main__":
    run_cli(main, whole_process=True)
