"""Where a run starts from: the config and training state of a run being resumed, or the
weights and shape of a model being fine-tuned (train.init_from).

    cfg = resume_config("runs/default-20261127-101500", {"train.max_steps": "2000"})
    state = load_resume_state("runs/default-20261127-101500", cfg)   # the newest checkpoint
"""

import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import torch

from minigpt.checkpoint import CHECKPOINT_NAMES, check_path, describe, load_checkpoint
from minigpt.config import DERIVED_KEYS, Config, build_config, parse_value
from minigpt.errors import CheckpointError, ConfigError
from minigpt.model import GPT, ModelConfig
from minigpt.tokenizer import Tokenizer, tokenizer_from_dict


def resume_config(run_dir: str | Path, overrides: dict[str, str] | None = None) -> Config:
    """The config of the run in run_dir (its config.json), with train.* keys overridden."""
    check_path(run_dir)
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.json); pass the "
                              f"directory that train.py printed")
    try:
        values = _settable(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError, RecursionError) as err:
        raise CheckpointError(f"{path} is damaged: {err}") from None
    for key, text in (overrides or {}).items():
        if not key.startswith("train."):
            raise ConfigError(f"{key} cannot change when resuming; only train.* keys can")
        values.setdefault("train", {})[key.split(".", 1)[1]] = parse_value(key, text)
    return build_config(values)


def _settable(values: dict) -> dict:
    """A saved config without its derived keys, ready for build_config."""
    return {section: {k: v for k, v in table.items() if (section, k) not in DERIVED_KEYS}
            for section, table in values.items()}


def load_resume_state(run_dir: str | Path, cfg: Config, path: Path | None = None,
                      master: bool = True) -> dict | None:
    """The newest usable checkpoint of run_dir (last.pt, else best.pt) or path, checked to belong
    to a run of the same model and data; None for a run stopped before its first checkpoint.
    A damaged last.pt falls back to a good best.pt (or the reverse) with a warning naming both;
    the damaged file is moved aside (by the master rank), never deleted."""
    if path is not None:
        return checked_state(path, run_dir, cfg)
    candidates = [Path(run_dir) / name for name in reversed(CHECKPOINT_NAMES)
                  if (Path(run_dir) / name).is_file()]
    damaged: list[tuple[Path, CheckpointError]] = []
    for candidate in candidates:
        try:
            state = checked_state(candidate, run_dir, cfg)
        except CheckpointError as err:
            damaged.append((candidate, err))
            continue
        for bad, err in damaged:
            kept = move_aside(bad) if master else bad
            if master:
                warnings.warn(f"{bad} cannot be resumed ({err}); resuming from {candidate} "
                              f"(step {state.get('step')}) instead, and {bad} is kept as "
                              f"{kept.name}", stacklevel=2)
        return state
    if len(damaged) > 1:
        raise CheckpointError(f"no checkpoint of {run_dir} can be resumed: "
                              + "; ".join(str(err) for _, err in damaged))
    if damaged:
        raise damaged[0][1]
    return None


def checked_state(path: Path, run_dir: str | Path, cfg: Config) -> dict:
    state = load_checkpoint(path)
    try:
        saved = build_config(_settable(state["config"]))
    except (KeyError, AttributeError, TypeError, ConfigError) as err:
        raise CheckpointError(f"{path} holds no usable run config ({type(err).__name__}: "
                              f"{str(err)[:120]}); sample from it with generate.py, or start a "
                              f"new run from its weights with --init-from") from None
    if (saved.model, saved.data) != (cfg.model, cfg.data):
        raise ConfigError(f"the model/data config differs from the run in {run_dir}; only "
                          f"train.* keys can change when resuming")
    return state


def move_aside(path: Path) -> Path:
    """Rename a damaged checkpoint to NAME.damaged-TIME (NAME.damaged-TIME-N if taken), out of
    the way of resuming and saving, and keep it for whoever wants to look at it."""
    stem = f"{path.name}.damaged-{datetime.now():%Y%m%d-%H%M%S}"
    target, n = path.with_name(stem), 1
    while target.exists():
        target, n = path.with_name(f"{stem}-{n}"), n + 1
    os.replace(path, target)
    return target


def saved_tokenizer(state: dict) -> Tokenizer:
    """The tokenizer a checkpoint was trained with: a resumed run keeps encoding text with it."""
    try:
        return tokenizer_from_dict(state["tokenizer"])
    except ValueError as err:
        raise CheckpointError(f"the checkpoint's tokenizer is unusable: {err}") from None


def init_config(cfg: Config, asked: Iterable[str] = ()) -> Config:
    """The config of a run starting from cfg.train.init_from's weights: the model shape and the
    tokenizer are the source's; model.dropout is cfg's, and cfg may shorten model.context_length.
    asked names the model keys the user set ("model.embed_dim", from the command line or the
    config file); one that differs from the source is refused, since the weights would not fit."""
    model_cfg, tokenizer = describe(cfg.train.init_from)
    for key in asked:
        name = key.removeprefix("model.")
        if name == key or name == "dropout":
            continue
        wanted, fixed = getattr(cfg.model, name), getattr(model_cfg, name)
        if name == "context_length" and wanted <= fixed:
            model_cfg = replace(model_cfg, context_length=wanted)
        elif wanted != fixed:
            raise ConfigError(f"model.{name} = {wanted!r} does not fit the weights of "
                              f"{cfg.train.init_from}, which have model.{name} = {fixed!r}; "
                              f"drop it (only model.dropout, and a shorter model.context_length, "
                              f"can change when fine-tuning)")
    model_cfg = replace(model_cfg, dropout=cfg.model.dropout, vocab_size=None)
    data_cfg = replace(cfg.data, tokenizer=tokenizer.kind)
    cfg = replace(cfg, model=model_cfg, data=data_cfg)
    cfg.check_train_window(pretrained=True)
    return cfg


def initial_weights(source: GPT, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """source's weights for a model of config cfg: the same shape except for dropout and a
    context that may be shorter (a learned position table is cut to it)."""
    same = replace(source.config, dropout=cfg.dropout, context_length=cfg.context_length)
    if same != cfg or cfg.context_length > source.config.context_length:
        raise ConfigError("the model config differs from that of train.init_from's weights; build "
                          "it with resume.init_config (train.py --init-from does)")
    state = source.state_dict()
    if "pos_emb.weight" in state:
        state["pos_emb.weight"] = state["pos_emb.weight"][:cfg.context_length]
    return state
