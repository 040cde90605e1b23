"""The deck's interactive demo: generate text, watch attention, compare layer outputs.

    pip install -e ".[app]"
    streamlit run app.py

It serves this machine only (127.0.0.1, set in .streamlit/config.toml beside this file). Pick one
of the runs found under runs/ in the sidebar, or train the default tiny model there if you have
none; then type a prompt, set the sampling controls and generate. A checkpoint can also be opened
by its path, but only while the app is served on this machine alone.
"""

import html
import os
import shutil
import threading
import warnings
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st
import torch

from minigpt.checkpoint import check_path, list_runs, load
from minigpt.config import load_config
from minigpt.errors import MiniGPTError
from minigpt.generation import generate_text
from minigpt.heatmap import PALETTE, colour, colours, heatmap, layers_image
from minigpt.inspection import inspect_prompt, load_snapshots, position_similarity, token_probabilities
from minigpt.model import sinusoidal_table
from minigpt.tokenizer import WordTokenizer
from minigpt.training import train

ROOT = Path(__file__).resolve().parent
OUT_DIR = os.environ.get("MINIGPT_RUNS", "runs")
APP_RUN = "app-default"  # the one run the app trains; training again replaces it
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@st.cache_resource(show_spinner="Loading the checkpoint...")
def load_model(path: str, modified: float):
    """(model, tokenizer), cached per file and modification time so widgets respond at once."""
    return load(path)


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
        self.thread = threading.Thread(target=self._train, daemon=True)
        self.thread.start()

    def _progress(self, step: int, total: int) -> None:
        self.step, self.total = step, total

    def _train(self) -> None:
        """Train configs/default.toml into runs/app-default, replacing the app's previous run, so
        the app never holds more than one."""
        try:
            shutil.rmtree(Path(OUT_DIR) / APP_RUN, ignore_errors=True)
            cfg = load_config(ROOT / "configs" / "default.toml",
                              {"train.out_dir": OUT_DIR, "train.run_name": APP_RUN})
            result = train(cfg, progress=False, on_step=self._progress,
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
        st.session_state["training_seen"] = True
        return
    if st.session_state.pop("training_seen", False):
        st.rerun()  # the run list and the chosen model change with the new run
    if job.outcome:
        (st.error if job.outcome.startswith("training failed") else st.success)(job.outcome)
    if st.button("Train the default tiny model (about a minute)", key="train"):
        job.start()
        st.session_state["training_seen"] = True
        st.rerun()


def serving_locally() -> bool:
    """Whether the server listens on the loopback address only, so every visitor is on this
    machine (`--server.address 0.0.0.0` shares the app and turns this off)."""
    return (st.get_option("server.address") or "") in LOOPBACK


def attention_chart(weights: torch.Tensor, tokens: list[str], legend: bool = True) -> alt.Chart:
    """Heatmap of one head's (T, T) weights with token labels; hovering shows the weight. All
    heads share the scale [0, 1], so only one of them needs the legend."""
    labels = [f"{i}:{t!r}"[:14] for i, t in enumerate(tokens)]
    rows = [{"query": labels[q], "key": labels[k], "weight": float(weights[q, k])}
            for q in range(len(tokens)) for k in range(len(tokens))]
    axis = alt.Axis(labelOverlap=False, labelLimit=120)
    return alt.Chart(pd.DataFrame(rows)).mark_rect().encode(
        x=alt.X("key:N", sort=labels, title="attends to (key)",
                axis=alt.Axis(labelOverlap=False, labelLimit=120, labelAngle=-90)),
        y=alt.Y("query:N", sort=labels, title="token (query)", axis=axis),
        color=alt.Color("weight:Q", scale=alt.Scale(domain=[0, 1], range=list(PALETTE)),
                        legend=alt.Legend(title="weight") if legend else None),
        tooltip=["query", "key", alt.Tooltip("weight:Q", format=".3f")],
    ).properties(height=max(200, 22 * len(tokens)))


def probability_table(model, tokenizer, prompt_ids: list[int], new_ids: list[int]) -> pd.DataFrame:
    """Each generated token, labelled with its position in the whole text, and its probability."""
    ids = prompt_ids + new_ids
    probs = token_probabilities(model, ids, len(prompt_ids))
    tokens = [tokenizer.decode([i]) for i in new_ids]
    return pd.DataFrame({"position": [f"{len(prompt_ids) + i}:{t!r}" for i, t in enumerate(tokens)],
                         "token": tokens, "probability": probs})


def grid_chart(frame: pd.DataFrame, x: str, y: str, value: str, domain: list[float],
               x_title: str, y_title: str, text: str | None = None, tooltip=(),
               scale: str = "linear") -> alt.Chart:
    """A coloured grid in the shared palette, rows and columns in the frame's order, with an
    optional word written in each cell."""
    order_x, order_y = list(dict.fromkeys(frame[x])), list(dict.fromkeys(frame[y]))
    base = alt.Chart(frame).encode(
        x=alt.X(f"{x}:N", sort=order_x, title=x_title,
                axis=alt.Axis(labelAngle=-90, labelOverlap=False)),
        y=alt.Y(f"{y}:N", sort=order_y, title=y_title))
    chart = base.mark_rect().encode(
        color=alt.Color(f"{value}:Q", scale=alt.Scale(type=scale, domain=domain,
                                                      range=list(PALETTE)),
                        title=value),
        tooltip=list(tooltip) or [x, y, alt.Tooltip(f"{value}:Q", format=".3f")])
    if text:
        chart += base.mark_text(fontSize=11).encode(
            text=f"{text}:N",
            color=alt.condition(f"datum.{value} > {(domain[0] + domain[1]) / 2}",
                                alt.value("black"), alt.value("white")))
    return chart.properties(height=28 * len(order_y) + 120)  # the rows, and room for the axes


def choose_model():
    """The sidebar's choice of run (and the button that trains one): (model, tokenizer, run
    directory), or None when there is nothing to show yet."""
    st.sidebar.header("Model")
    runs = list_runs(OUT_DIR)
    path = st.sidebar.selectbox("Run (newest first)", runs, format_func=lambda run: run.name,
                                key="run") if runs else None
    if serving_locally():
        with st.sidebar.expander("Open a checkpoint by path (this machine only)"):
            typed = st.text_input("run directory or .pt file", key="checkpoint").strip()
        path = Path(typed) if typed else path
    with st.sidebar:
        training_panel()
    if path is None:
        st.info(f"No trained run in {OUT_DIR}/ yet: train the default tiny model from the sidebar, "
                f"or run `python train.py` and reload.")
        return None
    try:
        check_path(path)  # before the OS calls below, which fail on such a path in many ways
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
                       f"{tokenizer.vocab_size} tokens" + removed_parts(cfg))
    if not cfg.causal:
        st.sidebar.warning("This model was trained without the causal mask: it learned to read the "
                           "next token instead of predicting it, so its views and samples show a "
                           "cheat, not a language model.")
    return model, tokenizer, path if path.is_dir() else path.parent


