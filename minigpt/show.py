"""The app's views as functions, for a notebook (Jupyter, VS Code, Colab) or a script.

    from minigpt import load, show
    model, tokenizer = load("runs/default")
    show.attention(model, tokenizer, "the cat sat on the mat")   # one layer's heads, inline
    seen = show.inspect(model, tokenizer, "the cat sat on")      # reuse one pass for many views
    show.logit_lens(model, tokenizer, seen)
    show.logit_lens(model, tokenizer, seen).save("lens.html")    # or .png with vl-convert

Every function takes a model, its tokenizer and a prompt (text, token ids, or the PromptInspection
of one from show.inspect) or what else the view reads, and returns an Altair chart (the head view:
an HTML object). The demo app calls these same functions, so a view looks the same in both; the
drawing itself is in minigpt.charts and minigpt.circuit_charts.

Offline: importing this module switches Altair (if the user has not chosen a renderer) to its HTML
renderer with Vega's JavaScript inside each chart, from vl-convert-python (the `notebook` extra),
so charts draw with no network, in Jupyter, VS Code, Colab and a saved notebook alike. Without
vl-convert Altair's default stays (its HTML loads the JavaScript from a CDN) and the import says so.
"""

import html
from pathlib import Path

import altair as alt
import torch

from minigpt import charts, circuit_charts
from minigpt.generation import encode_prompt
from minigpt.head_scores import head_scores as score_heads
from minigpt.heatmap import colour
from minigpt.inspection import (
    PromptInspection,
    inspect_prompt,
    load_snapshots,
    nearest_tokens,
    position_similarity,
    token_probabilities,
    top_activations,
)
from minigpt.interventions import ablate, logit_attribution, patch, patching_tokens
from minigpt.notebook import use_offline_renderer
from minigpt.positions import sinusoidal_table

POSITIONS_SHOWN, DIMENSIONS_SHOWN = 64, 128  # more rows or columns than these add cells, not insight
WIDTH = 760  # pixels of a grid chart in a notebook (the app stretches charts to its page)
PAGE = 1000  # pixels of a notebook's output area, about: heads wrap to fit it
ATTENTION_CELLS = 128  # tokens a head's heatmap shows one by one; longer prompts are pooled


def inspect(model, tokenizer, prompt) -> PromptInspection:
    """One forward pass that every prompt view can read: pass its result as the prompt."""
    if isinstance(prompt, PromptInspection):
        return prompt
    return inspect_prompt(model, tokenizer, prompt if isinstance(prompt, str)
                          else _ids(model, tokenizer, prompt))


# --- Attention --------------------------------------------------------------------------------

def model_view(model, tokenizer, prompt) -> alt.Chart:
    """Every layer x head as a thumbnail (bertviz's model view); hover for the weights."""
    seen = inspect(model, tokenizer, prompt)
    return charts.model_view_chart(seen.attentions, seen.tokens)


