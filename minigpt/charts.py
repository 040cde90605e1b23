"""Charts of what a model does with a prompt, drawn with Altair: attention heatmaps and the model
view, logit-lens and sublayer grids, position tables, LayerNorm sizes, temperature and token
probabilities.

    seen = inspect_prompt(model, tokenizer, "the cat sat on")   # minigpt.inspection
    attention_chart(seen.attentions[0][1], seen.tokens)         # layer 1, head 1
    model_view_chart(seen.attentions, seen.tokens)              # every layer x head
    logit_lens_chart(seen).save("lens.html")

Each function takes tensors or an inspection and returns an alt.Chart: a notebook shows it as it
is, the demo app passes it to st.altair_chart. Nothing here knows about Streamlit, and the core
library never imports this module (altair and pandas come with the `app` extra). Every chart uses
minigpt.heatmap.PALETTE, the one colour scale of minigpt's pictures.
"""

import altair as alt
import pandas as pd
import torch

from minigpt.heatmap import MASK_GREY, PALETTE, colours, is_masked
from minigpt.sampling import top_k_filter, top_p_filter

MODEL_VIEW_CELLS = 48  # the most rows a thumbnail shows: more cells than pixels add nothing
LABELS_SHOWN = 40  # the most token labels along an axis; beyond, every n-th is written


def token_labels(tokens: list[str], start: int = 0, width: int | None = None) -> list[str]:
    """"3:'cat'" for each token: its position (counted from start), then its text with spaces and
    newlines visible, cut to width characters."""
    return [f"{start + i}:{t!r}"[:width] for i, t in enumerate(tokens)]


MASKED = "masked: a later token"  # what a cell above the diagonal of a causal head says


def _weight_colour(legend: bool = True):
    """Attention weights in the palette, every head sharing the scale [0, 1]; cells the causal
    mask hides are grey, not the colour of a zero weight."""
    return alt.condition(f"datum.shown == '{MASKED}'", alt.value(MASK_GREY), alt.Color(
        "weight:Q", scale=alt.Scale(domain=[0, 1], range=list(PALETTE)),
        legend=alt.Legend(title="weight") if legend else None))


def _shown(weight: float, query: int, key: int, causal: bool) -> str:
    return MASKED if causal and key > query else f"{weight:.3f}"


def weight_legend_chart() -> alt.Chart:
    """The attention colour scale once, for a group of heatmaps: weights 0 to 1, and the grey
    of the cells the causal mask hides."""
    steps = [i / 10 for i in range(11)]
    frame = pd.DataFrame([{"x": f"{w:.1f}", "weight": w, "shown": f"{w:.1f}"} for w in steps]
                         + [{"x": "masked", "weight": 0.0, "shown": MASKED}])
    return alt.Chart(frame).mark_rect().encode(
        x=alt.X("x:N", sort=None, title="attention weight (grey: hidden by the causal mask)",
                axis=alt.Axis(labelAngle=0, orient="top")),
        color=_weight_colour(legend=False), tooltip=[alt.Tooltip("shown", title="weight")],
    ).properties(width=440, height=18)


