"""What the app shows under the prompt: the generated text, and a view per tab (attention, layer
outputs, positions, temperature, watch it learn). Each view lays out Streamlit widgets and text
around charts drawn by minigpt.charts."""

from pathlib import Path

import streamlit as st

from minigpt import charts, show
from minigpt.app.hypothesis import remember, val_tokens
from minigpt.errors import MiniGPTError
from minigpt.generation import generate_text
from minigpt.gpt2 import is_gpt2_dir
from minigpt.inspection import (
    load_snapshots,
    token_probabilities,
    top_activations,
)
from minigpt.resume import resume_config
from minigpt.tokenizer import WordTokenizer

LAYERS_NOTE = ("Layers are numbered from the input: layer 0 is the embeddings (token and "
               "position), layer N the output of block N.")
LENS_ROW_0_NOTE = (f"the top row, {charts.LENS_ROW_0}, reads the embeddings before any block "
                   "has run: there the token itself is the likeliest 'next' token (the head reads "
                   "back the embedding it is tied to), so it says nothing about the prediction. "
                   "Predictions form in the rows above it.")
NEAREST = 12  # neighbours shown of a token in the embedding  # the rest adds cells, not insight


def prompt_notes(tokenizer, prompt: str) -> None:
    """Say in the page what the command line would warn about."""
    if not prompt:
        st.info("The prompt is empty: the model starts as if at the beginning of a new line, so "
                "the views below show that single start token.")
    unknown = tokenizer.unknown_words(prompt) if isinstance(tokenizer, WordTokenizer) else []
    if unknown:
        count = sum(word not in tokenizer.index for word in tokenizer.split(prompt))
        st.warning(f"{count} token(s) of the prompt are not in this model's vocabulary and "
                   f"become <unk> (shown as such below); the unknown words and marks: "
                   f"{', '.join(repr(w) for w in unknown[:10])}")


def generation_view(model, tokenizer, prompt: str, controls: dict) -> str:
    """The Generate button, the streamed text, and the probability of each generated token;
    returns the text generated after this prompt ("" when there is none)."""
    if st.button("Generate", key="generate", type="primary"):
        placeholder, text = st.empty(), ""  # streamed in the same box the full text stays in
        for piece in generate_text(model, tokenizer, prompt, **controls):
            text += piece.text
            placeholder.code(prompt + text, language=None, wrap_lines=True)
        placeholder.empty()
        st.session_state["generated"] = (prompt, text)
    if st.session_state.get("generated", (None,))[0] != prompt:
        return ""
    generated = st.session_state["generated"][1]
    st.markdown("**Generated text** (prompt, then the model's continuation)")
    st.code(prompt + generated, language=None, wrap_lines=True)
    prompt_ids = tokenizer.encode(prompt) if prompt else []
    new_ids = tokenizer.encode(tokenizer.decode(prompt_ids) + generated)[len(prompt_ids):]
    if new_ids and prompt_ids:
        with st.expander("Token-by-token probabilities of the generated text"):
            # One forward pass per token: kept across reruns (a slider move reruns the page).
            probs = remember("probabilities", (id(model), prompt, generated), lambda:
                             token_probabilities(model, prompt_ids + new_ids, len(prompt_ids)))
            tokens = [tokenizer.decode([i]) for i in new_ids]
            st.caption("What am I looking at: the probability the model itself gave each token "
                       "when it was chosen, at temperature 1 and before top-k/top-p: the "
                       f"sidebar's sampling (T = {controls['temperature']:g}) reshaped these "
                       "before drawing. Switch on 'Inspect the generated text too' to look inside "
                       "any of these positions.")
            st.altair_chart(charts.probability_chart(tokens, probs,
                                                     len(prompt_ids)), width="stretch")
    return generated


