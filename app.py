"""The deck's interactive demo: generate text, watch attention, compare layer outputs.

    pip install -e ".[app]"
    streamlit run app.py

It serves this machine only (127.0.0.1, set in .streamlit/config.toml beside this file). Pick one
of the runs found under runs/ in the sidebar, or train the default tiny model there if you have
none; then type a prompt, set the sampling controls and generate. A checkpoint can also be opened
by its path, but only while the app is served on this machine alone.
"""

import os
import shutil
import threading
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st
import torch

from minigpt.checkpoint import list_runs, load
from minigpt.config import load_config
from minigpt.errors import MiniGPTError
from minigpt.generation import generate_text
from minigpt.heatmap import PALETTE, colours
from minigpt.inspection import inspect_prompt
from minigpt.training import train

ROOT = Path(__file__).resolve().parent
OUT_DIR = os.environ.get("MINIGPT_RUNS", "runs")
APP_RUN = "app-default"  # the one run the app trains; training again replaces it
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@st.cache_resource(show_spinner="Loading the checkpoint...")
def load_model(path: str, modified: float):
    """(model, tokenizer), cached per file and modification time so widgets respond at once."""
    return load(path)


@st.cache_resource
def training_lock() -> threading.Lock:
    """One lock per server: one training at a time, whoever asks for it."""
    return threading.Lock()


def serving_locally() -> bool:
    """Whether the server listens on the loopback address only, so every visitor is on this
    machine (`--server.address 0.0.0.0` shares the app and turns this off)."""
    return (st.get_option("server.address") or "") in LOOPBACK


def train_default_model() -> Path | None:
    """Train configs/default.toml into runs/app-default (replacing the app's previous run, so the
    app never holds more than one), with a progress bar; None if a training is already going on."""
    lock = training_lock()
    if not lock.acquire(blocking=False):
        st.sidebar.warning("A training run is already going on; wait for it to finish.")
        return None
    try:
        shutil.rmtree(Path(OUT_DIR) / APP_RUN, ignore_errors=True)
        cfg = load_config(ROOT / "configs" / "default.toml",
                          {"train.out_dir": OUT_DIR, "train.run_name": APP_RUN})
        bar = st.sidebar.progress(0.0, text="training the default model...")
        result = train(cfg, progress=False, on_step=lambda step, total: bar.progress(
            step / total, text=f"training: step {step} of {total}"))
        bar.empty()
        return result.run_dir
    finally:
        lock.release()


def attention_chart(weights: torch.Tensor, tokens: list[str]) -> alt.Chart:
    """Heatmap of one head's (T, T) weights with token labels; hovering shows the weight."""
    labels = [f"{i}:{t!r}"[:14] for i, t in enumerate(tokens)]
    rows = [{"query": labels[q], "key": labels[k], "weight": float(weights[q, k])}
            for q in range(len(tokens)) for k in range(len(tokens))]
    return alt.Chart(pd.DataFrame(rows)).mark_rect().encode(
        x=alt.X("key:N", sort=labels, title="attends to (key)"),
        y=alt.Y("query:N", sort=labels, title="token (query)"),
        color=alt.Color("weight:Q", scale=alt.Scale(domain=[0, 1], range=list(PALETTE))),
        tooltip=["query", "key", alt.Tooltip("weight:Q", format=".3f")],
    ).properties(height=max(200, 22 * len(tokens)))


def token_probabilities(model, tokenizer, prompt_ids: list[int], new_ids: list[int]) -> pd.DataFrame:
    """The probability the model gave each generated token (those within one context window)."""
    window = torch.tensor([(prompt_ids + new_ids)[-model.config.context_length:]])
    count = min(len(new_ids), window.size(1) - 1)
    with torch.no_grad():
        probs = torch.softmax(model(window)[0].float(), dim=-1)  # (T, V)
    chosen = window[0, -count:]
    p = probs[-count - 1:-1].gather(1, chosen[:, None])[:, 0]
    return pd.DataFrame({"token": [tokenizer.decode([i]) for i in chosen.tolist()],
                         "probability": p.tolist()})


def choose_model():
    """The sidebar's choice of run (and the button that trains one): (model, tokenizer), or None
    when there is nothing to show yet."""
    st.sidebar.header("Model")
    runs = list_runs(OUT_DIR)
    path = st.sidebar.selectbox("Run (newest first)", runs, format_func=lambda run: run.name,
                                key="run") if runs else None
    if serving_locally():
        with st.sidebar.expander("Open a checkpoint by path (this machine only)"):
            typed = st.text_input("run directory or .pt file", key="checkpoint").strip()
        path = Path(typed) if typed else path
    if st.sidebar.button("Train the default tiny model (about a minute)", key="train"):
        path = train_default_model() or path
    if path is None:
        st.info(f"No trained run in {OUT_DIR}/ yet: train the default tiny model from the sidebar, "
                f"or run `python train.py` and reload.")
        return None
    try:
        modified = max((p.stat().st_mtime for p in path.glob("*.pt")), default=0.0) \
            if path.is_dir() else (path.stat().st_mtime if path.exists() else 0.0)
        model, tokenizer = load_model(str(path), modified)
    except (MiniGPTError, OSError) as err:
        st.error(f"Cannot load that checkpoint: {err}")
        return None
    cfg = model.config
    st.sidebar.caption(f"{model.num_params():,} parameters; {cfg.num_layers} layers x "
                       f"{cfg.num_heads} heads, {cfg.embed_dim} dims, {cfg.pos_encoding} positions, "
                       f"{cfg.norm_placement}-norm; {tokenizer.kind} tokenizer, "
                       f"{tokenizer.vocab_size} tokens")
    return model, tokenizer