def heatmap_cell(count: int) -> int:
    """Pixels of a heatmap cell for count tokens: the whole head about 480 pixels at most."""
    return max(4, min(22, 480 // count))


def attention_chart(weights: torch.Tensor, tokens: list[str], legend: bool = True,
                    labels: list[str] | None = None) -> alt.Chart:
    """Heatmap of one head's (T, T) weights with token labels (or the labels given, as for
    pooled groups of tokens); hovering shows the weight, or for a causal head's cells above the
    diagonal that the mask hides them. The cells shrink as the prompt grows (heatmap_cell) and
    every n-th token is labelled."""
    labels = labels or token_labels(tokens, width=14)
    causal, T = is_masked(weights), len(labels)
    rows = [{"query": labels[q], "key": labels[k], "weight": float(weights[q, k]),
             "shown": _shown(float(weights[q, k]), q, k, causal)}
            for q in range(T) for k in range(T)]
    cell = heatmap_cell(T)
    shown = labels[::-(-14 // cell)]  # a label is about 14 pixels high
    axis = alt.Axis(labelOverlap=False, labelLimit=120, values=shown)
    return alt.Chart(pd.DataFrame(rows)).mark_rect().encode(
        x=alt.X("key:N", sort=labels, title="attends to (key)",
                axis=alt.Axis(labelOverlap=False, labelLimit=120, labelAngle=-90, values=shown)),
        y=alt.Y("query:N", sort=labels, title="token (query)", axis=axis),
        color=_weight_colour(legend),
        tooltip=["query", "key", alt.Tooltip("shown", title="weight")],
    ).properties(height=max(200, cell * T))


def pooled(weights: torch.Tensor, labels: list[str], most: int) -> tuple[torch.Tensor, list[str]]:
    """(..., T, T) attention weights and their T labels, with consecutive tokens pooled into at
    most `most` groups when T is larger: a group's weight is what its queries give the group's
    keys, on average over the queries, so every row still sums to 1. Groups are labelled by the
    positions they span ("8-15")."""
    T = weights.size(-1)
    size = -(-T // most)  # tokens per group
    if size == 1:
        return weights, labels
    group = torch.arange(T) // size
    count = int(group[-1]) + 1
    keys = weights.new_zeros(*weights.shape[:-1], count).index_add_(-1, group, weights)
    both = weights.new_zeros(*weights.shape[:-2], count, count).index_add_(-2, group, keys)
    queries = torch.bincount(group).to(weights.dtype)  # the last group may be shorter
    names = [f"{i * size}-{min((i + 1) * size, T) - 1}" for i in range(count)]
    return both / queries[:, None], names


def _layers_frame(weights: torch.Tensor, labels: list[str], causal: bool) -> pd.DataFrame:
    """(L, H, T, T) weights as one row per layer, head, query and key; layers counted from 1."""
    L, H, T, _ = weights.shape
    index = torch.cartesian_prod(*(torch.arange(n) for n in (L, H, T, T)))  # (L*H*T*T, 4)
    flat = weights.flatten().tolist()
    return pd.DataFrame({"layer": (index[:, 0] + 1).tolist(), "head": index[:, 1].tolist(),
                         "query": [labels[q] for q in index[:, 2].tolist()],
                         "key": [labels[k] for k in index[:, 3].tolist()], "weight": flat,
                         "shown": [_shown(w, q, k, causal) for w, q, k in
                                   zip(flat, index[:, 2].tolist(), index[:, 3].tolist())]})


def _layers_chart(weights: torch.Tensor, labels: list[str], cell: int, axes: bool,
                  causal: bool) -> alt.Chart:
    """Small multiples of cell-pixel squares (whole pixels: fractions draw seams between cells), a
    row of heads per layer (layer 1 on top), sharing one colour legend. Where cells are narrower
    than the text, every n-th token is labelled."""
    shown = labels[::-(-12 // cell)]  # the labels' font is about 12 pixels high

    def axis(title: str, angle: int):
        return alt.Axis(title=title, values=shown, labelOverlap=False, labelLimit=120,
                        labelAngle=angle) if axes else None

    header = {"labelFontSize": 12, "title": None}
    return alt.Chart(_layers_frame(weights, labels, causal)).mark_rect().encode(
        x=alt.X("key:N", sort=labels, axis=axis("attends to (key)", -90)),
        y=alt.Y("query:N", sort=labels, axis=axis("token (query)", 0)),
        color=_weight_colour(),
        tooltip=["layer:O", "head:O", "query", "key", alt.Tooltip("shown", title="weight")],
    ).properties(width=cell * len(labels), height=cell * len(labels)).facet(
        row=alt.Row("layer:O", header=alt.Header(labelExpr="'layer ' + datum.value", **header)),
        column=alt.Column("head:O", header=alt.Header(labelExpr="'head ' + datum.value",
                                                      **header)),
        spacing=8)


def _stacked(attentions) -> torch.Tensor:
    """A list of per-layer (H, T, T) weights (or one (L, H, T, T) tensor) as (L, H, T, T)."""
    return torch.stack([w.detach().float().cpu() for w in attentions])


def model_view_chart(attentions, tokens: list[str], width: int = 900) -> alt.Chart:
    """Every layer x head as a thumbnail in about `width` pixels (bertviz's model view), in the
    shared scale [0, 1]; hovering shows layer, head, query, key and weight. Prompts longer than
    MODEL_VIEW_CELLS tokens are pooled into groups of consecutive tokens."""
    stacked = _stacked(attentions)
    weights, labels = pooled(stacked, token_labels(tokens, width=14), MODEL_VIEW_CELLS)
    side = max(60, min(140, width // weights.size(1) - 12))  # pixels of a thumbnail
    return _layers_chart(weights, labels, max(1, side // len(labels)), axes=False,
                         causal=is_masked(stacked))


def layers_chart(attentions, tokens: list[str]) -> alt.Chart:
    """Every layer x head with the tokens along both axes (as heatmap.layers_image draws them for
    TensorBoard): the probe prompt's attention in Watch it learn."""
    cell = max(6, min(22, 240 // len(tokens)))
    stacked = _stacked(attentions)
    return _layers_chart(stacked, token_labels(tokens, width=14), cell, axes=True,
                         causal=is_masked(stacked))


def grid_chart(frame: pd.DataFrame, x: str, y: str, value: str, domain: list[float],
               x_title: str, y_title: str, text: str | None = None, tooltip=(),
               scale: str = "linear", order_x: list[str] | None = None) -> alt.Chart:
    """A coloured grid in the shared palette, rows and columns in the frame's order (or columns
    in order_x), with an optional word written in each cell."""
    order_x, order_y = order_x or list(dict.fromkeys(frame[x])), list(dict.fromkeys(frame[y]))
    tooltip = list(tooltip) or [x, y, alt.Tooltip(f"{value}:Q", format=".3f")]
    shown = order_x[::-(-len(order_x) // LABELS_SHOWN)]  # more labels than fit pile up
    base = alt.Chart(frame).encode(
        x=alt.X(f"{x}:N", sort=order_x, title=x_title,
                axis=alt.Axis(labelAngle=-90, labelOverlap=False, values=shown)),
        y=alt.Y(f"{y}:N", sort=order_y, title=y_title, axis=alt.Axis(labelLimit=320)))
    chart = base.mark_rect().encode(
        color=alt.Color(f"{value}:Q", scale=alt.Scale(type=scale, domain=domain,
                                                      range=list(PALETTE)),
                        title=value),
        tooltip=tooltip)
    if text:  # the words carry the cells' tooltip, so a cell says the same wherever one hovers
        chart += base.mark_text(fontSize=11).encode(
            text=f"{text}:N", tooltip=tooltip,
            color=alt.condition(f"datum.{value} > {(domain[0] + domain[1]) / 2}",
                                alt.value("black"), alt.value("white")))
    return chart.properties(height=28 * len(order_y) + 120)  # the rows, and room for the axes


LENS_ROW_0 = "layer 0 (embeddings: no prediction yet)"
LENS_TEXT_WIDTH = 600  # pixels of the lens's cells, drawn as wide as the app's page (1400-px window)


def lens_row(layer: int) -> str:
    """A logit-lens row's name: at the embeddings the "prediction" reads back the token itself."""
    return LENS_ROW_0 if layer == 0 else f"layer {layer}"


def lens_grid_chart(tokens: list[str], top_tokens: list[list[list[str]]],
                    probs: torch.Tensor) -> alt.Chart:
    """The logit lens: top_tokens[layer][position] the likeliest next tokens read from that
    layer's output (layer 0 the embeddings), probs (L + 1, T, k) theirs; colour is the top
    token's probability, the word is cut to fit its cell and hovering shows the top k."""
    labels = token_labels(tokens)
    fit = min(8, LENS_TEXT_WIDTH // (len(labels) * 7))  # characters of 11-pixel text a cell holds
    lens = pd.DataFrame([
        {"position": labels[i], "layer": lens_row(layer),
         "top token": repr(top_tokens[layer][i][0])[1:-1][:fit] if fit >= 2 else "",
         "probability": float(probs[layer, i, 0]),
         "top 5": ", ".join(f"{t!r} {p:.2f}" for t, p in zip(top_tokens[layer][i],
                                                             probs[layer, i].tolist()))}
        for layer in range(len(top_tokens)) for i in range(len(labels))])
    return grid_chart(lens, "position", "layer", "probability", [0, 1],
                      "prompt token (position)", "layer", text="top token",
                      tooltip=["layer", "position", "top 5"])


def logit_lens_chart(seen) -> alt.Chart:
    """The logit lens of an inspection (minigpt.inspection.inspect_prompt)."""
    return lens_grid_chart(seen.tokens, [layer.tokens for layer in seen.logit_lens],
                           torch.stack([layer.probs for layer in seen.logit_lens]))


def neuron_chart(contexts, tokenizer) -> alt.Chart:
    """Where one feed-forward neuron fires most (minigpt.inspection.top_activations): a row per
    place, strongest first, its tokens coloured by the neuron's activation, aligned on the peak."""
    offsets = sorted({i - c.peak for c in contexts for i in range(len(c.ids))})
    rows = [{"place": f"#{rank}, peak {c.activations[c.peak]:.2f}",
             "token position": "peak" if i == c.peak else f"{i - c.peak:+d}",
             "token": repr(tokenizer.decode([token]))[1:-1][:8], "activation": float(act),
             "text": tokenizer.decode(c.ids)}
            for rank, c in enumerate(contexts, 1)
            for i, (token, act) in enumerate(zip(c.ids, c.activations.tolist()))]
    frame = pd.DataFrame(rows)
    return grid_chart(frame, "token position", "place", "activation",
                      [min(0.0, float(frame["activation"].min())),
                       float(frame["activation"].max())],
                      "token, relative to where the neuron fires most", "place in the val text",
                      text="token", tooltip=["place", "token", "activation", "text"],
                      order_x=["peak" if o == 0 else f"{o:+d}" for o in offsets])


def layer_change_chart(seen) -> alt.Chart:
    """How much each block changed every token, |output - input| / |input| (the deck's "compare
    layer outputs"), a row per block, on a logarithmic colour scale."""
    labels = token_labels(seen.tokens)
    frame = pd.DataFrame([{"position": labels[i], "block": f"block {layer + 1}",
                           "relative change": float(seen.layer_change[layer, i])}
                          for layer in range(seen.layer_change.size(0))
                          for i in range(len(labels))])
    return grid_chart(frame, "position", "block", "relative change",
                      [0, float(frame["relative change"].max())],
                      "prompt token (position)", "block (its output vs its input)", scale="symlog")


def sublayer_chart(seen) -> alt.Chart:
    """How much attention and the feed-forward block each changed every token, a row per
    sublayer in the order the residual stream meets them, on a logarithmic colour scale."""
    labels = token_labels(seen.tokens)
    parts = [("attention", seen.attention_change), ("FFN", seen.ffn_change)]
    rows = [{"position": labels[i], "sublayer": f"layer {layer + 1} {name}",
             "relative change": float(change[layer, i])}
            for layer in range(seen.attention_change.size(0))
            for name, change in parts if change is not None for i in range(len(labels))]
    frame = pd.DataFrame(rows)
    return grid_chart(frame, "position", "sublayer", "relative change",
                      [0, float(frame["relative change"].max())],
                      "prompt token (position)", "sublayer", scale="symlog")


def norm_chart(seen) -> alt.Chart:
    """Each token vector's size (RMS) entering and leaving every LayerNorm, averaged over the
    prompt's tokens; hovering shows the smallest and largest. The model must have LayerNorms."""
    rows = [{"norm": n.name, "where": where, "size": float(values.mean()),
             "smallest": float(values.min()), "largest": float(values.max())}
            for n in seen.norm_scales for where, values in (("before", n.before), ("after", n.after))]
    order = [n.name for n in seen.norm_scales]
    return alt.Chart(pd.DataFrame(rows)).mark_bar().encode(
        y=alt.Y("norm:N", sort=order, title="LayerNorm (in stream order)"),
        x=alt.X("size:Q", title="token vector size (RMS), mean over tokens"),
        yOffset=alt.YOffset("where:N", sort=["before", "after"]),
        color=alt.Color("where:N", sort=["before", "after"],
                        scale=alt.Scale(range=[PALETTE[1], PALETTE[4]]), title="stream"),
        tooltip=["norm", "where", alt.Tooltip("size:Q", format=".3f"),
                 alt.Tooltip("smallest:Q", format=".3f"), alt.Tooltip("largest:Q", format=".3f")]
    ).properties(height=44 * len(order))


def matrix_chart(matrix: torch.Tensor, x: str, y: str, value: str,
                 domain: list[float] | None = None) -> alt.Chart:
    """A (rows, columns) matrix (a position table, a similarity) as a heatmap in the shared
    palette, symmetric about 0 unless a domain is given, with a tick every few rows and columns
    and the value on hover."""
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


def sampling_distribution(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                          top_p: float | None = None) -> torch.Tensor:
    """(V,) the distribution minigpt.sampling.sample_next draws from at these settings; T = 0
    (greedy) puts all of it on the top token."""
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(), logits.numel()).float()
    scaled = (logits - logits.max()) / temperature
    return torch.softmax(top_p_filter(top_k_filter(scaled[None], top_k), top_p)[0], dim=-1)


def _temperature_name(t: float, chosen: float, mark: str) -> str:
    name = "0 (greedy)" if t == 0 else f"{t:g}"
    return f"{name} ({mark})" if t == chosen else name


def temperature_chart(next_token_probs: torch.Tensor, tokenizer, temperature: float,
                      top_k: int | None = None, top_p: float | None = None,
                      mark: str = "sidebar") -> alt.Chart:
    """The 10 likeliest next tokens (by the model's own distribution) under the sampling
    distribution at the chosen temperature, marked "(mark)", beside 0.5, 1 and 2, each after the
    same top-k and top-p: low T sharpens the distribution, high T flattens it."""
    logits = next_token_probs.clamp_min(1e-30).log()
    top = next_token_probs.topk(min(10, next_token_probs.numel())).indices.tolist()
    temperatures = sorted({0.5, 1.0, 2.0, temperature})
    names = [_temperature_name(t, temperature, mark) for t in temperatures]
    rows = []
    for t, name in zip(temperatures, names):
        probs = sampling_distribution(logits, t, top_k, top_p)
        rows += [{"token": repr(tokenizer.decode([i])), "T": name,
                  "probability": float(probs[i])} for i in top]
    order = [repr(tokenizer.decode([i])) for i in top]  # most likely first
    return alt.Chart(pd.DataFrame(rows)).mark_bar().encode(
        y=alt.Y("token:N", sort=order, title="next token (most likely first)"),
        x=alt.X("probability:Q", title="probability of being drawn"),
        color=alt.Color("T:N", sort=names, scale=alt.Scale(range=colours(len(names))),
                        title="temperature"),
        stroke=alt.condition(f"datum.T == '{_temperature_name(temperature, temperature, mark)}'",
                             alt.value("#c0392b"), alt.value(None)),
        yOffset=alt.YOffset("T:N", sort=names),
        tooltip=["token", "T", alt.Tooltip("probability:Q", format=".3f")]
    ).properties(height=40 * len(top))


def probability_chart(tokens: list[str], probs: list[float], start: int) -> alt.Chart:
    """A bar per generated token (labelled with its position in the whole text, the first at
    start): the probability the model gave it when it was chosen."""
    positions = token_labels(tokens, start)
    frame = pd.DataFrame({"position": positions, "token": tokens, "probability": probs})
    return alt.Chart(frame).mark_bar(color=PALETTE[2]).encode(
        x=alt.X("position:N", sort=positions, title="generated token (position in the text)",
                axis=alt.Axis(labelAngle=-60)),
        y=alt.Y("probability:Q", scale=alt.Scale(domain=[0, 1]),
                title="probability when chosen (T = 1)"),
        tooltip=["position", "token", alt.Tooltip("probability:Q", format=".3f")])


def similarity_bars(tokens: list[str], similarity: list[float]) -> alt.Chart:
    """A bar per token (most similar first): its cosine similarity with a chosen token."""
    labels = [repr(t) for t in tokens]
    frame = pd.DataFrame({"token": labels, "similarity": similarity})
    return alt.Chart(frame).mark_bar(color=PALETTE[3]).encode(
        y=alt.Y("token:N", sort=labels, title="nearest tokens (most similar first)",
                axis=alt.Axis(labelOverlap=False)),
        x=alt.X("similarity:Q", scale=alt.Scale(domain=[min(0.0, min(similarity)), 1]),
                title="cosine similarity of the embeddings"),
        tooltip=["token", alt.Tooltip("similarity:Q", format=".3f")],
    ).properties(height=22 * len(labels) + 40)