def attention_view(seen, cfg) -> None:
    st.caption(LAYERS_NOTE + " Each heatmap: rows are the prompt's tokens (queries), columns the "
               "tokens each one attends to (keys); a row sums to 1.")
    with st.expander("Model view: every layer and head at once (open one with its button)",
                     expanded=True):
        model_view(seen, cfg)
    layer = st.selectbox("layer", range(1, cfg.num_layers + 1), key="layer")
    count = len(seen.tokens)
    st.altair_chart(charts.weight_legend_chart(), width="content")  # once for the layer's heads
    if cfg.causal:
        st.caption("Grey cells are tokens after the query: the causal mask hides them, so the "
                   "token cannot see them at all (not the same as looking and giving them zero "
                   "weight).")
    columns = st.columns(4 if count <= 12 else 2 if count <= 30 else 1)
    opened = st.session_state.get("opened")
    for head in range(cfg.num_heads):
        with columns[head % len(columns)]:
            if opened == (layer, head):
                st.markdown(f":red-background[**layer {layer}, head {head}**: opened from the "
                            "model view]")
            else:
                st.caption(f"layer {layer}, head {head}")
            st.altair_chart(charts.attention_chart(seen.attentions[layer - 1][head], seen.tokens,
                                                   legend=False), width="stretch")
    head_view(seen, layer, cfg.num_heads)


def model_view(seen, cfg) -> None:
    """Every layer x head as a thumbnail in one chart, in the shared palette (0 to 1); the buttons
    under it, laid out as the thumbnails are, open a head in the heatmaps and the head view."""
    if len(seen.tokens) > charts.MODEL_VIEW_CELLS:
        st.caption(f"A long prompt: each thumbnail cell is a group of consecutive tokens (up to "
                   f"{charts.MODEL_VIEW_CELLS} groups); hover a cell for the positions.")
    st.altair_chart(charts.model_view_chart(seen.attentions, seen.tokens), width="content")
    for layer in range(1, cfg.num_layers + 1):
        for head, column in enumerate(st.columns(cfg.num_heads)):
            column.button(f"layer {layer}, head {head}", key=f"open_{layer}_{head}",
                          on_click=open_head, args=(layer, head))


def open_head(layer: int, head: int) -> None:
    st.session_state["layer"], st.session_state["head"] = layer, head
    st.session_state["opened"] = (layer, head)
    st.toast(f"Opened layer {layer}, head {head}: its heatmap is marked below the model view, "
             "and the head view shows it.")


def head_view(seen, layer: int, num_heads: int) -> None:
    """Pick a head and a token: the prompt with every earlier token shaded by how much that token
    attends to it."""
    st.markdown(f"**Head view** (layer {layer}): where one token looks")
    left, right = st.columns(2)
    head = left.selectbox("head", range(num_heads), key="head")
    labels = charts.token_labels(seen.tokens)
    # Keyed by the tokens: a new prompt starts at its last token, not at a stale index and label.
    query = right.selectbox("token", range(len(labels)), index=len(labels) - 1,
                            format_func=lambda i: labels[i], key=f"query:{labels}")
    masked = charts.is_masked(seen.attentions[layer - 1])
    st.markdown(show.head_view_html(seen, layer, head, query), unsafe_allow_html=True)
    if masked and query < len(labels) - 1:
        st.caption(f"The grey tokens come after {labels[query]}: the causal mask hides them from "
                   "it, so they get no weight because they cannot be seen, not because the head "
                   "looked and ignored them.")


def layers_view(seen) -> None:
    """The logit lens, what each sublayer adds, and what LayerNorm does to the stream."""
    st.caption(LAYERS_NOTE)
    st.markdown("**Logit lens**: the most likely next token read from each layer's output "
                "(through the final norm and head); colour is its probability, hover for the "
                "top 5.")
    st.caption("What am I looking at: " + LENS_ROW_0_NOTE)
    st.altair_chart(charts.logit_lens_chart(seen), width="stretch")
    st.markdown("**What attention and the feed-forward block each add**: the size of each "
                "sublayer's output relative to the residual stream it is added to, per token.")
    st.caption("What am I looking at: attention moves information between tokens, the "
               "feed-forward block (GELU MLP) transforms each token on its own. A bright cell is a "
               "sublayer that rewrote that token; a dark one barely touched it. The colour scale is "
               "logarithmic, as the first layer rewrites the small embeddings far more than later "
               "layers change their input.")
    st.altair_chart(charts.sublayer_chart(seen), width="stretch")
    st.markdown("**What LayerNorm does to the stream**: each token vector's size (root mean "
                "square) entering and leaving every LayerNorm, averaged over the prompt's tokens "
                "(hover for the smallest and largest).")
    if not seen.norm_scales:
        st.info("This model has no LayerNorm (model.layer_norm = false, an ablation).")
        return
    st.caption("What am I looking at: the stream grows as the layers add to it, and differs "
               "from token to token; every LayerNorm brings each token back to size about 1 "
               "(times its learned gain) before a sublayer reads it, which keeps training stable.")
    st.altair_chart(charts.norm_chart(seen), width="stretch")


