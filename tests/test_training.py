"""The training loop: schedule, optimizer groups, accumulation, resume, logs, checkpoints, faults."""

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import run_config, run_together
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.testing import assert_close

import minigpt.evaluation as evaluation
import minigpt.step as step_module
from minigpt.checkpoint import load, load_checkpoint
from minigpt.config import TrainConfig
from minigpt.corpus import load_corpus
from minigpt.data import get_batch, prepare_data
from minigpt.errors import CheckpointError, TrainingError
from minigpt.generation import generate_text
from minigpt.inspection import load_snapshots
from minigpt.model import GPT, ModelConfig
from minigpt.resume import resume_config
from minigpt.runtime import Runtime
from minigpt.step import Trainer, lr_at, muon_momentum_at
from minigpt.tracking import hparams
from minigpt.training import train

ROOT = Path(__file__).resolve().parent.parent


def test_lr_schedule_endpoints():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(1e-4)  # first warmup step
    assert lr_at(9, cfg) == pytest.approx(1e-3)  # warmup reaches the peak
    assert lr_at(10, cfg) == pytest.approx(1e-3)  # cosine starts at the peak
    assert lr_at(60, cfg) == pytest.approx(5.5e-4)  # halfway: the midpoint
    assert lr_at(110, cfg) == pytest.approx(1e-4)  # ends at min_lr
    assert lr_at(500, cfg) == pytest.approx(1e-4)  # and stays there
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 120))


def test_wsd_schedule_holds_the_peak_then_falls_in_a_line():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110, lr_schedule="wsd",
                      cooldown_fraction=0.5)
    assert lr_at(0, cfg) == pytest.approx(1e-4)  # the same warmup
    assert [lr_at(s, cfg) for s in (10, 30, 55)] == pytest.approx([1e-3] * 3)  # stable
    assert lr_at(82, cfg) == pytest.approx(1e-4 + 0.5 * 9e-4, rel=0.02)  # halfway down
    assert lr_at(110, cfg) == pytest.approx(1e-4) and lr_at(500, cfg) == pytest.approx(1e-4)
    assert all(lr_at(s, cfg) > lr_at(s + 1, cfg) for s in range(55, 110))


def test_muon_momentum_warms_up_and_the_trainer_sets_it(tmp_path):
    cfg = run_config(tmp_path, **{"train.optimizer": "muon", "train.muon_momentum_warmup": 4,
                                  "train.muon_momentum": 0.9, "train.max_steps": 6})
    assert [muon_momentum_at(s, cfg.train) for s in range(6)] == pytest.approx(
        [0.85, 0.8625, 0.875, 0.8875, 0.9, 0.9])
    trainer = Trainer(GPT(ModelConfig(vocab_size=11, embed_dim=16, num_layers=1)), cfg.train,
                      Runtime.from_config(cfg.train))
    muon, adamw = trainer.optimizers
    for step, momentum in ((0, 0.85), (2, 0.875), (5, 0.9)):
        lr = trainer.schedule(step)
        assert [g["momentum"] for g in muon.param_groups] == pytest.approx([momentum])
        assert muon.param_groups[0]["lr"] == pytest.approx(lr * cfg.train.muon_lr / cfg.train.lr)
        assert "momentum" not in adamw.param_groups[0]


