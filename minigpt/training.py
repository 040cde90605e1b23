"""The training loop: `train(cfg)` trains a GPT as the config says and returns what happened.

    from minigpt.config import load_config
    from minigpt.training import train
    result = train(load_config("configs/default.toml"))

`train()` reads top to bottom in four phases, each in a module of its own:

1. set up the run (`Run.start`, minigpt/run.py): device and ranks, data, model, optimizers, the
   run directory; all that can fail is checked before anything is written (resuming and
   fine-tuning: minigpt/resume.py);
2. the step (`Trainer.step`, minigpt/step.py): grad_accum micro-batches forward and backward,
   clip, optimizer step, at the learning rate (and momentum) of `Trainer.schedule`;
3. every eval_interval steps (`evaluate`, minigpt/evaluation.py): the loss on both splits,
   best.pt, the probe's sample and attention images; every checkpoint_interval steps: last.pt;
4. finish: last.pt when stopped early (Ctrl-C, SIGTERM: minigpt/stopping.py; stop_at, the
   target loss), the HParams summary, closing the log and the process group.

Under torchrun it trains with DistributedDataParallel; `minigpt.runtime.Runtime` holds that.
"""

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from minigpt.checkpoint import newest_checkpoint
from minigpt.config import Config
from minigpt.errors import DiskFullError, TrainingError
from minigpt.evaluation import evaluate, log_probe
from minigpt.model import GPT
from minigpt.run import Run
from minigpt.step import Diverged, NonFiniteLoss
from minigpt.stopping import StopRequest
from minigpt.tracking import TensorBoardLog


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # optimizer steps completed
    best_val_loss: float
    losses: list[float] = field(default_factory=list)  # train loss of each step of this process
    val_losses: dict[int, float] = field(default_factory=dict)  # step -> val loss
    val_seconds: dict[int, float] = field(default_factory=dict)  # step -> s since train() began
    step_seconds: list[float] = field(default_factory=list)  # each step's time, evals excluded
    stopped_by: str | None = None  # the signal name when interrupted
    target_step: int | None = None  # the step whose val loss reached train.target_val_loss
    first_step_s: float | None = None  # s since train() began when this process's first step began
    model: GPT | None = None  # the trained model, as it is at the end
    prompt: str = ""  # train.sample_prompt if the tokenizer could encode it, else ""


def record_step(run: Run, result: TrainResult, board: TensorBoardLog, bar: tqdm, loss: float,
                lr: float, grad_norm: float, seconds: float) -> None:
    """One step's loss and time in the result, on the progress bar and in TensorBoard."""
    result.step_seconds.append(seconds)
    result.losses.append(loss)
    tokens_per_sec = run.tokens_per_step / seconds
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_sec:,.0f}",
                    refresh=False)
    board.step(run.step, loss, lr, grad_norm, tokens_per_sec)


def record_evaluation(run: Run, result: TrainResult, losses: dict[str, float],
                      seconds: float) -> None:
    """An evaluation's val loss and time in the result, and whether it reached the target (every
    rank sees the same val loss, so all of them stop together)."""
    result.val_losses[run.step], result.val_seconds[run.step] = losses["val"], seconds
    target = run.cfg.train.target_val_loss
    if 0 < target and losses["val"] <= target:
        result.target_step = run.step


def stop_at_target(run: Run, result: TrainResult, say: Callable[[str], None]) -> None:
    """The last evaluation reached train.target_val_loss: say when, and save last.pt."""
    say(f"val {result.val_losses[run.step]:.4f} <= train.target_val_loss "
        f"{run.cfg.train.target_val_loss} at step {run.step}, "
        f"{result.val_seconds[run.step]:.1f} s after start: stopping")
    run.save("last.pt")


def diverged(what: str, run: Run) -> TrainingError:
    """The error that ends a run whose loss or weights became NaN or infinite."""
    kept = (f"the checkpoints in {run.dir} are the last good ones" if newest_checkpoint(run.dir)
            else "before its first checkpoint")
    return TrainingError(f"{what}; stopped ({kept}); try a lower train.lr")