def attention(model, tokenizer, prompt, layer: int = 1) -> alt.Chart:
    """One layer's heads (layer from 1) as heatmaps, queries down, keys across, with one shared
    colour scale; the cells the causal mask hides are grey. Past ATTENTION_CELLS tokens,
    consecutive tokens are pooled into groups (as the model view does), so a head stays legible."""
    seen = inspect(model, tokenizer, prompt)
    _check_layer(model, layer)
    weights, labels = charts.pooled(seen.attentions[layer - 1],
                                    charts.token_labels(seen.tokens, width=14), ATTENTION_CELLS)
    side = max(200, charts.heatmap_cell(len(labels)) * len(labels))
    heads = [charts.attention_chart(w, seen.tokens, legend=False, labels=labels).properties(
        title=f"layer {layer}, head {h}", width=side) for h, w in enumerate(weights)]
    across = max(1, PAGE // (side + 140))  # a head's labels and titles take about 140 pixels
    return alt.vconcat(charts.weight_legend_chart(),
                       *(alt.hconcat(*heads[i:i + across]) for i in range(0, len(heads), across)))


class HTML:
    """HTML that a notebook displays as it is (IPython's display protocol)."""

    def __init__(self, text: str):
        self.text = text

    def _repr_html_(self) -> str:
        return self.text


def head_view(model, tokenizer, prompt, layer: int = 1, head: int = 0, token: int = -1) -> HTML:
    """The prompt with every token shaded by how much `token` (an index; -1 the last) attends to
    it in one head; the tokens the causal mask hides from it are grey with a dashed border."""
    seen = inspect(model, tokenizer, prompt)
    _check_layer(model, layer)
    _check_whole("head", head, 0, model.config.num_heads - 1)
    _check_whole("token", token, -len(seen.tokens), len(seen.tokens) - 1)
    return HTML(head_view_html(seen, layer, head, range(len(seen.tokens))[token]))


def head_view_html(seen: PromptInspection, layer: int, head: int, query: int) -> str:
    """The head view as HTML spans, with the weight (or that it is masked) on hover."""
    weights = seen.attentions[layer - 1][head][query]
    masked = charts.is_masked(seen.attentions[layer - 1])
    labels = charts.token_labels(seen.tokens)
    spans = []
    for i, token in enumerate(seen.tokens):
        hidden = masked and i > query
        shade = charts.MASK_GREY if hidden else "#{:02x}{:02x}{:02x}".format(
            *colour(float(weights[i])))
        ink = "#555" if hidden else "black" if weights[i] > 0.5 else "white"
        border = "2px solid #c0392b" if i == query else "1px dashed #888" if hidden else "none"
        style = (f"background:{shade};color:{ink};border:{border};padding:1px 3px;margin:1px;"
                 "font-family:monospace;line-height:1.9")
        title = f"{labels[i]}: {charts.MASKED}, hidden" if hidden else \
            f"{labels[i]}: {float(weights[i]):.3f}"
        spans.append(f'<span style="{style}" title="{html.escape(title)}">'
                     f"{html.escape(repr(token)[1:-1]) or '&nbsp;'}</span>")
    return " ".join(spans)


# --- Layer outputs -----------------------------------------------------------------------------

def logit_lens(model, tokenizer, prompt) -> alt.Chart:
    """The likeliest next token read from each layer's output (layer 0: the embeddings, which
    predict nothing yet); colour is its probability, hover for the top 5."""
    seen = inspect(model, tokenizer, prompt)
    return _wide(charts.logit_lens_chart(seen), len(seen.tokens))


def layer_change(model, tokenizer, prompt) -> alt.Chart:
    """How much each block changed each token: |output - input| / |input| (comparing layer
    outputs, as the deck does)."""
    seen = inspect(model, tokenizer, prompt)
    return _wide(charts.layer_change_chart(seen), len(seen.tokens))


def sublayers(model, tokenizer, prompt) -> alt.Chart:
    """What attention and the feed-forward block each add to every token, relative to the
    stream they are added to."""
    seen = inspect(model, tokenizer, prompt)
    return _wide(charts.sublayer_chart(seen), len(seen.tokens))


def layer_norms(model, tokenizer, prompt) -> alt.Chart:
    """Each token vector's size entering and leaving every LayerNorm."""
    seen = inspect(model, tokenizer, prompt)
    if not seen.norm_scales:
        raise ValueError("this model has no LayerNorm (model.layer_norm = false)")
    return charts.norm_chart(seen).properties(width=WIDTH // 2)


def neurons(model, tokenizer, text, layer: int, neuron: int, count: int = 8) -> alt.Chart:
    """The places in a text (or token ids) where one feed-forward neuron fires most."""
    ids = torch.as_tensor(tokenizer.encode(text) if isinstance(text, str) else text)
    places = top_activations(model, ids, layer, neuron, count)
    return _wide(charts.neuron_chart(places, tokenizer), max(len(p.ids) for p in places))


# --- Positions and embeddings -------------------------------------------------------------------

def position_table(model, kind: str = "sinusoidal") -> torch.Tensor:
    """The (positions, C) table to show: the deck's sinusoidal formula at this model's sizes, or
    (kind "learned") the one this model trained."""
    cfg = model.config
    if kind == "learned":
        if cfg.pos_encoding != "learned":
            raise ValueError(f"this model uses {cfg.pos_encoding} positions: it has no learned "
                             "table (show the sinusoidal one)")
        return model.pos_emb.vectors().detach().float().cpu()
    if kind != "sinusoidal":
        raise ValueError(f"kind must be 'sinusoidal' or 'learned', not {kind!r}")
    return sinusoidal_table(cfg.context_length, cfg.embed_dim)


def positions(model, kind: str = "sinusoidal") -> alt.Chart:
    """The position table (one row per position, a column per dimension), first POSITIONS_SHOWN
    positions and DIMENSIONS_SHOWN dimensions."""
    table = position_table(model, kind)[:POSITIONS_SHOWN, :DIMENSIONS_SHOWN]
    return charts.matrix_chart(table, "dimension", "position", "value").properties(width=WIDTH)


def position_fingerprints(model, kind: str = "sinusoidal") -> alt.Chart:
    """The cosine similarity of every two positions' vectors: only the diagonal reaches 1."""
    similarity = position_similarity(position_table(model, kind)[:POSITIONS_SHOWN])
    return charts.matrix_chart(similarity, "compared with position", "position", "similarity",
                               domain=[float(similarity.min()), 1.0]).properties(width=WIDTH // 2)


def embedding(model, tokenizer, token: str | int, count: int = 12) -> alt.Chart:
    """The tokens whose embedding rows point most the same way as token's (text of one token, or
    its id)."""
    if isinstance(token, str):
        token = _one_token(tokenizer, token)
    _check_whole("token", token, 0, model.config.vocab_size - 1)
    _check_whole("count", count, 1, model.config.vocab_size - 1)
    near, similarity = nearest_tokens(model.token_emb.weight, token, count)
    return charts.similarity_bars([tokenizer.decode([i]) for i in near], similarity).properties(
        width=WIDTH // 2, title=f"nearest to {tokenizer.decode([token])!r}")


# --- Sampling ----------------------------------------------------------------------------------

def temperature(model, tokenizer, prompt, temperature: float = 1.0, top_k: int | None = None,
                top_p: float = 1.0, mark: str = "chosen") -> alt.Chart:
    """The 10 likeliest next tokens under softmax(logits / T) at this T, marked "(mark)", beside
    T = 0.5, 1, 2."""
    if not 0 <= temperature < float("inf"):
        raise ValueError(f"temperature must be 0 (greedy) or more, got {temperature}")
    seen = inspect(model, tokenizer, prompt)
    return charts.temperature_chart(seen.next_token_probs, tokenizer, temperature, top_k,
                                    top_p, mark).properties(width=WIDTH // 2)


def probabilities(model, tokenizer, prompt, continuation: str) -> alt.Chart:
    """The probability the model gave each token of a continuation of the prompt (generated or
    written), from the context it was chosen in. The app shows this under generated text."""
    prompt_ids = _ids(model, tokenizer, prompt) if len(prompt) else []
    new_ids = tokenizer.encode(tokenizer.decode(prompt_ids) + continuation)[len(prompt_ids):]
    if not prompt_ids or not new_ids:
        raise ValueError("pass a prompt and a continuation of at least one token each")
    probs = token_probabilities(model, prompt_ids + new_ids, len(prompt_ids))
    return _wide(charts.probability_chart([tokenizer.decode([i]) for i in new_ids], probs,
                                          len(prompt_ids)), len(new_ids))


# --- Testing a hypothesis ----------------------------------------------------------------------

def knockout(model, tokenizer, prompt, heads, method: str = "zero",
             reference: torch.Tensor | None = None, top: int = 8) -> alt.Chart:
    """The next-token distribution with and without the heads [(layer, head), ...] (layer from 1)
    set to zero, or (method "mean") to their mean over reference token windows."""
    if len(heads) == 2 and all(isinstance(part, int) for part in heads):
        heads = [tuple(heads)]  # one (layer, head) pair
    result = ablate(model, _ids(model, tokenizer, prompt), heads=heads, method=method,
                    reference=reference)
    return knockout_chart(result, tokenizer, top).properties(width=WIDTH // 2)


def knockout_chart(result, tokenizer, top: int = 8) -> alt.Chart:
    """An ablation's next-token bars: the likeliest top tokens of either run, as trained and
    with the parts knocked out."""
    before, after = result.next_token_probs, result.ablated_next_token_probs
    top = max(1, min(top, before.numel()))
    chosen = list(dict.fromkeys(before.topk(top).indices.tolist()
                                + after.topk(top).indices.tolist()))
    return circuit_charts.next_token_bars([tokenizer.decode([i]) for i in chosen],
                                          before[chosen].tolist(), after[chosen].tolist())


def patching(model, tokenizer, clean, corrupted, answer: str | None = None,
             wrong: str | None = None) -> alt.Chart:
    """Activation patching: how much of the answer-minus-wrong logit gap each residual stream
    position, head and feed-forward block of the clean run recovers in the corrupted run (prompts
    of the same token count). answer and wrong are one token each; by default the clean run's
    prediction and the corrupted run's."""
    clean_ids, corrupted_ids = _ids(model, tokenizer, clean), _ids(model, tokenizer, corrupted)
    chosen = patching_tokens(model, clean_ids, corrupted_ids)
    answer_id, wrong_id = (chosen[i] if text is None else _one_token(tokenizer, text)
                           for i, text in enumerate((answer, wrong)))
    result = patch(model, clean_ids, corrupted_ids, answer_id, wrong_id)
    title = (f"logit({tokenizer.decode([answer_id])!r}) - logit({tokenizer.decode([wrong_id])!r}) "
             f"after the last token: {result.clean_diff:.2f} clean, {result.corrupted_diff:.2f} "
             "corrupted; each cell: the share of that gap one clean activation brings back")
    return alt.vconcat(*patching_charts(result, tokenizer, clean_ids, corrupted_ids),
                       title=title).resolve_scale(color="independent")


def patching_charts(result, tokenizer, clean: list[int], corrupted: list[int]) -> list[alt.Chart]:
    """The residual stream's grid, the heads', and (if the model has them) the FFNs'."""
    positions = [f"{i}:{tokenizer.decode([a])!r}" + ("" if a == b else f"/{tokenizer.decode([b])!r}")
                 for i, (a, b) in enumerate(zip(clean, corrupted))]
    layers, heads = result.heads.shape
    stream = ["embeddings", *(f"after block {i}" for i in range(1, layers + 1))]
    drawn = [circuit_charts.recovery_chart(result.residual, positions, stream, "position",
                                           "residual stream"),
             circuit_charts.recovery_chart(result.heads, [f"head {h}" for h in range(heads)],
                                           [f"layer {i}" for i in range(1, layers + 1)],
                                           "head", "layer")]
    if result.ffn is not None:
        drawn.append(circuit_charts.recovery_chart(
            result.ffn, positions, [f"layer {i} FFN" for i in range(1, layers + 1)],
            "position", "feed-forward"))
    return [_wide(chart, len(positions) if i != 1 else heads) for i, chart in enumerate(drawn)]


def attribution(model, tokenizer, prompt, token: str | None = None) -> alt.Chart:
    """Direct logit attribution: which embeddings, heads and feed-forward blocks wrote the logit
    of token (default: the model's likeliest next token) after the prompt. Pre-norm models only."""
    ids = _ids(model, tokenizer, prompt)
    if token is None:
        with torch.no_grad():
            chosen = int(model(torch.tensor([ids], device=model.token_emb.weight.device))[0, -1]
                         .argmax())
    else:
        chosen = _one_token(tokenizer, token)
    return circuit_charts.attribution_chart(logit_attribution(model, ids, chosen)).properties(
        width=WIDTH // 2)


def head_scores(model, tokenizer, text, length: int = 256) -> alt.Chart:
    """Every head's previous-token, first-token, duplicate-token and induction scores, measured
    on a text (or token ids) and on a random sequence repeated once."""
    ids = torch.as_tensor(tokenizer.encode(text) if isinstance(text, str) else text)
    return circuit_charts.head_scores_chart(score_heads(model, ids.long(), length=length)
                                            .as_dict())


# --- Watch it learn ----------------------------------------------------------------------------

def learning(run_dir, tokenizer, step: int | None = None) -> alt.Chart:
    """The run's probe prompt as the model saw it at one evaluation (default: the last): every
    head's attention and the logit lens, then the head scores over training."""
    if not Path(run_dir).is_dir():
        raise ValueError(f"run directory {run_dir} not found")
    kept = load_snapshots(Path(run_dir))
    if not kept or not kept["steps"]:
        raise ValueError(f"{run_dir} kept no snapshots of its training (trained with "
                         "train.probe false, or stopped before its first evaluation)")
    step = kept["steps"][-1] if step is None else step
    if step not in kept["steps"]:
        raise ValueError(f"no snapshot at step {step}; the run has {kept['steps']}")
    drawn = learning_charts(kept, step, tokenizer)
    curves = drawn.pop("scores over training", None)
    titled = [chart.properties(title=f"{name} at step {step}") for name, chart in drawn.items()]
    return alt.vconcat(*titled, *([curves] if curves is not None else [])
                       ).resolve_scale(color="independent")


def learning_charts(kept: dict, step: int, tokenizer) -> dict[str, alt.Chart]:
    """Watch it learn's charts at one step of load_snapshots(run_dir): "attention", "logit
    lens" (runs that kept it), "head scores" and "scores over training" (runs that scored
    heads). The app lays them out with its slider; learning() stacks them."""
    snapshot = kept["snapshots"][kept["steps"].index(step)]
    drawn = {"attention": charts.layers_chart(snapshot["attention"], kept["tokens"])}
    if "lens_ids" in snapshot:
        tops = [[[tokenizer.decode([i]) for i in row] for row in layer]
                for layer in snapshot["lens_ids"].tolist()]
        drawn["logit lens"] = _wide(charts.lens_grid_chart(kept["tokens"], tops,
                                                           snapshot["lens_probs"].float()),
                                    len(kept["tokens"]))
    scored = [(s, snap["head_scores"]) for s, snap in zip(kept["steps"], kept["snapshots"])
              if "head_scores" in snap]
    if step in dict(scored):
        drawn["head scores"] = circuit_charts.head_scores_chart(dict(scored)[step])
    if scored:
        drawn["scores over training"] = circuit_charts.score_curves_chart(
            [s for s, _ in scored], [float(h["induction"].max()) for _, h in scored],
            [float(h["in_context_learning"]) for _, h in scored], step)
    return drawn


# --- Helpers -----------------------------------------------------------------------------------

def _wide(chart: alt.Chart, columns: int) -> alt.Chart:
    """A grid of `columns` token columns: cells about 48 pixels wide, WIDTH at most."""
    return chart.properties(width=min(WIDTH, max(240, 48 * columns)))


def _check_layer(model, layer: int) -> None:
    if not isinstance(layer, int) or not 1 <= layer <= model.config.num_layers:
        raise ValueError(f"layer must be 1 to {model.config.num_layers} (counted from the "
                         f"input), not {layer!r}")


def _check_whole(name: str, value, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, not {value!r}")


def _one_token(tokenizer, text: str) -> int:
    ids = tokenizer.encode(text)
    if len(ids) != 1:
        raise ValueError(f"{text!r} is {len(ids)} tokens for this tokenizer: pass one token")
    return ids[0]


def _ids(model, tokenizer, prompt) -> list[int]:
    if isinstance(prompt, PromptInspection):
        return prompt.ids
    if isinstance(prompt, str):
        return encode_prompt(tokenizer, prompt, model.config.context_length)
    ids = torch.as_tensor(prompt).flatten().tolist()  # a tensor, list or tuple of token ids
    if not all(isinstance(i, int) and 0 <= i < model.config.vocab_size for i in ids):
        raise ValueError(f"token ids must be whole numbers from 0 to {model.config.vocab_size - 1}")
    return ids


use_offline_renderer()
