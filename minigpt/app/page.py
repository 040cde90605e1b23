"""The app's page: the sidebar (which model, the sampling controls, the training panel), the
prompt, the generated text and the tabs of views. `main()` draws it once; Streamlit runs it again
at every widget change."""

import warnings
from pathlib import Path

import streamlit as st

from minigpt.app import hypothesis, views
from minigpt.app.training import runs_dir, training_panel
from minigpt.checkpoint import check_path, list_runs, load
from minigpt.errors import MiniGPTError
from minigpt.generation import encode_prompt
from minigpt.inspection import inspect_prompt

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@st.cache_resource(show_spinner="Loading the checkpoint...")
def load_model(path: str, modified: float):
    """(model, tokenizer), cached per file and modification time so widgets respond at once."""
    return load(path)


def serving_locally() -> bool:
    """Whether the server listens on the loopback address only, so every visitor is on this
    machine (`--server.address 0.0.0.0` shares the app and turns this off)."""
    return (st.get_option("server.address") or "") in LOOPBACK


def choose_model():
    """The sidebar's choice of run (and the button that trains one): (model, tokenizer, run
    directory), or None when there is nothing to show yet."""
    st.sidebar.header("Model")
    out_dir = runs_dir()
    runs = list_runs(out_dir)
    path = st.sidebar.selectbox("Run (newest first)", runs, format_func=lambda run: run.name,
                                key="run") if runs else None
    if serving_locally():
        with st.sidebar.expander("Open a checkpoint by path (this machine only)"):
            typed = st.text_input("run directory or .pt file", key="checkpoint").strip()
        path = Path(typed) if typed else path
    with st.sidebar:
        training_panel()
    if path is None:
        st.info(f"No trained run in {out_dir}/ yet: train the default tiny model from the sidebar, "
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
    describe_model(model, tokenizer)
    st.session_state["modified"] = modified
    return model, tokenizer, path if path.is_dir() else path.parent


def describe_model(model, tokenizer) -> None:
    """The model's sizes and parts under the run list, and a warning for a non-causal one."""
    cfg = model.config
    st.sidebar.caption(f"{model.num_params():,} parameters; {cfg.num_layers} layers x "
                       f"{cfg.num_heads} heads, {cfg.embed_dim} dims, {cfg.pos_encoding} positions, "
                       f"{cfg.norm_placement}-norm; {tokenizer.kind} tokenizer, "
                       f"{tokenizer.vocab_size} tokens" + removed_parts(cfg))
    if not cfg.causal:
        st.sidebar.warning("This model was trained without the causal mask: it learned to read the "
                           "next token instead of predicting it, so its views and samples show a "
                           "cheat, not a language model.")


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


def reads_tokens(tokenizer, text: str) -> bool:
    try:
        return bool(tokenizer.encode(text))
    except MiniGPTError:  # characters the tokenizer never saw: said where the prompt is used
        return True


def quiet_encode(tokenizer, text: str, context_length: int) -> list[int]:
    """The text's last context_length token ids; unknown words are said by prompt_notes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return encode_prompt(tokenizer, text, context_length)


def main() -> None:
    st.set_page_config(page_title="minigpt", layout="wide")
    st.title("minigpt: look inside a small GPT")
    loaded = choose_model()
    if loaded is None:
        return
    model, tokenizer, run_dir = loaded
    controls = sampling_controls(tokenizer.vocab_size, model.config.context_length)
    prompt = st.text_input("Prompt", value="the cat sat on", key="prompt")
    if prompt and not prompt.strip() and not reads_tokens(tokenizer, prompt):
        st.info("A prompt of only spaces holds no tokens for this model's tokenizer: the views "
                "below start from the start token, as for an empty prompt.")
        prompt = ""
    try:
        ids = quiet_encode(tokenizer, prompt, model.config.context_length)
    except MiniGPTError as err:
        st.error(f"That prompt cannot be used: {err}")
        return
    views.prompt_notes(tokenizer, prompt)
    generated = views.generation_view(model, tokenizer, prompt, controls)
    if generated and st.toggle("Inspect the generated text too (the views below cover the "
                               "prompt and its continuation)", key="inspect_generated"):
        ids = quiet_encode(tokenizer, prompt + generated, model.config.context_length)
    tabs_view(model, tokenizer, ids, run_dir, controls)


TABS = ("Attention", "Layer outputs", "Positions", "Temperature", "Watch it learn",
        "Test a hypothesis")
# The widgets on each tab, by key or key prefix (see keep_hidden_choices).
TAB_WIDGETS = {"Attention": ("layer", "head", "query:"), "Layer outputs": ("neuron",),
               "Positions": ("positions", "embedding:"),
               "Watch it learn": ("step",),
               "Test a hypothesis": ("knockout", "clean", "corrupted", "answer:", "wrong:",
                                     "dla_token:")}


def keep_hidden_choices(open_tab: str) -> None:
    """Streamlit forgets the value of a widget that a run does not draw, and only the open tab is
    drawn: storing the other tabs' widget values again keeps a user's choices for their return."""
    hidden = tuple(prefix for tab, prefixes in TAB_WIDGETS.items() if tab != open_tab
                   for prefix in prefixes)
    for key in list(st.session_state):
        if key.startswith(hidden):
            st.session_state[key] = st.session_state[key]


def tabs_view(model, tokenizer, ids: list[int], run_dir: Path, controls: dict) -> None:
    """The tabs of views. Only the open one is drawn (a tab click reruns the page), so a slider
    on one tab does not redraw the charts of all six."""
    keep_hidden_choices(st.session_state.get("tab", TABS[0]))
    tabs = dict(zip(TABS, st.tabs(TABS, key="tab", on_change="rerun")))
    name, tab = next((name, tab) for name, tab in tabs.items() if tab.open)
    with tab:
        if name in ("Attention", "Layer outputs", "Temperature"):
            seen = inspect_prompt(model, tokenizer, ids)
        if name == "Attention":
            views.attention_view(seen, model.config)
        elif name == "Layer outputs":
            views.layers_view(seen)
            views.neuron_view(model, tokenizer, run_dir, st.session_state["modified"])
        elif name == "Positions":
            views.positions_view(model)
            views.embedding_view(model, tokenizer, ids)
        elif name == "Temperature":
            views.temperature_view(seen, tokenizer, controls)
        elif name == "Watch it learn":
            views.learning_view(run_dir, tokenizer)
        else:
            hypothesis.hypothesis_view(model, tokenizer, ids, run_dir, st.session_state["modified"])
