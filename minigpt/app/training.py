"""The app's own training: one run at a time in a background thread, and the sidebar panel that
starts it, shows its progress and cancels it."""

import os
import shutil
import threading
from pathlib import Path

import streamlit as st

import minigpt.training
from minigpt.config import default_config_path, load_config

APP_RUN = "app-default"  # the one run the app trains; training again replaces it


def runs_dir() -> str:
    """Where the app looks for runs and trains its own: $MINIGPT_RUNS, else runs/. Read at every
    use, as this module outlives the page's reruns."""
    return os.environ.get("MINIGPT_RUNS", "runs")


class AppTraining:
    """The app's one training at a time, in a background thread so the page stays responsive:
    its progress, a cancel request (which saves a resumable last.pt), and how it ended."""

    def __init__(self):
        self.thread: threading.Thread | None = None
        self.cancel = threading.Event()
        self.step, self.total, self.outcome = 0, 0, ""

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self) -> None:
        self.cancel.clear()
        self.step, self.total, self.outcome = 0, 0, ""
        self.thread = threading.Thread(target=self._train, args=(runs_dir(),), daemon=True)
        self.thread.start()

    def _progress(self, step: int, total: int) -> None:
        self.step, self.total = step, total

    def _train(self, out_dir: str) -> None:
        """Train configs/default.toml into out_dir/app-default, replacing the app's previous run,
        so the app never holds more than one."""
        try:
            shutil.rmtree(Path(out_dir) / APP_RUN, ignore_errors=True)
            cfg = load_config(default_config_path(),
                              {"train.out_dir": out_dir, "train.run_name": APP_RUN})
            # Looked up at each start, not imported by name, so a test can stand in for train().
            result = minigpt.training.train(cfg, progress=False, on_step=self._progress,
                                            cancelled=self.cancel.is_set)
            self.outcome = (f"cancelled at step {result.step}; {result.run_dir} can be resumed"
                            if result.stopped_by else f"trained {result.run_dir}")
        except Exception as err:  # shown in the page: this thread has no one else to tell
            self.outcome = f"training failed: {err}"


@st.cache_resource
def app_training() -> AppTraining:
    """One per server, shared by every visitor: one training at a time."""
    return AppTraining()


@st.fragment(run_every=1.0)
def training_panel() -> None:
    """The train button, or the progress of the training under way with a cancel button; when a
    training ends, the whole page reruns so the new run appears in the list."""
    job = app_training()
    if job.running:
        st.progress(job.step / max(job.total, 1), text=f"training: step {job.step} of {job.total}")
        if st.button("Cancel training", key="cancel"):
            job.cancel.set()
            st.session_state["training_mine"] = True
        st.session_state["training_seen"] = True
        return
    if st.session_state.pop("training_seen", False):
        st.rerun()  # the run list and the chosen model change with the new run
    if job.outcome and st.session_state.get("training_mine"):  # not to every later visitor
        (st.error if job.outcome.startswith("training failed") else st.success)(job.outcome)
    if st.button("Train the default tiny model (about a minute)", key="train"):
        st.session_state["training_mine"] = True
        job.start()
        st.session_state["training_seen"] = True
        st.rerun()
