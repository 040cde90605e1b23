"""Checkpoints: one self-describing file per save, holding only tensors and plain Python data.

A checkpoint is a dict with "format" == "minigpt" and a "version"; it holds the model weights, the
model config, the tokenizer (as plain data), the run config, and for resuming the optimizer state,
the step, the best validation loss and the random-number states. Loading uses
torch.load(weights_only=True), so a file can never run code. Saving writes a temporary file, syncs
it and renames it over the old one, so a crash mid-save leaves the previous checkpoint intact.

    model, tokenizer = load("runs/default-20261127-101500")   # best.pt of a run, or a .pt file
    model, tokenizer = load("path/to/gpt2")   # a Hugging Face GPT-2 directory (minigpt.gpt2)
"""

import pickle
import re
import warnings
from pathlib import Path

import torch

from minigpt.errors import CheckpointError
from minigpt.files import atomic_write, path_problem
from minigpt.gpt2 import gpt2_description, hub_directory, is_gpt2_dir, load_gpt2
from minigpt.model import GPT, ModelConfig
from minigpt.tokenizer import Tokenizer, tokenizer_from_dict

FORMAT = "minigpt"
# 1: one optimizer state dict under "optimizer". 2: a list of them (one per torch.optim
# optimizer) under "optimizers". Both load; see minigpt.training for resuming a version 1 run.
VERSION = 2
CHECKPOINT_NAMES = ("best.pt", "last.pt")
MAX_PARAMS = 20_000_000_000
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # "gpt2", "openai-community/gpt2-medium"


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write state (plus format and version) to path atomically: a failed save (a full disk, a
    kill) leaves the previous file as it was."""
    try:
        atomic_write(path, lambda f: torch.save({"format": FORMAT, "version": VERSION, **state}, f))
    except OSError as err:
        raise CheckpointError(f"could not save {path}: {err.strerror or err}; the previous "
                              f"checkpoint there, if any, is unchanged") from None


def check_path(path: str | Path) -> None:
    """Refuse, with a CheckpointError, a path that no file system can hold (see path_problem)."""
    problem = path_problem(path)
    if problem:
        raise CheckpointError(f"{str(path)[:80]!r} cannot be a checkpoint path: {problem}")


def newest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint a run would resume from: last.pt, else best.pt, else None (a run stopped
    before its first save)."""
    found = [Path(run_dir) / name for name in reversed(CHECKPOINT_NAMES)
             if (Path(run_dir) / name).is_file()]
    return found[0] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file: path itself, or a run directory's best.pt (else last.pt)."""
    check_path(path)
    path = Path(path)
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} holds no checkpoint ({' or '.join(CHECKPOINT_NAMES)}); "
                              f"train first with python train.py, or pass a .pt file")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found; pass a .pt file or a run directory")
    return path


def list_runs(out_dir: str | Path = "runs") -> list[Path]:
    """The run directories directly under out_dir that hold a checkpoint, newest first (none when
    out_dir cannot exist)."""
    if path_problem(out_dir):
        return []
    runs = {p.parent for name in CHECKPOINT_NAMES for p in Path(out_dir).glob(f"*/{name}")}
    return sorted(runs, key=lambda run: max(p.stat().st_mtime for p in run.glob("*.pt")),
                  reverse=True)


def latest_run(out_dir: str | Path = "runs") -> Path:
    """The most recently written run directory under out_dir that holds a checkpoint."""
    runs = list_runs(out_dir)
    if not runs:
        raise CheckpointError(f"no trained run found in {out_dir}/; train one with python train.py "
                              f"or pass --checkpoint PATH")
    return runs[0]


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The checked contents of a checkpoint file (or a run directory's best checkpoint)."""
    path = resolve_checkpoint(path)
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch names the refused global ("Unsupported global: GLOBAL posix.system", "Trying to
        # load unsupported GLOBAL ..."), in words that vary between versions.
        if "global" not in str(err).lower():
            raise CheckpointError(f"{path} is damaged or not a checkpoint file") from None
        raise CheckpointError(f"{path} was refused: it holds objects other than tensors and plain "
                              f"data (such as a function to call), which could run code when "
                              f"loaded; load checkpoints only from sources you trust") from None
    except Exception as err:  # a damaged zip or pickle fails in many ways, all meaning the same
        raise CheckpointError(f"{path} is truncated or not a checkpoint file "
                              f"({type(err).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a PyTorch file but not a minigpt checkpoint")
    version = state.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path} has no valid format version ({version!r}); the file is "
                              f"damaged")
    if version > VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version}, newer than this "
                              f"minigpt reads ({VERSION}); upgrade minigpt")
    for key in ("model", "model_config", "tokenizer"):
        if key not in state:
            raise CheckpointError(f"{path} is missing {key!r}; the file is damaged")
    if not isinstance(state["model"], dict):
        raise CheckpointError(f"{path} holds no weights (its 'model' is a "
                              f"{type(state['model']).__name__}, not a dict of tensors); the file "
                              f"is damaged")
    return state