def sampling_controls(vocab_size: int, context_length: int) -> dict:
    """The sampling sliders; new tokens are capped at the model's context length."""
    st.sidebar.header("Sampling")
    most = min(300, context_length)
    return {
        "temperature": st.sidebar.slider("temperature", 0.0, 2.0, 0.8, 0.05, key="temperature"),
        "top_k": st.sidebar.slider("top-k (0 = all)", 0, min(200, vocab_size), 0, key="top_k")
        or None,
        "top_p": st.sidebar.slider("top-p (1 = all)", 0.05, 1.0, 1.0, 0.05, key="top_p"),
        "max_new_tokens": st.sidebar.slider("max new tokens", 1, most, min(40, most),
                                            key="max_new_tokens"),
        "seed": int(st.sidebar.number_input("seed", 0, 2**31 - 1, 0, key="seed")),
    }


def generation_section(model, tokenizer, prompt: str, controls: dict) -> None:
    """The Generate button, the streamed text, and the probability of each generated token."""
    if st.button("Generate", key="generate", type="primary"):
        pieces = generate_text(model, tokenizer, prompt, **controls)
        placeholder = st.empty()  # the text streams here, then gives way to the full text below
        with placeholder:
            text = st.write_stream(piece.text for piece in pieces)
        placeholder.empty()
        st.session_state["generated"] = (prompt, text)
    if st.session_state.get("generated", (None,))[0] != prompt:
        return
    generated = st.session_state["generated"][1]
    st.markdown("**Generated text** (prompt, then the model's continuation)")
    st.code(prompt + generated, language=None, wrap_lines=True)
    prompt_ids = tokenizer.encode(prompt) if prompt else []
    new_ids = tokenizer.encode(tokenizer.decode(prompt_ids) + generated)[len(prompt_ids):]
    if new_ids and prompt_ids:
        with st.expander("Token-by-token probabilities of the generated text"):
            table = token_probabilities(model, tokenizer, prompt_ids, new_ids)
            table.index = [f"{i}:{token!r}" for i, token in enumerate(table["token"])]
            st.bar_chart(table, y="probability", x_label="generated token",
                         y_label="probability when chosen", sort=False, color=PALETTE[2])


def attention_view(seen, cfg) -> None:
    layer = st.selectbox("layer", range(cfg.num_layers), key="layer")
    columns = st.columns(min(cfg.num_heads, 4))
    for head in range(cfg.num_heads):
        with columns[head % len(columns)]:
            st.caption(f"layer {layer}, head {head}")
            st.altair_chart(attention_chart(seen.attentions[layer][head], seen.tokens),
                            width="stretch")


def layers_view(seen, cfg) -> None:
    st.markdown("**Logit lens**: the most likely next token read from each layer's output "
                "(through the final norm and head). Layer 0 is the embeddings.")
    lens = pd.DataFrame(
        {f"{i}:{tok!r}": [f"{layer.tokens[i][0]!r} {layer.probs[i, 0]:.2f}"
                          for layer in seen.logit_lens]
         for i, tok in enumerate(seen.tokens)},
        index=[f"layer {layer.layer}" for layer in seen.logit_lens])
    st.dataframe(lens, key="lens")
    st.markdown("**How much each block changed each token** (relative size of its update)")
    change = pd.DataFrame(seen.layer_change.T.numpy(),
                          columns=[f"block {i + 1}" for i in range(cfg.num_layers)])
    change.index = [f"{i}:{t!r}" for i, t in enumerate(seen.tokens)]
    st.bar_chart(change, color=colours(cfg.num_layers))


def temperature_view(seen, tokenizer) -> None:
    st.markdown("The next-token distribution after the prompt, `softmax(logits / T)`, "
                "for a few temperatures: low T sharpens it, high T flattens it.")
    logits = seen.next_token_probs.log()
    top = seen.next_token_probs.topk(min(10, tokenizer.vocab_size)).indices
    rows = []
    for t in (0.5, 1.0, 2.0):
        probs = torch.softmax(logits / t, dim=-1)
        rows += [{"token": repr(tokenizer.decode([i])), "temperature": t,
                  "probability": float(probs[i])} for i in top.tolist()]
    st.altair_chart(alt.Chart(pd.DataFrame(rows)).mark_bar().encode(
        x=alt.X("token:N", sort=None), y="probability:Q",
        color=alt.Color("temperature:O", scale=alt.Scale(range=colours(3))),
        xOffset="temperature:O", tooltip=["token", "temperature", "probability"]),
        width="stretch")


def main() -> None:
    st.set_page_config(page_title="minigpt", layout="wide")
    st.title("minigpt: look inside a small GPT")
    loaded = choose_model()
    if loaded is None:
        return
    model, tokenizer = loaded
    controls = sampling_controls(tokenizer.vocab_size, model.config.context_length)
    prompt = st.text_input("Prompt", value="the cat sat on", key="prompt")
    try:
        seen = inspect_prompt(model, tokenizer, prompt)
    except MiniGPTError as err:
        st.error(f"That prompt cannot be used: {err}")
        return
    generation_section(model, tokenizer, prompt, controls)
    attention_tab, layers_tab, temperature_tab = st.tabs(
        ["Attention", "Layer outputs", "Temperature"])
    with attention_tab:
        attention_view(seen, model.config)
    with layers_tab:
        layers_view(seen, model.config)
    with temperature_tab:
        temperature_view(seen, tokenizer)


main()
