"""One training run's life: everything checked before anything is written (`Run.start`), the
run directory, its header lines and TensorBoard log, and how the run is checkpointed.

    run = Run.start(cfg)            # or Run.start(cfg, resume="runs/NAME")
    board = run.open_log(print)     # creates the directory, config.json and the TensorBoard log
    run.save("last.pt")
"""

import contextlib
import json
import warnings
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path

import torch

from minigpt.checkpoint import load, newest_checkpoint, save_checkpoint
from minigpt.config import LIMITS, Config, TrainConfig
from minigpt.data import Dataset, Epochs, get_batch, prepare_data
from minigpt.errors import CheckpointError, ConfigError, MiniGPTError, TrainingError
from minigpt.files import atomic_write
from minigpt.inspection import SNAPSHOTS, load_snapshots
from minigpt.lock import RunLock
from minigpt.model import GPT, ModelConfig
from minigpt.resume import initial_weights, load_resume_state, saved_tokenizer
from minigpt.runtime import Runtime, device_memory
from minigpt.step import Diverged, Trainer
from minigpt.stopping import StopRequest
from minigpt.tracking import TensorBoardLog

NOT_CAUSAL = ("model.causal = false: every token can see the tokens after it, including the one "
              "it must predict, so the training loss will fall towards zero by copying the answer. "
              "The model learns nothing it can use to generate; this run only shows why the "
              "causal mask exists.")