def test_smoke_run_writes_checkpoints_and_tensorboard_events(tmp_path):
    cfg = run_config(tmp_path, **{"train.max_steps": 24, "train.eval_interval": 8,
                                  "train.lr": 3e-3, "train.probe": True})
    result = train(cfg, progress=False)
    run_dir = tmp_path / "runs" / "test"
    assert result.run_dir == run_dir and result.step == 24
    assert {"best.pt", "last.pt", "config.json"} <= {p.name for p in run_dir.iterdir()}
    assert not list(run_dir.glob("*.tmp"))
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("loss/train", "loss/val", "loss/train_eval", "train/lr", "train/grad_norm",
                "perf/tokens_per_sec"):
        assert tag in tags["scalars"], tag
    assert any("config" in t for t in tags["tensors"]) and any("sample" in t for t in tags["tensors"])
    images = {"probe_attention/layer1", "probe_attention/layer2", "positions/learned"}
    assert images <= set(tags["images"])
    # before training and at each of the 3 evals: watch patterns form
    assert [e.step for e in events.Images("probe_attention/layer1")] == [0, 8, 16, 24]
    assert [e.step for e in events.Images("scores/heads")] == [0, 8, 16, 24]
    for tag in ("scores/induction_max", "scores/in_context_learning"):
        scores = [e.value for e in events.Scalars(tag)]
        assert len(scores) == 4 and all(math.isfinite(v) for v in scores), tag
    assert all(0 < e.value <= 1 for e in events.Scalars("scores/induction_max"))
    image = events.Images("probe_attention/layer1")[0]  # 16 probe tokens, 2 heads, 24 px a token
    assert image.width > 2 * 16 * 24 and image.height > 16 * 24
    train_loss = [e.value for e in events.Scalars("loss/train")]
    assert len(train_loss) == 24 and train_loss[-1] < train_loss[0] - 1.0
    val = [e.value for e in events.Scalars("loss/val")]
    assert len(val) == 3 and val[-1] < val[0]
    hparams, metrics = logged_hparams(run_dir)
    assert hparams["train.max_steps"] == 24 and hparams["model.embed_dim"] == 32
    assert hparams["data.tokenizer"] == "word" and hparams["train.lr"] == pytest.approx(3e-3)
    assert metrics["result/best_val_loss"] == pytest.approx(min(val), abs=1e-6)
    assert metrics["result/final_train_loss"] == pytest.approx(train_loss[-1], abs=1e-6)
    assert "train.out_dir" not in hparams and "data.cache_dir" not in hparams
    assert "data.bpe_vocab_size" not in hparams and "train.muon_lr" not in hparams
    groups = sorted({tag.split("/")[0] for tag in tags["scalars"] + tags["images"]})
    assert groups[0] == "loss"  # TensorBoard's Time Series tab sorts groups: it opens on losses
    kept = torch.load(run_dir / "snapshots.pt", weights_only=True)  # before and at every eval
    assert kept["steps"] == [0, 8, 16, 24] and len(kept["tokens"]) == 16
    first = kept["snapshots"][0]
    assert first["attention"].shape == (2, 2, 16, 16) and first["lens_ids"].shape == (3, 16, 5)
    assert not torch.equal(first["attention"], kept["snapshots"][-1]["attention"])  # it learned
    assert first["head_scores"]["induction"].shape == (2, 2)
    assert first["head_scores"]["loss_by_position"].shape == (16,)
    state = load_checkpoint(run_dir / "last.pt")
    assert state["step"] == 24 and state["best_val_loss"] == pytest.approx(min(val), abs=1e-6)
    model, tokenizer = load(run_dir)
    assert model.config.vocab_size == tokenizer.vocab_size


def logged_hparams(run_dir: Path) -> tuple[dict, dict]:
    """What TensorBoard's HParams tab shows for a run: its hyperparameters, and its metrics."""
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    content = events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    start = HParamsPluginData.FromString(content).session_start_info
    hparams = {}
    for key, value in start.hparams.items():
        kind = value.WhichOneof("kind")
        hparams[key] = getattr(value, kind)
    metrics = {}
    for tag in ("result/best_val_loss", "result/final_train_loss"):
        [event] = events.Scalars(tag)
        metrics[tag] = event.value
    return hparams, metrics


def test_hparams_name_the_muon_settings_only_where_muon_trains(tmp_path):
    adamw = hparams(run_config(tmp_path).to_dict())
    muon = hparams(run_config(tmp_path, **{"train.optimizer": "muon",
                                           "train.muon_weight_decay": "0.03"}).to_dict())
    assert "train.muon_lr" not in adamw and "train.muon_weight_decay" not in adamw
    assert muon["train.muon_weight_decay"] == 0.03 and muon["train.muon_lr"] > 0
    assert "train.muon_momentum_warmup" in muon and "train.cooldown_fraction" not in muon
    wsd = hparams(run_config(tmp_path, **{"train.lr_schedule": "wsd", "model.qk_norm": "true",
                                          "model.activation": "relu2"}).to_dict())
    assert wsd["train.cooldown_fraction"] == 0.4 and wsd["train.lr_schedule"] == "wsd"
    assert wsd["model.qk_norm"] is True and wsd["model.activation"] == "relu2"