NEURON_TOKENS = 100_000  # of the val split searched for a neuron's strongest places


def neuron_view(model, tokenizer, run_dir: Path, modified: float) -> None:
    """Where a chosen feed-forward neuron fires most in the val text."""
    cfg = model.config
    st.markdown("**Neuron view**: the places in the val text where one feed-forward neuron "
                "(after GELU) is most active.")
    if not cfg.ffn:
        st.info("This model has no feed-forward blocks (model.ffn = false, an ablation): it has "
                "no neurons to show.")
        return
    left, right = st.columns(2)
    layer = left.selectbox("layer", range(1, cfg.num_layers + 1), key="neuron_layer")
    width = model.blocks[0].ffn.fc.out_features
    neuron = int(right.number_input(f"neuron (0 to {width - 1})", 0, width - 1, 0, key="neuron"))
    val, source = val_tokens(str(run_dir), tokenizer, modified)
    places = remember("neuron_places", (str(run_dir), modified, layer, neuron),  # a pass over val
                      lambda: top_activations(model, val[:NEURON_TOKENS], layer, neuron))
    st.caption(f"What am I looking at: each row is a place in {source} where neuron {neuron} of "
               f"layer {layer} fires strongly, strongest first, with the tokens before it (its "
               "context) and a few after; colour is the neuron's activation at each token (a "
               "blank cell: the window the model read starts later, so it saw nothing there). What "
               "the rows share (a word, a position after a word, a kind of sentence) is a guess "
               "at what the neuron detects: test it by knocking the neuron out "
               "(minigpt.interventions.ablate with neurons=[(layer, neuron)]).")
    st.altair_chart(charts.neuron_chart(places, tokenizer),
                    width="stretch")


def position_table(model) -> tuple[str, str]:
    """The radio choice of position table: (its kind for minigpt.show, what to notice in it)."""
    cfg = model.config
    kinds = ["sinusoidal (the deck's formula)"]
    if cfg.pos_encoding == "learned":
        kinds.append("learned (this model's table)")
    else:
        st.caption(f"This model uses {cfg.pos_encoding} positions"
                   + ("." if cfg.pos_encoding == "sinusoidal" else
                      ", so it adds no table: the sinusoidal one is shown for comparison."))
    kind = st.radio("position table", kinds, horizontal=True, key="positions").split()[0]
    if kind == "learned":
        return kind, ("trained like any weight, with no formula: compare its fingerprint picture "
                      "with the sinusoidal table's.")
    return kind, ("each pair of columns is a sine and a cosine wave; the first columns change fast "
                  "from one position to the next, the later ones slowly, like the hands of a "
                  "clock.")


def positions_view(model) -> None:
    """The deck's sinusoidal position table at this model's sizes (or the table the model learned),
    and how alike every two positions are."""
    cfg = model.config
    kind, note = position_table(model)
    st.markdown(f"**The {kind} position table**: one row per position, one column per "
                "dimension of the embedding; the row is added to the embedding of the token at "
                "that position.")
    st.caption("What am I looking at: " + note
               + (f" First {show.DIMENSIONS_SHOWN} of {cfg.embed_dim} dimensions."
                  if cfg.embed_dim > show.DIMENSIONS_SHOWN else "")
               + (f" First {show.POSITIONS_SHOWN} of {cfg.context_length} positions."
                  if cfg.context_length > show.POSITIONS_SHOWN else ""))
    st.altair_chart(show.positions(model, kind), width="stretch")
    st.markdown("**Every position a unique fingerprint**: the cosine similarity of every two "
                "positions' vectors.")
    st.caption("What am I looking at: row p compares position p with every other. Only the "
               "diagonal reaches 1, so no two positions look alike to the model, and nearby "
               "positions are more similar than distant ones.")
    st.altair_chart(show.position_fingerprints(model, kind), width="stretch")