class Run:
    """One training run: config, runtime, data, trainer, directory and counters, and how it is
    checkpointed. Build it with `Run.start`."""

    def __init__(self, cfg: Config, runtime: Runtime, data: Dataset, trainer: Trainer,
                 directory: Path, probe: list[int], prompt: str):
        self.cfg, self.runtime, self.data, self.trainer = cfg, runtime, data, trainer
        self.dir, self.probe = directory, probe
        self.prompt = prompt  # train.sample_prompt when it is the probe prompt (see probe_ids)
        self.step, self.best_val = 0, float("inf")
        self.batches = torch.Generator().manual_seed(cfg.train.seed)  # draws every rank's batches
        self.epochs = (Epochs(len(data.train), cfg.train_window, self.batches)
                       if cfg.data.sampling == "epochs" else None)
        self.snapshots: dict | None = None  # snapshots.pt's contents, once the first is kept
        self.stop, self.lock = StopRequest(), None  # set by start
        self.tokens_per_step = (cfg.train.batch_size * cfg.train.grad_accum * runtime.world_size
                                * cfg.train_window)

    @classmethod
    def start(cls, cfg: Config, resume: str | Path | None = None,
              stop: "StopRequest | None" = None) -> "Run":
        """Check everything that can fail, then build the model and trainer (and load the
        checkpoint when resuming). Rank 0 first takes the run directory's lock (one run per
        directory, minigpt.lock); nothing else is written yet but the removal of what an
        interrupted start or save left behind."""
        if not cfg.model.causal:
            warnings.warn(NOT_CAUSAL, stacklevel=3)
        runtime = Runtime.from_config(cfg.train)
        directory = Path(resume) if resume is not None else new_run_dir(cfg)
        created = next((d for d in reversed([directory, *directory.parents]) if not d.exists()),
                       None)  # the outermost folder that taking the lock creates
        lock = RunLock.take(directory) if runtime.master else None
        try:
            if resume is None and runtime.master:
                check_unused(directory)  # again: another start may have trained there since
            run = cls._start(cfg, resume, runtime, directory, stop)
        except BaseException:
            if lock is not None:
                lock.release()
                if created is not None:
                    remove_empty(directory, created)
            raise
        run.stop, run.lock = stop or StopRequest(), lock
        return run

    @classmethod
    def _start(cls, cfg: Config, resume: str | Path | None, runtime: Runtime,
               directory: Path, stop: "StopRequest | None") -> "Run":
        state = (load_resume_state(resume, cfg, master=runtime.master) if resume is not None
                 else None)
        init = load(cfg.train.init_from) if state is None and cfg.train.init_from else None
        tokenizer = saved_tokenizer(state) if state is not None else init[1] if init else None
        data = prepare_data(cfg.data, cfg.model.context_length, tokenizer, progress=runtime.master,
                            interrupted=lambda: stop is not None and stop.reason is not None)
        cfg = replace(cfg, model=replace(cfg.model, vocab_size=data.tokenizer.vocab_size))
        check_fits(cfg.model, cfg.train, runtime.device,
                   runtime.world_size if runtime.fsdp else 1)
        probe, prompt = probe_ids(data, cfg) if cfg.train.probe else ([], "")
        if runtime.master:
            clear_unstarted(directory)
        runtime.start()
        try:
            return cls._build(cfg, runtime, data, directory, probe, prompt, init, state)
        except BaseException:
            with contextlib.suppress(Exception):  # the failure that got here is the one to report
                runtime.close()  # the process group this start joined is left again
            raise

    @classmethod
    def _build(cls, cfg: Config, runtime: Runtime, data: Dataset, directory: Path,
               probe: list[int], prompt: str, init, state: dict | None) -> "Run":
        """The model and trainer, and a resumed run's state, once the process group is joined."""
        torch.manual_seed(cfg.train.seed)
        model = GPT(cfg.model)
        if init is not None:
            model.load_state_dict(initial_weights(init[0], cfg.model))
        model = model.to(runtime.device)
        run = cls(cfg, runtime, data, Trainer(model, cfg.train, runtime), directory, probe, prompt)
        if state is not None:
            try:
                run.load_state_dict(state)
            except MiniGPTError:
                raise
            except (KeyError, TypeError, ValueError, RuntimeError, NotImplementedError) as err:
                raise CheckpointError(
                    f"the checkpoint in {directory} cannot be resumed: its training state is "
                    f"damaged ({type(err).__name__}: {str(err)[:120]}); its weights may still "
                    f"sample, or start a new run from them with --init-from") from None
        return run

    def close(self) -> None:
        """The end of the run in this process: the process group closed, the lock released."""
        self.runtime.close()
        if self.lock is not None:
            self.lock.release()

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's micro-batch. One draw serves all ranks, each taking its own slice: every
        rank's stream differs, and the generator state saved by rank 0 resumes all of them."""
        tc, rank = self.cfg.train, self.runtime.rank
        count = tc.batch_size * self.runtime.world_size
        x, y = get_batch(self.data.train, count, self.cfg.train_window, self.batches,
                         self.data.release, self.epochs.draw(count) if self.epochs else None)
        mine = slice(rank * tc.batch_size, (rank + 1) * tc.batch_size)
        return x[mine].to(self.runtime.device), y[mine].to(self.runtime.device)

    def save(self, name: str) -> None:
        """Write the checkpoint `name` in the run directory (rank 0 only). Weights that are no
        longer finite raise Diverged instead, on every rank, so no save overwrites a good one."""
        local = [getattr(p, "to_local", lambda p=p: p)() for p in self.trainer.model.parameters()]
        if self.runtime.any_rank(not bool(torch.stack([p.isfinite().all() for p in local]).all())):
            raise Diverged("the weights became NaN or infinite")  # FSDP: this rank's shards
        state = self.state_dict()  # under FSDP every rank gathers, rank 0 gets it whole
        if not self.runtime.master:
            return
        with self.stop.protected():  # a second Ctrl-C does not cut a save short
            save_checkpoint(self.dir / name, state)

    def state_dict(self) -> dict:
        return {
            "model_config": asdict(self.cfg.model),
            "tokenizer": self.data.tokenizer.to_dict(), "config": self.cfg.to_dict(),
            **self.trainer.state_dict(), "step": self.step, "best_val_loss": self.best_val,
            "rng": {**self.runtime.rng_state(), "batches": self.batches.get_state()},
            **({"epochs": self.epochs.state_dict()} if self.epochs else {})}

    def keep_snapshot(self, snapshot: dict) -> None:
        """Add what the model does with the probe prompt now to the run's snapshots.pt, which the
        app plays back with a step slider (rank 0 only; a write failure costs only that file)."""
        if not self.runtime.master:
            return
        if self.snapshots is None:  # this process's first evaluation: take over the file's
            kept = load_snapshots(self.dir) or {"steps": [], "snapshots": []}
            earlier = [i for i, s in enumerate(kept["steps"]) if s < self.step]  # resumed: redo
            self.snapshots = {"tokens": self.probe_tokens(),
                              "steps": [kept["steps"][i] for i in earlier],
                              "snapshots": [kept["snapshots"][i] for i in earlier]}
        self.snapshots["steps"].append(self.step)
        self.snapshots["snapshots"].append(snapshot)
        try:
            with self.stop.protected():
                atomic_write(self.dir / SNAPSHOTS, lambda f: torch.save(self.snapshots, f))
        except OSError:
            pass

    def load_state_dict(self, state: dict) -> None:
        step, best = state["step"], state["best_val_loss"]
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= LIMITS["max_steps"]:
            raise ValueError(f"step {step!r}")
        if isinstance(best, bool) or not isinstance(best, (int, float)):
            raise TypeError(f"best_val_loss {best!r}")
        self.trainer.load_state_dict(state)
        self.step, self.best_val = state["step"], state["best_val_loss"]
        if self.epochs is not None:
            # saved before epochs kept their length: windows of the whole context then
            self.epochs.load_state_dict({"length": self.cfg.model.context_length, **state["epochs"]})
        self.batches.set_state(state["rng"]["batches"])
        self.runtime.set_rng_state(state["rng"])

    def open_log(self, log: Callable[[str], None]) -> TensorBoardLog:
        """Rank 0 creates the run directory, writes config.json, opens TensorBoard and prints the
        run's header lines through log; other ranks get a log that writes nothing. Should that
        fail, the run is closed (its lock released)."""
        try:
            return self._open_log(log)
        except BaseException:
            self.close()
            raise

    def _open_log(self, log: Callable[[str], None]) -> TensorBoardLog:
        if not self.runtime.master:
            return TensorBoardLog(None)
        config = self.cfg.to_dict()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            text = (json.dumps(config, indent=2) + "\n").encode("utf-8")
            atomic_write(self.dir / "config.json", lambda f: f.write(text))
        except OSError as err:
            raise TrainingError(f"cannot write the run directory {self.dir}: "
                                f"{err.strerror or err}; choose a writable --train.out_dir") from None
        board = TensorBoardLog(self.dir)
        board.start(config, self.probe_tokens(), self.step)
        table = self.trainer.model.pos_emb.vectors()
        if table is not None and self.cfg.train.probe:
            board.positions(self.cfg.model.pos_encoding, table, self.step)
        model, tokenizer = self.trainer.model, self.data.tokenizer
        log(f"config: {self.cfg.name}, every setting in {self.dir / 'config.json'} "
            f"(python train.py --help lists them)")
        log(f"data: {self.data.source}, {len(self.data.train):,} train / {len(self.data.val):,} "
            f"val tokens, {tokenizer.kind} tokenizer with {tokenizer.vocab_size} tokens")
        log(f"model: {model.num_params():,} parameters "
            f"({model.num_params(non_embedding=True):,} outside embeddings and head)")
        log(f"device: {self.runtime.device} ({str(self.runtime.dtype).removeprefix('torch.')}), "
            f"world size {self.runtime.world_size}, {self.tokens_per_step:,} tokens per step")
        log(f"run directory: {self.dir}" + (f" (resuming at step {self.step})" if self.step else ""))
        return board

    def probe_tokens(self) -> list[str]:
        return [self.data.tokenizer.decode([i]) for i in self.probe]