def test_target_val_loss_stops_at_the_first_eval_that_reaches_it(tmp_path):
    options = {"train.max_steps": 24, "train.eval_interval": 4, "train.lr": 3e-3}
    full = train(run_config(tmp_path, **options, **{"train.run_name": "full"}), progress=False)
    assert full.target_step is None and full.step == 24 and len(full.step_seconds) == 24
    assert list(full.val_seconds) == list(full.val_losses) == [4, 8, 12, 16, 20, 24]
    assert all(a < b for a, b in zip(list(full.val_seconds.values()),
                                      list(full.val_seconds.values())[1:]))
    # A target between the val losses at steps 8 and 12: the same run stops after step 12's eval.
    target = (full.val_losses[8] + full.val_losses[12]) / 2
    assert full.val_losses[12] < target < min(full.val_losses[s] for s in (4, 8))
    lines = []
    early = train(run_config(tmp_path, **options, **{"train.run_name": "early",
                                                      "train.target_val_loss": target}),
                  progress=False, log=lines.append)
    assert early.target_step == 12 and early.step == 12 and early.stopped_by is None
    assert early.losses == full.losses[:12]
    assert any("<= train.target_val_loss" in line and "at step 12" in line for line in lines)
    state = load_checkpoint(tmp_path / "runs" / "early" / "last.pt")
    assert state["step"] == 12 and state["best_val_loss"] == early.val_losses[12]
    run_dir = tmp_path / "runs" / "early"  # resumed without the target, it trains on exactly
    rest = train(resume_config(run_dir, {"train.target_val_loss": "0"}), resume=run_dir,
                 progress=False)
    assert rest.step == 24 and early.losses + rest.losses == full.losses
    unreachable = train(run_config(tmp_path, **options, **{"train.run_name": "never",
                                                            "train.target_val_loss": 1e-3}),
                        progress=False, log=lines.append)
    assert unreachable.target_step is None and unreachable.step == 24
    assert lines[-1] == (f"train.target_val_loss 0.001 not reached in 24 steps (best val "
                         f"{unreachable.best_val_loss:.4f}); train longer with --train.max_steps")


def test_checkpoint_round_trip_gives_the_trained_models_logits_and_text(tmp_path):
    result = train(run_config(tmp_path), progress=False)
    trained = result.model.eval()
    model, tokenizer = load(tmp_path / "runs" / "test" / "last.pt")
    assert model is not trained and model.config == trained.config
    idx = torch.tensor([tokenizer.encode("the cat sat on the mat")])
    assert_close(model(idx), trained(idx), rtol=0, atol=0)
    untrained = GPT(model.config).eval()
    assert not torch.allclose(untrained(idx), trained(idx))  # so the comparison can fail
    texts = ["".join(piece.text for piece in generate_text(m, tokenizer, "the cat", 12, seed=5))
             for m in (model, trained)]
    assert texts[0] == texts[1] and texts[0]


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    big = train(run_config(tmp_path, **{"train.batch_size": 8, "train.run_name": "big"}),
                progress=False)
    accum = train(run_config(tmp_path, **{"train.batch_size": 4, "train.grad_accum": 2,
                                          "train.run_name": "accum"}), progress=False)
    assert_close(torch.tensor(accum.losses), torch.tensor(big.losses), rtol=1e-5, atol=1e-5)


SPEEDRUN = {"train.lr_schedule": "wsd", "train.muon_momentum_warmup": 8, "model.qk_norm": True,
            "model.activation": "relu2", "model.logit_softcap": 15.0, "model.zero_init_proj": True,
            "model.tie_weights": False}


@pytest.mark.parametrize("grad_accum,optimizer,extra", [
    (1, "adamw", {}), (2, "adamw", {}), (1, "muon", {}), (1, "muon", SPEEDRUN),
    (2, "muon", {"data.sampling": "epochs", "model.short_conv": 3}),
    (1, "muon", {"data.sampling": "epochs", "model.pos_encoding": "rope", "train.seq_len": 8,
                 "train.muon_neuron_norm": True})])