def removed_parts(cfg) -> str:
    """The ablation switches a model was trained with, as words for the sidebar."""
    removed = [name for name, gone in (("residual connections", not cfg.residual),
                                       ("LayerNorm", not cfg.layer_norm),
                                       ("feed-forward blocks", not cfg.ffn),
                                       ("causal mask", not cfg.causal)) if gone]
    return f". Ablation: no {', no '.join(removed)}" if removed else ""


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
        placeholder, text = st.empty(), ""  # streamed in the same box the full text stays in
        for piece in generate_text(model, tokenizer, prompt, **controls):
            text += piece.text
            placeholder.code(prompt + text, language=None, wrap_lines=True)
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
            # One forward pass per token: kept across reruns (a slider move reruns the page).
            key = (id(model), prompt, generated)
            if st.session_state.get("probabilities", (None,))[0] != key:
                st.session_state["probabilities"] = (
                    key, probability_table(model, tokenizer, prompt_ids, new_ids))
            table = st.session_state["probabilities"][1]
            st.altair_chart(alt.Chart(table).mark_bar(color=PALETTE[2]).encode(
                x=alt.X("position:N", sort=list(table["position"]),
                        title="generated token (position in the text)",
                        axis=alt.Axis(labelAngle=-60)),
                y=alt.Y("probability:Q", scale=alt.Scale(domain=[0, 1]),
                        title="probability when chosen"),
                tooltip=["position", "token", alt.Tooltip("probability:Q", format=".3f")]),
                width="stretch")