def new_run_dir(cfg: Config) -> Path:
    """The directory of a new run. One that exists but holds no checkpoint is a start that was
    stopped early: it is used again (re-running the same command goes on from there)."""
    name = cfg.train.run_name or f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(cfg.train.out_dir) / name
    check_unused(run_dir)
    return run_dir


def check_unused(run_dir: Path) -> None:
    """Refuse to start a new run in run_dir when it is a file or holds a run already."""
    if run_dir.is_file():
        raise TrainingError(f"{run_dir} is a file, not a run directory; choose another "
                            f"--train.run_name or --train.out_dir")
    if newest_checkpoint(run_dir) is not None:
        raise TrainingError(f"run directory {run_dir} already holds a run; continue it with "
                            f"--resume {run_dir} or choose another --train.run_name")


def remove_empty(directory: Path, top: Path) -> None:
    """Remove directory and its parents up to top while they are empty: the folders a start
    that failed its checks created."""
    for folder in [directory, *directory.parents]:
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == top:
            return


def clear_unstarted(run_dir: Path) -> None:
    """Remove what a start stopped before its first checkpoint left (config, TensorBoard events)
    and the temporary files of saves cut short by a kill, so the run starts clean."""
    if not run_dir.is_dir():
        return
    leftovers = [*run_dir.glob(".*.tmp")]
    if newest_checkpoint(run_dir) is None:
        leftovers += [*run_dir.glob("events.out.tfevents.*"), run_dir / "config.json",
                      run_dir / SNAPSHOTS]
    for path in leftovers:
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            raise TrainingError(f"cannot clean up {path}: {err.strerror or err}") from None