def test_resume_continues_exactly(tmp_path, grad_accum, optimizer, extra):
    options = {"train.max_steps": 12, "train.grad_accum": grad_accum, "model.dropout": 0.1,
               "train.optimizer": optimizer, "train.probe": True,  # its sampling keeps the RNG
               **extra}
    straight = train(run_config(tmp_path, **options, **{"train.run_name": "straight"}),
                     progress=False)
    first = train(run_config(tmp_path, **options, **{"train.run_name": "paused"}), stop_at=6,
                  progress=False)
    assert first.step == 6 and first.stopped_by
    run_dir = tmp_path / "runs" / "paused"
    second = train(resume_config(run_dir), resume=run_dir, progress=False)
    assert second.step == 12
    assert first.losses + second.losses == straight.losses  # bit for bit
    assert second.val_losses == {k: v for k, v in straight.val_losses.items() if k > 6}
    resumed, whole = (torch.load(tmp_path / "runs" / name / "snapshots.pt", weights_only=True)
                      for name in ("paused", "straight"))
    assert resumed["steps"] == whole["steps"] == [0, 4, 8, 12]


def test_without_the_probe_a_run_logs_its_losses_only(tmp_path):
    result = train(run_config(tmp_path, **{"train.probe": False}), progress=False)
    assert result.step == 8 and not (result.run_dir / "snapshots.pt").exists()
    events = EventAccumulator(str(result.run_dir), size_guidance={"scalars": 0})
    events.Reload()
    assert not events.Tags()["images"] and "loss/val" in events.Tags()["scalars"]
    assert not any(tag.startswith("scores/") for tag in events.Tags()["scalars"])


def test_resume_may_extend_max_steps_but_not_change_the_model(tmp_path):
    train(run_config(tmp_path), progress=False)
    run_dir = tmp_path / "runs" / "test"
    more = train(resume_config(run_dir, {"train.max_steps": "10"}), resume=run_dir,
                 progress=False)
    assert more.step == 10 and len(more.losses) == 2
    with pytest.raises(ValueError, match="only train.\\* keys can"):
        resume_config(run_dir, {"model.embed_dim": "64"})


DAMAGED_STATES = {  # what a hand-edited or foreign last.pt may hold, and the error it gives
    "step": ("x", "cannot be resumed: its training state is damaged \\(ValueError: step 'x'\\)"),
    "best_val_loss": (None, "cannot be resumed: .*best_val_loss None"),
    "rng": ({"torch": torch.zeros(3)}, "cannot be resumed: its training state is damaged"),
    "optimizers": (None, "cannot be resumed: its training state is damaged \\(TypeError"),
    "config": (None, "holds no usable run config"),
}


def test_a_damaged_training_state_is_one_error_and_the_run_stays(tmp_path):
    train(run_config(tmp_path), progress=False)
    run_dir = tmp_path / "runs" / "test"
    for key, (value, message) in DAMAGED_STATES.items():
        if key == "config":  # resuming falls back to best.pt: tests/reliability/test_restarts.py
            continue
        state = load_checkpoint(run_dir / "best.pt")
        state[key] = value
        torch.save(state, run_dir / "last.pt")
        before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
        with pytest.raises(CheckpointError, match=message):
            train(resume_config(run_dir), resume=run_dir, progress=False)
        assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before, key