def checkpoint_description(state: dict) -> tuple[ModelConfig, Tokenizer]:
    """The checked model config and tokenizer of a loaded checkpoint."""
    try:
        cfg = ModelConfig.from_dict(state["model_config"])
        tokenizer = tokenizer_from_dict(state["tokenizer"])
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint holds an unusable config or tokenizer: {err}") from None
    if tokenizer.vocab_size != cfg.vocab_size:
        raise CheckpointError(f"checkpoint's tokenizer has {tokenizer.vocab_size} tokens but its "
                              f"model expects {cfg.vocab_size}; the file is inconsistent")
    size = GPT.count_params(cfg)  # counted without building anything
    if size > MAX_PARAMS:
        raise CheckpointError(f"checkpoint's model config asks for {size:,} parameters, more than "
                              f"minigpt loads ({MAX_PARAMS:,}); the file is not trustworthy")
    return cfg, tokenizer


def model_from_checkpoint(state: dict, device="cpu") -> tuple[GPT, Tokenizer]:
    """Rebuild the model and tokenizer stored in a loaded checkpoint."""
    cfg, tokenizer = checkpoint_description(state)
    bad = [name for name, t in state["model"].items()
           if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"checkpoint weights hold NaN or infinite values ({', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}); the model cannot sample, so use "
                              f"an earlier checkpoint of the run")
    model = GPT(cfg)
    try:
        model.load_state_dict(state["model"], strict=True)
    except (RuntimeError, TypeError) as err:
        detail = " ".join(str(err).split())[:300]
        raise CheckpointError(f"checkpoint weights do not fit its own model config: {detail}") \
            from None
    return model.to(device).eval(), tokenizer


def looks_like_hub_name(path: str | Path) -> bool:
    """A name such as "gpt2" or "openai-community/gpt2": nothing by that name here, no checkpoint
    suffix, and not inside a directory that exists here (such as runs/)."""
    path = Path(path)
    return (HUB_NAME.fullmatch(path.as_posix()) is not None and not path.exists()
            and path.suffix not in (".pt", ".bin", ".safetensors")
            and not (len(path.parts) > 1 and Path(path.parts[0]).exists()))


def gpt2_source(path: str | Path | None) -> Path | None:
    """The GPT-2 directory that path names: itself, or a hub name's download; None for a
    minigpt checkpoint or run."""
    if path is None:
        return None
    check_path(path)
    if is_gpt2_dir(path):
        return Path(path)
    return hub_directory(str(path)) if looks_like_hub_name(path) else None


def load(path: str | Path | None = None, device="cpu", out_dir: str | Path = "runs"):
    """(model, tokenizer) from a checkpoint file or run directory (by default the latest run), a
    Hugging Face GPT-2 directory, or a hub name such as "gpt2" (fetched where that is possible)."""
    directory = gpt2_source(path)
    if directory is not None:
        return load_gpt2(directory, device)
    return model_from_checkpoint(load_checkpoint(path or latest_run(out_dir)), device)


def describe(path: str | Path) -> tuple[ModelConfig, Tokenizer]:
    """The model config and tokenizer that load(path) would give, without building the model
    (nor reading a GPT-2 directory's weights): what a fine-tuning run's config needs."""
    directory = gpt2_source(path)
    if directory is not None:
        return gpt2_description(directory)
    return checkpoint_description(load_checkpoint(path))