LAYERS_NOTE = ("Layers are numbered from the input: layer 0 is the embeddings (token and "
               "position), layer N the output of block N.")


def attention_view(seen, cfg) -> None:
    st.caption(LAYERS_NOTE + " Each heatmap: rows are the prompt's tokens (queries), columns the "
               "tokens each one attends to (keys); a row sums to 1.")
    with st.expander("Model view: every layer and head at once (open one with its button)",
                     expanded=True):
        model_view(seen, cfg)
    layer = st.selectbox("layer", range(1, cfg.num_layers + 1), key="layer")
    count = len(seen.tokens)
    columns = st.columns(4 if count <= 12 else 2 if count <= 30 else 1)
    for head in range(cfg.num_heads):
        with columns[head % len(columns)]:
            st.caption(f"layer {layer}, head {head}")
            st.altair_chart(attention_chart(seen.attentions[layer - 1][head], seen.tokens,
                                            legend=head == cfg.num_heads - 1), width="stretch")
    head_view(seen, layer, cfg.num_heads)


def model_view(seen, cfg) -> None:
    """Every layer x head as a thumbnail, in the shared palette (0 to 1); the button under one
    opens it in the heatmaps and the head view below."""
    cell = max(2, 160 // len(seen.tokens))
    for layer in range(cfg.num_layers):
        for head, column in enumerate(st.columns(cfg.num_heads)):
            column.image(heatmap(seen.attentions[layer][head], cell, vmin=0.0, vmax=1.0),
                         output_format="PNG")
            column.button(f"layer {layer + 1}, head {head}", key=f"open_{layer + 1}_{head}",
                          on_click=open_head, args=(layer + 1, head))


def open_head(layer: int, head: int) -> None:
    st.session_state["layer"], st.session_state["head"] = layer, head


def head_view(seen, layer: int, num_heads: int) -> None:
    """Pick a head and a token: the prompt with every earlier token shaded by how much that token
    attends to it."""
    st.markdown(f"**Head view** (layer {layer}): where one token looks")
    left, right = st.columns(2)
    head = left.selectbox("head", range(num_heads), key="head")
    labels = [f"{i}:{t!r}" for i, t in enumerate(seen.tokens)]
    query = right.selectbox("token", range(len(labels)), index=len(labels) - 1,
                            format_func=lambda i: labels[i], key="query")
    weights = seen.attentions[layer - 1][head][query]
    spans = []
    for i, token in enumerate(seen.tokens):
        shade = "#{:02x}{:02x}{:02x}".format(*colour(float(weights[i])))
        ink = "black" if weights[i] > 0.5 else "white"
        border = "2px solid #c0392b" if i == query else "none"
        style = f"background:{shade};color:{ink};border:{border};padding:1px 3px;margin:1px"
        title = f"{labels[i]}: {float(weights[i]):.3f}" if i <= query else "later: not visible"
        spans.append(f'<span style="{style}" title="{html.escape(title)}">'
                     f"{html.escape(repr(token)[1:-1]) or '&nbsp;'}</span>")
    st.markdown(" ".join(spans), unsafe_allow_html=True)


def layers_view(seen, cfg) -> None:
    st.caption(LAYERS_NOTE)
    st.markdown("**Logit lens**: the most likely next token read from each layer's output "
                "(through the final norm and head); colour is its probability, hover for the "
                "top 5.")
    labels = [f"{i}:{t!r}" for i, t in enumerate(seen.tokens)]
    lens = pd.DataFrame([
        {"position": labels[i], "layer": f"layer {lens_layer.layer}",
         "top token": repr(lens_layer.tokens[i][0])[1:-1][:8],
         "probability": float(lens_layer.probs[i, 0]),
         "top 5": ", ".join(f"{t!r} {p:.2f}" for t, p in zip(lens_layer.tokens[i],
                                                             lens_layer.probs[i].tolist()))}
        for lens_layer in seen.logit_lens for i in range(len(labels))])
    st.altair_chart(grid_chart(lens, "position", "layer", "probability", [0, 1],
                               "prompt token (position)", "layer", text="top token",
                               tooltip=["layer", "position", "top 5"]), width="stretch")
    sublayer_view(seen, cfg, labels)
    norm_view(seen)


def sublayer_view(seen, cfg, labels: list[str]) -> None:
    """How much attention and the feed-forward block each changed every token, row by row in the
    order the residual stream meets them."""
    st.markdown("**What attention and the feed-forward block each add**: the size of each "
                "sublayer's output relative to the residual stream it is added to, per token.")
    st.caption("What am I looking at: attention moves information between tokens, the "
               "feed-forward block (GELU MLP) transforms each token on its own. A bright cell is a "
               "sublayer that rewrote that token; a dark one barely touched it. The colour scale is "
               "logarithmic, as the first layer rewrites the small embeddings far more than later "
               "layers change their input.")
    parts = [("attention", seen.attention_change), ("FFN", seen.ffn_change)]
    rows = [{"position": labels[i], "sublayer": f"layer {layer + 1} {name}",
             "relative change": float(change[layer, i])}
            for layer in range(cfg.num_layers) for name, change in parts if change is not None
            for i in range(len(labels))]
    frame = pd.DataFrame(rows)
    st.altair_chart(grid_chart(frame, "position", "sublayer", "relative change",
                               [0, float(frame["relative change"].max())],
                               "prompt token (position)", "sublayer", scale="symlog"),
                    width="stretch")


def norm_view(seen) -> None:
    """The residual stream's size before and after every LayerNorm."""
    st.markdown("**What LayerNorm does to the stream**: each token vector's size (root mean "
                "square) entering and leaving every LayerNorm, averaged over the prompt's tokens "
                "(hover for the smallest and largest).")
    if not seen.norm_scales:
        st.info("This model has no LayerNorm (model.layer_norm = false, an ablation).")
        return
    st.caption("What am I looking at: the stream grows as the layers add to it, and differs "
               "from token to token; every LayerNorm brings each token back to size about 1 "
               "(times its learned gain) before a sublayer reads it, which keeps training stable.")
    rows = [{"norm": n.name, "where": where, "size": float(values.mean()),
             "smallest": float(values.min()), "largest": float(values.max())}
            for n in seen.norm_scales for where, values in (("before", n.before), ("after", n.after))]
    order = [n.name for n in seen.norm_scales]
    st.altair_chart(alt.Chart(pd.DataFrame(rows)).mark_bar().encode(
        y=alt.Y("norm:N", sort=order, title="LayerNorm (in stream order)"),
        x=alt.X("size:Q", title="token vector size (RMS), mean over tokens"),
        yOffset=alt.YOffset("where:N", sort=["before", "after"]),
        color=alt.Color("where:N", sort=["before", "after"],
                        scale=alt.Scale(range=[PALETTE[1], PALETTE[4]]), title="stream"),
        tooltip=["norm", "where", alt.Tooltip("size:Q", format=".3f"),
                 alt.Tooltip("smallest:Q", format=".3f"), alt.Tooltip("largest:Q", format=".3f")]
    ).properties(height=44 * len(order)), width="stretch")


POSITIONS_SHOWN, DIMENSIONS_SHOWN = 64, 128  # the rest adds cells, not insight


def positions_view(model) -> None:
    """The deck's sinusoidal position table at this model's sizes (or the table the model learned),
    and how alike every two positions are."""
    cfg = model.config
    kinds = ["sinusoidal (the deck's formula)"]
    if cfg.pos_encoding == "learned":
        kinds.append("learned (this model's table)")
    else:
        st.caption(f"This model uses {cfg.pos_encoding} positions"
                   + ("." if cfg.pos_encoding == "sinusoidal" else
                      ", so it adds no table: the sinusoidal one is shown for comparison."))
    kind = st.radio("position table", kinds, horizontal=True, key="positions")
    if kind.startswith("learned"):
        table = model.pos_emb.vectors()
        note = ("trained like any weight, with no formula: compare its fingerprint picture with "
                "the sinusoidal table's.")
    else:
        table = sinusoidal_table(cfg.context_length, cfg.embed_dim)
        note = ("each pair of columns is a sine and a cosine wave; the first columns change fast "
                "from one position to the next, the later ones slowly, like the hands of a clock.")
    table = table.detach().float().cpu()[:POSITIONS_SHOWN]
    st.markdown(f"**The {kind.split()[0]} position table**: one row per position, one column per "
                "dimension of the embedding; the row is added to the embedding of the token at "
                "that position.")
    st.caption("What am I looking at: " + note
               + (f" First {DIMENSIONS_SHOWN} of {cfg.embed_dim} dimensions."
                  if cfg.embed_dim > DIMENSIONS_SHOWN else "")
               + (f" First {POSITIONS_SHOWN} of {cfg.context_length} positions."
                  if cfg.context_length > POSITIONS_SHOWN else ""))
    st.altair_chart(matrix_chart(table[:, :DIMENSIONS_SHOWN], "dimension", "position", "value"),
                    width="stretch")
    st.markdown("**Every position a unique fingerprint**: the cosine similarity of every two "
                "positions' vectors.")
    st.caption("What am I looking at: row p compares position p with every other. Only the "
               "diagonal reaches 1, so no two positions look alike to the model, and nearby "
               "positions are more similar than distant ones.")
    similarity = position_similarity(table)  # the colours span its own range, for contrast
    st.altair_chart(matrix_chart(similarity, "compared with position", "position", "similarity",
                                 domain=[float(similarity.min()), 1.0]), width="stretch")


def matrix_chart(matrix: torch.Tensor, x: str, y: str, value: str,
                 domain: list[float] | None = None) -> alt.Chart:
    """A (rows, columns) matrix as a heatmap in the shared palette, symmetric about 0, with a tick
    every few rows and columns and the value on hover."""
    limit = float(matrix.abs().max()) or 1.0
    rows = [{y: r, x: c, value: float(matrix[r, c])}
            for r in range(matrix.size(0)) for c in range(matrix.size(1))]

    def axis(n: int) -> alt.Axis:
        return alt.Axis(values=list(range(0, n, max(1, n // 8))), labelAngle=0)

    return alt.Chart(pd.DataFrame(rows)).mark_rect().encode(
        x=alt.X(f"{x}:O", axis=axis(matrix.size(1))),
        y=alt.Y(f"{y}:O", axis=axis(matrix.size(0))),
        color=alt.Color(f"{value}:Q", scale=alt.Scale(domain=domain or [-limit, limit],
                                                      range=list(PALETTE)), title=value),
        tooltip=[y, x, alt.Tooltip(f"{value}:Q", format=".3f")],
    ).properties(height=min(480, 7 * matrix.size(0) + 60))


def temperature_view(seen, tokenizer, temperature: float) -> None:
    st.markdown("The next-token distribution after the prompt, `softmax(logits / T)`, at the "
                f"sidebar's temperature (T = {temperature:g}) beside lower and higher ones: low T "
                "sharpens it, high T flattens it. T = 0 would always pick the top token.")
    logits = seen.next_token_probs.log()
    top = seen.next_token_probs.topk(min(10, tokenizer.vocab_size)).indices.tolist()
    temperatures = sorted({0.5, 1.0, 2.0, max(temperature, 0.05)})
    rows = []
    for t in temperatures:
        probs = torch.softmax(logits / t, dim=-1)
        rows += [{"token": repr(tokenizer.decode([i])), "T": t,
                  "probability": float(probs[i])} for i in top]
    order = [repr(tokenizer.decode([i])) for i in top]  # most likely first
    st.altair_chart(alt.Chart(pd.DataFrame(rows)).mark_bar().encode(
        y=alt.Y("token:N", sort=order, title="next token (most likely first)"),
        x=alt.X("probability:Q", title="probability"),
        color=alt.Color("T:O", scale=alt.Scale(range=colours(len(temperatures))),
                        title="temperature"),
        yOffset="T:O", tooltip=["token", "T", alt.Tooltip("probability:Q", format=".3f")]
    ).properties(height=40 * len(top)), width="stretch")


def learning_view(run_dir: Path) -> None:
    """The probe prompt's attention and logit lens as they were at each evaluation of the run."""
    kept = load_snapshots(run_dir)
    if not kept or not kept["steps"]:
        st.info("This run kept no snapshots of its evaluations (runs trained before this version "
                "of minigpt); train a new one to watch it learn.")
        return
    st.markdown("The run's probe prompt (`train.sample_prompt`) as the model saw it at every "
                "evaluation: move the slider to watch previous-token and first-token heads form.")
    steps = kept["steps"]
    step = st.select_slider("training step", options=steps, value=steps[-1], key="step")
    snapshot = kept["snapshots"][steps.index(step)]
    st.image(layers_image(list(snapshot["attention"].float()), kept["tokens"]), output_format="PNG",
             caption=f"attention at step {step}")


def prompt_notes(tokenizer, prompt: str) -> None:
    """Say in the page what the command line would warn about."""
    if not prompt:
        st.info("The prompt is empty: the model starts as if at the beginning of a new line, so "
                "the views below show that single start token.")
    unknown = tokenizer.unknown_words(prompt) if isinstance(tokenizer, WordTokenizer) else []
    if unknown:
        st.warning(f"{len(unknown)} word(s) are not in this model's vocabulary and become <unk> "
                   f"(shown as such below): {', '.join(unknown[:10])}")


def main() -> None:
    st.set_page_config(page_title="minigpt", layout="wide")
    st.title("minigpt: look inside a small GPT")
    loaded = choose_model()
    if loaded is None:
        return
    model, tokenizer, run_dir = loaded
    controls = sampling_controls(tokenizer.vocab_size, model.config.context_length)
    prompt = st.text_input("Prompt", value="the cat sat on", key="prompt")
    try:
        with warnings.catch_warnings():  # said in the page instead, by prompt_notes
            warnings.simplefilter("ignore")
            seen = inspect_prompt(model, tokenizer, prompt)
    except MiniGPTError as err:
        st.error(f"That prompt cannot be used: {err}")
        return
    prompt_notes(tokenizer, prompt)
    generation_section(model, tokenizer, prompt, controls)
    attention_tab, layers_tab, positions_tab, temperature_tab, learning_tab = st.tabs(
        ["Attention", "Layer outputs", "Positions", "Temperature", "Watch it learn"])
    with attention_tab:
        attention_view(seen, model.config)
    with layers_tab:
        layers_view(seen, model.config)
    with positions_tab:
        positions_view(model)
    with temperature_tab:
        temperature_view(seen, tokenizer, controls["temperature"])
    with learning_tab:
        learning_view(run_dir)


main()