def test_a_rank_that_fails_to_start_leaves_its_process_group(tmp_path, monkeypatch):
    """Under torchrun, a start that fails after joining the process group (here: a damaged
    training state found once the model is built) leaves the group, so the process can start
    again, as a notebook or the app would."""
    train(run_config(tmp_path), progress=False)
    run_dir = tmp_path / "runs" / "test"
    state = load_checkpoint(run_dir / "best.pt")
    state["step"] = "x"
    torch.save(state, run_dir / "last.pt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)
    try:
        for _ in range(2):  # the second start would fail to join a group still held
            with pytest.raises(CheckpointError, match="training state is damaged"):
                train(resume_config(run_dir), resume=run_dir, progress=False)
            assert not torch.distributed.is_initialized()
    finally:  # a failure here leaves no group to the tests after it
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_a_damaged_epoch_place_is_one_error_and_the_run_stays(tmp_path):
    train(run_config(tmp_path, **{"data.sampling": "epochs"}), progress=False)
    run_dir = tmp_path / "runs" / "test"
    good = load_checkpoint(run_dir / "best.pt")["epochs"]
    for value in [None, {"position": 3}, {**good, "position": 2.5}, {**good, "position": -1},
                  {**good, "position": True}, {**good, "position": 10 ** 9},
                  {**good, "epoch_state": torch.zeros(3)}, {"epoch_state": None, "position": 3}]:
        state = load_checkpoint(run_dir / "best.pt")
        state["epochs"] = value
        torch.save(state, run_dir / "last.pt")
        before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
        with pytest.raises(CheckpointError, match="training state is damaged"):
            train(resume_config(run_dir), resume=run_dir, progress=False)
        assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before, value


def test_existing_run_directory_is_not_overwritten(tmp_path):
    train(run_config(tmp_path), progress=False)
    before = (tmp_path / "runs" / "test" / "last.pt").read_bytes()
    with pytest.raises(TrainingError, match="already holds a run; continue it with --resume"):
        train(run_config(tmp_path), progress=False)
    assert (tmp_path / "runs" / "test" / "last.pt").read_bytes() == before


def test_non_finite_loss_stops_and_keeps_good_checkpoints(tmp_path, monkeypatch):
    real_loss = step_module.lm_loss
    calls = []

    def poisoned(logits, targets):
        calls.append(1)
        loss = real_loss(logits, targets)
        return loss * float("nan") if len(calls) > 4 + 2 else loss  # from step 5, after 1 eval

    monkeypatch.setattr(step_module, "lm_loss", poisoned)
    cfg = run_config(tmp_path, **{"train.eval_interval": 4, "train.checkpoint_interval": 4,
                                  "train.eval_batches": 1})
    kept = r"stopped \(the checkpoints in .* are the last good ones\)"
    with pytest.raises(TrainingError, match=r"loss became nan at step \d+; " + kept):
        train(cfg, progress=False)
    run_dir = tmp_path / "runs" / "test"
    state = load_checkpoint(run_dir / "last.pt")
    assert state["step"] == 4
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert math.isfinite(load_checkpoint(run_dir / "best.pt")["best_val_loss"])


@pytest.mark.parametrize("eval_interval,message", [
    (4, r"the train loss at the evaluation became nan after step 4; stopped \(the checkpoints"),
    (100, r"the weights became NaN or infinite after step 4; stopped \(the checkpoints")])
def test_weights_blown_up_by_a_step_are_never_saved(tmp_path, monkeypatch, eval_interval,
                                                    message):
    """A step with a finite loss can still make the weights NaN (too high a learning rate): the
    evaluation or the save right after it stops the run, and the checkpoints stay good."""
    real_step, steps = step_module.Trainer.step, []

    def blowing_up(self, next_batch):
        result = real_step(self, next_batch)
        steps.append(1)
        if len(steps) == 4:
            with torch.no_grad():
                self.model.head.weight.fill_(float("nan"))
        return result

    monkeypatch.setattr(step_module.Trainer, "step", blowing_up)
    cfg = run_config(tmp_path, **{"train.eval_interval": eval_interval, "train.eval_batches": 1,
                                  "train.checkpoint_interval": 2})
    with pytest.raises(TrainingError, match=message):
        train(cfg, progress=False)
    state = load_checkpoint(tmp_path / "runs" / "test" / "last.pt")
    assert state["step"] == 2 and all(torch.isfinite(t).all() for t in state["model"].values())


def test_sigint_saves_last_checkpoint_and_resume_finishes(tmp_path):
    def interrupt_at_step_5(step, total):
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    result = train(run_config(tmp_path), progress=False, on_step=interrupt_at_step_5)
    assert result.stopped_by == "SIGINT" and result.step == 5
    run_dir = tmp_path / "runs" / "test"
    assert load_checkpoint(run_dir / "last.pt")["step"] == 5
    assert train(resume_config(run_dir), resume=run_dir, progress=False).step == 8


def run_ddp(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--master_port=0", "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0",
               str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path), *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.slow  # a real 2-process job, 7 s: .ci/run runs it after the default suite
def test_a_nan_on_one_ddp_rank_stops_every_rank(tmp_path):
    done = run_ddp(tmp_path, "nan-on-rank-1")  # a hang here would hit the timeout
    assert done.returncode != 0
    assert done.stderr.count("loss became nan at step 3") == 2, done.stderr[-3000:]


@pytest.mark.slow  # a real 2-process job, 7 s
def test_a_signal_to_one_ddp_rank_stops_every_rank_at_the_same_step(tmp_path):
    done = run_ddp(tmp_path, "sigterm-to-rank-1")  # a hang here would hit the timeout
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 1 stopped by SIGTERM at step 3" in done.stdout
    assert "rank 0 stopped by a signal to another rank at step 3" in done.stdout
    assert load_checkpoint(tmp_path / "runs" / "test" / "last.pt")["step"] == 3


@pytest.mark.slow  # two real processes
def test_two_process_ddp_ends_with_identical_weights(tmp_path):
    done = run_ddp(tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    weights = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
    state = load_checkpoint(tmp_path / "runs" / "test" / "last.pt")
    assert state["step"] == 8
    torch.manual_seed(state["config"]["train"]["seed"])  # the weights train() started from
    initial = GPT(ModelConfig(**state["model_config"])).state_dict()
    assert initial.keys() == weights[0].keys()
    assert all(not torch.equal(initial[name], weights[0][name]) for name in initial
               if "norm" not in name and "bias" not in name)


def copy_run(name: str, tmp_path: Path, monkeypatch) -> Path:
    """A run directory saved by minigpt before checkpoint format 2 (commit 4811976)."""
    run_dir = tmp_path / name
    shutil.copytree(ROOT / "tests" / "data" / name, run_dir)
    monkeypatch.setenv("MINIGPT_CACHE", str(tmp_path / "cache"))
    return run_dir


def test_a_version_1_adamw_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    run_dir = copy_run("v1-adamw", tmp_path, monkeypatch)
    result = train(resume_config(run_dir), resume=run_dir, progress=False)
    assert result.step == 8
    # The losses of steps 5-8 when that version trained the same 8 steps without stopping.
    straight = [3.3888566493988037, 3.370572090148926, 3.356903314590454, 3.3346452713012695]
    assert result.losses == pytest.approx(straight, rel=1e-5)


def test_a_version_1_muon_run_samples_but_cannot_resume(tmp_path, monkeypatch):
    run_dir = copy_run("v1-muon", tmp_path, monkeypatch)
    model, tokenizer = load(run_dir)
    assert "".join(p.text for p in generate_text(model, tokenizer, "the", 5, seed=0))
    with pytest.raises(CheckpointError, match="optimizer state does not fit .* cannot be resumed"):
        train(resume_config(run_dir), resume=run_dir, progress=False)
    assert load_checkpoint(run_dir / "last.pt")["step"] == 4  # untouched


def test_the_exact_evaluator_scores_every_position_once_in_context_windows():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=11, context_length=8, embed_dim=16, num_heads=2,
                            num_layers=1)).eval()
    tokens = torch.randint(0, 11, (30,), dtype=torch.uint8)  # 29 targets: 3 windows of 8, and 5
    expected, count = 0.0, 0
    for start in range(0, 29, 8):
        x = tokens[start:min(start + 8, 29)].long()
        y = tokens[start + 1:min(start + 8, 29) + 1].long()
        expected += torch.nn.functional.cross_entropy(model(x[None])[0], y, reduction="sum").item()
        count += len(y)
    assert count == 29
    runtime = Runtime(torch.device("cpu"))
    for batch_size in (1, 2, 5):  # batching does not change the figure
        assert evaluation.split_loss(model, tokens, batch_size, runtime) == pytest.approx(
            expected / 29, rel=1e-5)
    assert not model.training  # the model is left in the mode it came in