def check_fits(cfg: ModelConfig, tc: TrainConfig, device: torch.device, shards: int = 1) -> None:
    """Refuse, before allocating anything, a run that cannot fit the device: the weights,
    gradients and AdamW moments (4 fp32 copies, split between `shards` ranks under FSDP), plus a
    micro-batch's activations, estimated roughly (about 20 C floats per token and layer kept for
    the backward pass, and the logits)."""
    params = GPT.count_params(cfg)
    weights, total = 16 * params // shards, device_memory(device)
    if total is None:  # the OS does not say: let the allocator be the judge
        return
    if weights > total:
        raise ConfigError(f"the model has {params:,} parameters and needs about "
                          f"{weights / 2**30:,.1f} GiB for weights, gradients and optimizer state, "
                          f"more than the {total / 2**30:,.1f} GiB of {device}; choose a smaller model")
    length = tc.seq_len or cfg.context_length
    tokens = tc.batch_size * length
    activations = 4 * tokens * (20 * cfg.num_layers * cfg.embed_dim + 3 * cfg.vocab_size)
    if weights + activations > total:
        raise ConfigError(f"a micro-batch of train.batch_size={tc.batch_size} sequences of "
                          f"{length} tokens needs about {activations / 2**30:,.1f} GiB "
                          f"of activations, more than the {total / 2**30:,.1f} GiB of {device} "
                          f"holds; use a smaller train.batch_size (train.grad_accum keeps the "
                          f"tokens per step)")


def probe_ids(data: Dataset, cfg: Config) -> tuple[list[int], str]:
    """The prompt of the logged samples and attention images (at most 32 tokens), and its text:
    the tokens of train.sample_prompt, else the start of the val split (and ""). A prompt that the
    tokenizer cannot encode (the default one, with a tokenizer learned from another text) costs a
    warning, not the run."""
    limit = min(32, cfg.model.context_length)
    problem = None
    try:
        ids = data.tokenizer.encode(cfg.train.sample_prompt)
        if cfg.train.sample_prompt and not ids:
            problem = "it holds no tokens"
    except ValueError as err:
        ids, problem = [], str(err)
    if problem:
        warnings.warn(f"train.sample_prompt {cfg.train.sample_prompt[:40]!r} cannot be the probe "
                      f"prompt ({problem}); the samples and attention images start from the "
                      f"validation text instead", stacklevel=2)
    if not ids:
        return data.val[:limit].tolist(), ""
    return ids[-limit:], cfg.train.sample_prompt