def embedding_view(model, tokenizer, ids: list[int]) -> None:
    """The token embedding itself: the tokens whose rows are nearest a chosen token's row."""
    st.markdown("**The token embedding**: each token's row of the embedding table, compared "
                "with every other token's by cosine similarity.")
    choices = list(dict.fromkeys(ids))
    token = st.selectbox("token (from the text inspected)", choices, key=f"embedding:{choices}",
                         format_func=lambda i: repr(tokenizer.decode([i])))
    st.altair_chart(show.embedding(model, tokenizer, token, NEAREST), width="stretch")
    st.caption("What am I looking at: the tokens whose embeddings point the most the same way "
               "as this one's (1 = the same direction, 0 = unrelated). Training puts tokens that "
               "are used alike near each other before any layer has run: look for a word's "
               "neighbours being words of the same kind.")


def temperature_view(seen, tokenizer, controls: dict) -> None:
    temperature, top_k, top_p = controls["temperature"], controls["top_k"], controls["top_p"]
    sidebar = "greedy: T = 0 always picks the top token" if temperature == 0 else \
        f"T = {temperature:g}"
    cuts = [f"top-k {top_k}" if top_k else "", f"top-p {top_p:g}" if top_p < 1 else ""]
    cuts = " and ".join(c for c in cuts if c)
    st.markdown("The distribution the next token is drawn from, `softmax(logits / T)`"
                + (f" after {cuts}" if cuts else "") + f", at the sidebar's setting ({sidebar}, "
                "marked) beside other temperatures: low T sharpens it, high T flattens it.")
    st.caption("What am I looking at: the model's 10 likeliest next tokens after the "
               "text inspected" + (f"; tokens that {cuts} cut get probability 0" if cuts else "")
               + ". On a prompt the model is sure about, every temperature keeps the top token "
               "far ahead: try a prompt that could go on in several ways.")
    st.altair_chart(show.temperature(None, tokenizer, seen, temperature, top_k, top_p,
                                     mark="sidebar"), width="stretch")


def no_snapshots_note(run_dir: Path) -> str:
    """Why a run has nothing to play back in Watch it learn."""
    if is_gpt2_dir(run_dir):
        return ("A GPT-2 directory holds the trained weights only: there is no training of it to "
                "watch here.")
    try:
        probed = resume_config(run_dir).train.probe
    except MiniGPTError:  # no readable config.json: say what the other cases have in common
        probed = True
    if not probed:
        return ("This run was trained with --train.probe false, which keeps no snapshots of its "
                "training: train with the probe on (the default) to watch a model learn.")
    return ("This run kept no snapshots of its training: it stopped before its first evaluation "
            "(or, if it is older, was trained before minigpt kept them). Resume it (python "
            "train.py --resume RUN_DIR) or train a new one to watch it learn.")


def learning_view(run_dir: Path, tokenizer) -> None:
    """The probe prompt's attention, logit lens and every head's scores as they were at each
    evaluation of the run, following one step slider."""
    kept = load_snapshots(run_dir)
    if not kept or not kept["steps"]:
        st.info(no_snapshots_note(run_dir))
        return
    st.markdown("The run's probe prompt (`train.sample_prompt`) as the model saw it at every "
                "evaluation: move the slider to watch previous-token and first-token heads form "
                "(induction heads only where the head scores below rise).")
    steps = kept["steps"]
    if st.session_state.get("step_run") != str(run_dir):  # another run: start at its last step
        st.session_state["step_run"] = str(run_dir)
        st.session_state.pop("step", None)
    step = st.select_slider("training step", options=steps, value=steps[-1], key="step")
    drawn = show.learning_charts(kept, step, tokenizer)
    st.caption(f"attention at step {step}")
    st.altair_chart(drawn["attention"], width="content")
    if "logit lens" in drawn:
        st.caption(f"logit lens at step {step}: " + LENS_ROW_0_NOTE)
        st.altair_chart(drawn["logit lens"], width="stretch")  # as wide as its text needs
    if "head scores" in drawn:
        st.caption(f"head scores at step {step} (mean attention weights on the val text and on "
                   "a random sequence repeated once; the Test a hypothesis tab explains each)")
        st.altair_chart(drawn["head scores"], width="content")
    if "scores over training" in drawn:
        st.caption("What am I looking at: the best induction score of any head, and the "
                   "in-context-learning score (loss late in the context minus loss early; below "
                   "0 when the model uses what came before), at every evaluation. An induction "
                   "head forming shows as a jump in the first together with a drop in the "
                   "second; the yellow rule is the step shown above.")
        st.altair_chart(drawn["scores over training"], width="content")