def test_sampled_estimate_is_the_mean_loss_over_the_same_batches_every_time(tmp_path):
    cfg = run_config(tmp_path, **{"train.eval_batches": "5", "train.batch_size": "3"})
    data = prepare_data(cfg.data, cfg.model.context_length)
    cfg = replace(cfg, model=replace(cfg.model, vocab_size=data.tokenizer.vocab_size))
    torch.manual_seed(0)
    model = GPT(cfg.model)
    runtime = Runtime(torch.device("cpu"))
    generator = torch.Generator().manual_seed(cfg.train.seed + 1)
    expected = {}
    with torch.no_grad():
        for split, tokens in (("train", data.train), ("val", data.val)):  # one batch at a time
            losses = [step_module.lm_loss(model(x), y) for x, y in (
                get_batch(tokens, 3, cfg.model.context_length, generator)
                for _ in range(5))]
            expected[split] = sum(loss.item() for loss in losses) / 5
    for _ in range(2):  # the same batches at every evaluation
        assert evaluation.estimate_loss(model, data, cfg, runtime) == pytest.approx(expected)
    assert model.training


@pytest.mark.slow  # whole-split evaluations and a real train.py process
def test_eval_batches_zero_makes_evaluations_exact_and_eval_only_prints_them(tmp_path):
    cfg = run_config(tmp_path, **{"train.eval_batches": "0", "train.max_steps": "4"})
    result = train(cfg, progress=False)
    model, _ = load(result.run_dir / "last.pt")
    data = prepare_data(cfg.data, cfg.model.context_length)
    exact = evaluation.split_loss(model, data.val, 4, Runtime(torch.device("cpu")))
    assert result.val_losses[4] == pytest.approx(exact, rel=1e-5)
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--eval-only", "--resume",
                          str(result.run_dir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["best.pt", "last.pt"]
    assert f"val loss {exact:.4f} (perplexity {math.exp(exact):.2f}" in lines[1]
    refused = subprocess.run([sys.executable, str(ROOT / "train.py"), "--eval-only"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and refused.stderr.startswith("error: --eval-only evaluates")


def test_own_text_with_a_prompt_it_cannot_encode_and_a_tiny_vocabulary_trains(tmp_path):
    """Your own text, with the default sample prompt, which a char tokenizer learned from it may
    not encode: a warning, the probe taken from the val text, no suggested --prompt. As words the
    text has a 4-token vocabulary, fewer than the logit lens's top 5 kept at every evaluation."""
    text = tmp_path / "ab.txt"
    text.write_text("ab ba\n" * 400)
    cfg = run_config(tmp_path, **{"data.path": text, "data.tokenizer": "char",
                                  "train.sample_prompt": "the cat", "train.probe": True})
    with pytest.warns(UserWarning, match="train.sample_prompt 'the cat' cannot be the probe"):
        result = train(cfg, progress=False)
    assert result.step == 8 and result.prompt == ""
    kept = load_snapshots(result.run_dir)
    assert kept["steps"] == [0, 4, 8] and len(kept["tokens"]) == 16  # the val text's first 16
    words = train(run_config(tmp_path, **{"data.path": text, "data.tokenizer": "word",
                                          "train.sample_prompt": "ab", "train.run_name": "words",
                                          "train.probe": True}),
                  progress=False)
    assert words.prompt == "ab"
    assert load_snapshots(words.run_dir)["snapshots"][-1]["lens_ids"].shape[-1] == 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two torchrun "nodes" on this machine, 15 s
def test_two_torchrun_nodes_on_shared_shards_follow_the_single_process_loss_curve(tmp_path):
    """torchrun --nnodes 2 (one process a node, gloo, rendezvous on 127.0.0.1), both ranks
    reading the same memory-mapped shards, 4 sequences each: the loss curve and weights of one
    process drawing 8 sequences a step, to float tolerance."""
    text = tmp_path / "corpus.txt"
    text.write_text(load_corpus()[:60_000])
    cache = tmp_path / "cache"
    worker = ROOT / "tests" / "node_worker.py"
    single = subprocess.run([sys.executable, str(worker), str(tmp_path / "single"), str(text),
                             "8", str(cache)], capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    tries = []  # the output folder of each try

    def nodes(attempt: int) -> list[list[str]]:
        tries.append(tmp_path / f"nodes{attempt}")
        port = free_port()
        return [[sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
                 "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
                 str(worker), str(tries[-1]), str(text), "4", str(cache)] for rank in (0, 1)]

    for code, err in run_together(nodes, env):
        assert code == 0, err[-2000:]
    single, nodes = tmp_path / "single", tries[-1]
    one, two = (json.loads((d / "losses.json").read_text()) for d in (single, nodes))
    assert len(one["train"]) == len(two["train"]) == 6
    assert one["train"] == pytest.approx(two["train"], rel=1e-5)
    assert one["val"].keys() == two["val"].keys()
    assert list(one["val"].values()) == pytest.approx(list(two["val"].values()), rel=1e-5)
    weights = [torch.load(d / "weights.pt", weights_only=True) for d in (single, nodes)]
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=1e-4, atol=1e-5)
    assert len([p for p in (cache / "shards").iterdir() if p.is_dir()]) == 1  # one set, shared


@pytest.mark.slow  # two torchrun processes and a plain one, 20 s
def test_fsdp_over_two_ranks_trains_as_one_process_and_its_checkpoints_resume_and_load(tmp_path):
    """train.fsdp shards every weight, gradient and AdamW moment between 2 gloo ranks: the loss
    curve is one process's with the same global batch; last.pt holds whole weights, which a plain
    process loads; a resumed FSDP run goes on from it."""
    text = tmp_path / "corpus.txt"
    text.write_text(load_corpus()[:60_000])
    cache, worker = tmp_path / "cache", ROOT / "tests" / "node_worker.py"
    fsdp = ["train.fsdp=true", "train.probe=false"]
    single = subprocess.run([sys.executable, str(worker), str(tmp_path / "single"), str(text),
                             "8", str(cache)], capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    def torchrun(out: str, *extra: str) -> Path:
        """The folder the job wrote its losses and (under runs/) its run to."""
        tries = []

        def job(attempt: int) -> list[list[str]]:
            tries.append(tmp_path / f"{out}{attempt}")
            return [[sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                     "--master_port=0", "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0",
                     str(worker), str(tries[-1]), str(text), "4", str(cache), *fsdp, *extra]]

        [(code, err)] = run_together(job, env)
        assert code == 0, err[-3000:]
        return tries[-1]

    sharded = torchrun("sharded")
    one, two = (json.loads((d / "losses.json").read_text()) for d in (tmp_path / "single", sharded))
    assert one["train"] == pytest.approx(two["train"], rel=1e-5)
    assert list(one["val"].values()) == pytest.approx(list(two["val"].values()), rel=1e-5)
    run_dir = sharded / "runs" / "test"
    model, _ = load(run_dir / "last.pt")  # whole weights, in a process without torchrun
    single_weights = torch.load(tmp_path / "single" / "weights.pt", weights_only=True)
    for name, value in model.state_dict().items():
        assert_close(value, single_weights[name], rtol=1e-4, atol=1e-5)
    torchrun("resumed", f"resume={run_dir}", "train.max_steps=8")
    assert load_checkpoint(run_dir / "last.pt")["step"] == 8


def test_shorter_training_sequences_train_on_them_and_evaluate_the_whole_context(tmp_path, monkeypatch):
    seen = []
    real_step = Trainer.step

    def spy(self, next_batch):
        return real_step(self, lambda: seen.append(next_batch()) or seen[-1])

    monkeypatch.setattr(Trainer, "step", spy)
    result = train(run_config(tmp_path, **{"model.pos_encoding": "rope", "train.seq_len": 8,
                                           "data.sampling": "epochs", "train.eval_batches": 0}),
                   progress=False)
    assert {tuple(x.shape) for x, _ in seen} == {(4, 8)}
    x, y = seen[0]
    assert torch.equal(x[:, 1:], y[:, :-1])  # next-token targets within each sequence
    model, _ = load(result.run_dir / "last.pt")  # step 8's weights
    assert model.config.context_length == 16
    data = prepare_data(resume_config(result.run_dir).data, 16)
    exact = evaluation.split_loss(model, data.val, 4, Runtime(torch.device("cpu")))
    assert result.val_losses[8] == pytest.approx(exact, rel=1e-5)  # in windows of 16
