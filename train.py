"""Train a GPT: `python train.py` trains the default config on the embedded corpus.

    python train.py --config configs/shakespeare_char_cpu.toml --train.max_steps 500
    python train.py --resume runs/default-20261127-101500
    torchrun --max-restarts 3 --nproc_per_node=2 train.py --train.run_name big --resume auto
    python train.py --eval-only --resume runs/default-20261127-101500   # exact whole-split loss
    python train.py --prepare-only --data.path corpus/ --data.tokenizer bpe   # tokenize ahead
    torchrun --nproc_per_node=2 train.py --config configs/default.toml

`python train.py --help` lists every config key with its default.
"""

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

from minigpt.checkpoint import newest_checkpoint
from minigpt.cli import ArgumentParser, exit_code
from minigpt.config import (
    Config,
    default_config_path,
    describe_keys,
    find_config,
    load_config,
    read_toml,
)
from minigpt.data import prepare_data
from minigpt.errors import ConfigError
from minigpt.evaluation import evaluate_run
from minigpt.resume import init_config, resume_config
from minigpt.runtime import torchrun_ranks, tune_process
from minigpt.stopping import StopRequest
from minigpt.training import TrainResult, train

AUTO = "auto"  # --resume auto


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    parser = ArgumentParser(
        usage="%(prog)s [--config FILE] [--resume RUN_DIR [--eval-only]] [--quiet] "
              "[--section.key VALUE ...]",
        description="Train a GPT. Settings come from --config (TOML), then --section.key VALUE "
                    "overrides. The defaults shown are those of configs/default.toml, which runs "
                    "when no --config is given.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a TOML config file, or the name of a shipped one such as "
                                         "shakespeare_char (default: configs/default.toml)")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its last.pt (train.* keys may "
                             "change); auto: continue the run of --train.run_name if it has a "
                             "checkpoint, else start it (restarts, as torchrun --max-restarts "
                             "makes them, go on from the last checkpoint)")
    parser.add_argument("--init-from", metavar="WEIGHTS",
                        help="fine-tune: start from a minigpt run or .pt file, a Hugging Face "
                             "GPT-2 directory or a hub name (same as --train.init_from)")
    parser.add_argument("--eval-only", action="store_true",
                        help="with --resume: print the exact train/val loss and perplexity of the "
                             "run's checkpoints over the whole splits, and exit")
    parser.add_argument("--prepare-only", action="store_true",
                        help="tokenize the data into its token shards (in data.cache_dir) and "
                             "exit: a later run on the same data starts at once")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    group = parser.add_argument_group("config keys (--section.key VALUE)")
    for key, default, text in describe_keys(load_config(default_config_path())):
        group.add_argument(f"--{key}", dest=key, metavar="VALUE", default=argparse.SUPPRESS,
                           help=f"{text} (default: {default})")
    args, unknown = parser.parse_known_args(argv)
    overrides = {key: value for key, value in vars(args).items() if "." in key}
    # A misspelt --section.key reaches the config, which names the valid keys.
    unknown = [part for arg in unknown for part in arg.split("=", 1)]
    for flag, value in zip(unknown[::2], unknown[1::2] + [""]):
        if not flag.startswith("--") or "." not in flag:
            parser.error(f"unrecognized argument {flag}")
        overrides[flag[2:]] = value
    return args, overrides


def run_config(args: argparse.Namespace, overrides: dict[str, str]) -> tuple[Config, Path | None]:
    """The config to train with and the run directory to resume (None: a new run): the run's own
    config when resuming, else --config (by default configs/default.toml) with the overrides.
    --resume auto resumes the run of train.run_name when it has a checkpoint (the config must
    then describe the same model and data) and starts it otherwise."""
    if args.resume and args.resume != AUTO:
        if args.config:
            raise ConfigError("--resume takes its config from the run; drop --config")
        return resume_config(args.resume, overrides), Path(args.resume)
    cfg = new_run_config(args, overrides)
    if args.resume != AUTO:
        return cfg, None
    if not cfg.train.run_name:
        raise ConfigError("--resume auto needs --train.run_name: the run to continue if it exists "
                          "and to start otherwise")
    run_dir = Path(cfg.train.out_dir) / cfg.train.run_name
    return cfg, run_dir if newest_checkpoint(run_dir) is not None else None


def new_run_config(args: argparse.Namespace, overrides: dict[str, str]) -> Config:
    """--config (by default configs/default.toml) with the overrides. Fine-tuning (--init-from)
    takes the model's shape from the weights, so the default config's [model] section does not
    apply; model keys asked for on the command line or in --config are checked against the
    weights."""
    if args.init_from:
        overrides["train.init_from"] = args.init_from
    fine_tuning = "train.init_from" in overrides
    cfg = load_config(args.config or (None if fine_tuning else default_config_path()), overrides)
    if not cfg.train.init_from:
        return cfg
    in_file = read_toml(find_config(args.config)).get("model", {}) if args.config else {}
    return init_config(cfg, [*overrides, *(f"model.{key}" for key in in_file)])


def closing_line(result: TrainResult) -> str:
    """The best val loss with the step it was measured at (not the step training stopped at)."""
    seen = {step: loss for step, loss in result.val_losses.items()
            if loss == result.best_val_loss}  # this process's evaluations (a resumed run's
    where = f" at step {min(seen)}" if seen else ""  # earlier ones are in its TensorBoard log)
    if result.best_val_loss == float("inf"):
        return f"no evaluation yet; stopped after {result.step} steps"
    return f"best val loss {result.best_val_loss:.4f}{where}; {result.step} steps trained"


def prepare(cfg: Config, quiet: bool) -> None:
    """--prepare-only: the data's shards made (or found), and what they hold."""
    started = time.perf_counter()
    with StopRequest() as stop:
        data = prepare_data(cfg.data, cfg.model.context_length, progress=not quiet,
                            interrupted=lambda: stop.reason is not None)
    print(f"{data.source}: {len(data.train):,} train and {len(data.val):,} val tokens "
          f"({data.tokenizer.kind} tokenizer, {data.tokenizer.vocab_size:,} ids) ready in "
          f"{time.perf_counter() - started:.1f} s")


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    if args.eval_only:
        if not args.resume or args.resume == AUTO or args.config:
            raise ConfigError("--eval-only evaluates a run: pass --resume RUN_DIR (and no --config)")
        evaluate_run(args.resume, overrides)
        return 0
    cfg, resume = run_config(args, overrides)
    if args.prepare_only:
        prepare(cfg, quiet=args.quiet)
        return 0
    tune_process()  # process-wide speed settings (glibc keeps freed memory; TF32 on CUDA)
    result = train(cfg, resume=resume, progress=not args.quiet, log=tqdm.write)
    if (torchrun_ranks() or (0,))[0] == 0:  # rank 0 prints what to do next
        print(closing_line(result))
        prompt = f' --prompt "{result.prompt}"' if result.prompt else ""  # none: it could not
        print(f"sample:   python generate.py --checkpoint {result.run_dir}{prompt}")  # be encoded
        print(f"inspect:  tensorboard --logdir {result.run_dir.parent}")
        if result.stopped_by:
            print(f"resume:   python train.py --resume {result.run_dir}")
    return exit_code(result.stopped_by)


if __name__ == "__main__":
    from minigpt.cli import run_cli

    run_cli(main, whole_process=True)