def save_stopped_run(run: Run, result: TrainResult, stop: "StopRequest", stop_at: int | None,
                     say: Callable[[str], None]) -> None:
    """Phase 4 of a run stopped before max_steps (a signal, Cancel, stop_at): save last.pt and
    print how to continue. A second signal does not cut this short."""
    with stop.protected():
        result.stopped_by = stop.reason or (f"stop_at={stop_at}" if stop_at and run.step >= stop_at
                                            else "a signal to another rank")
        run.save("last.pt")
        say(f"{result.stopped_by}: saved {run.dir / 'last.pt'} at step {run.step}; "
            f"continue with: python train.py --resume {run.dir}")


def close_run(run: Run, board: TensorBoardLog, bar: tqdm, result: TrainResult,
              failing: BaseException | None) -> None:
    """The end of phase 4, however the run ends: the bar, the HParams summary and the log
    closed, the process group and the run directory's lock released. A full disk met here is
    reported only when no other error (failing) ends the run already, which says more."""
    bar.close()
    try:
        board.close(run.cfg.to_dict(), run.best_val, result.losses[-1] if result.losses else None)
    except DiskFullError:
        if failing is None:
            raise
    finally:
        run.close()


def train(cfg: Config, resume: str | Path | None = None, stop_at: int | None = None,
          progress: bool = True, log: Callable[[str], None] = lambda line: None,
          on_step: Callable[[int, int], None] | None = None,
          cancelled: Callable[[], bool] | None = None) -> TrainResult:
    """Train as cfg says; see the module docstring.

    resume: a run directory to continue from its last.pt (cfg from `resume_config`).
    stop_at: pause after this many steps, saving last.pt as an interruption would.
    progress: show a tqdm bar. log: receives the run's header lines (train.py prints them).
    on_step: called with (step, max_steps) after each optimizer step, e.g. for a progress display.
    cancelled: checked before each step; once it returns True, training stops as on Ctrl-C
    (last.pt saved, resumable); the demo app's Cancel button uses it.
    """
    started = time.perf_counter()
    with StopRequest(cancelled) as stop:  # from here on, Ctrl-C and SIGTERM end in a last.pt
        run = Run.start(cfg, resume, stop)  # 1. set up the run
        tc, master = run.cfg.train, run.runtime.master
        board = run.open_log(log)
        bar = tqdm(total=tc.max_steps, initial=run.step, disable=not (progress and master),
                   dynamic_ncols=True, unit="step")
        say = (bar.write if progress else log) if master else (lambda line: None)
        result = TrainResult(run.dir, run.step, run.best_val, prompt=run.prompt)
        try:
            if run.step == 0 and master and tc.probe:  # the picture before training
                log_probe(run, board)
            while (run.step < min(tc.max_steps, stop_at or tc.max_steps)
                   and not run.runtime.any_rank(stop.reason is not None)):
                lr = run.trainer.schedule(run.step)
                step_start = time.perf_counter()
                if result.first_step_s is None:  # set-up, data and the first probe are done
                    result.first_step_s = step_start - started
                loss, grad_norm = run.trainer.step(run.next_batch)  # 2. the step
                run.step += 1
                record_step(run, result, board, bar, loss, lr, grad_norm,
                            time.perf_counter() - step_start)
                if on_step is not None:
                    on_step(run.step, tc.max_steps)
                if run.step % tc.eval_interval == 0 or run.step == tc.max_steps:  # 3. evaluate
                    record_evaluation(run, result, evaluate(run, board, say),
                                      time.perf_counter() - started)
                if result.target_step == run.step:
                    stop_at_target(run, result, say)
                    break
                if run.step % tc.checkpoint_interval == 0 or run.step == tc.max_steps:
                    run.save("last.pt")
            if result.target_step is None and run.step < tc.max_steps:  # 4. finish
                save_stopped_run(run, result, stop, stop_at, say)
            elif result.target_step is None and tc.target_val_loss > 0:
                say(f"train.target_val_loss {tc.target_val_loss} not reached in {tc.max_steps} "
                    f"steps (best val {run.best_val:.4f}); train longer with --train.max_steps")
        except NonFiniteLoss as err:
            raise diverged(f"loss became {err} at step {run.step + 1}", run) from None
        except Diverged as err:
            raise diverged(f"{err} after step {run.step}", run) from None
        finally:
            with stop.protected():
                close_run(run, board, bar, result, failing=sys.exc_info()[1])
    result.step, result.best_val_loss, result.model = run.step, run.best_val, run.trainer.model
    return result
