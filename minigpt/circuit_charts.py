"""Charts of testing a hypothesis about a model, drawn with Altair like minigpt.charts (and, like
it, free of Streamlit): the next-token distribution with parts knocked out, activation patching's
recovery grids, direct logit attribution, and head scores now and over training.

    result = ablate(model, ids, heads=[(1, 0)])                      # minigpt.interventions
    next_token_bars(tokens, result.next_token_probs[top], result.ablated_next_token_probs[top])
    recovery_chart(patch(model, clean, corrupted, 7, 9).heads, heads, layers, "head", "layer")
    head_scores_chart(head_scores(model, val).as_dict())             # minigpt.head_scores
"""

import altair as alt
import pandas as pd
import torch

from minigpt.charts import grid_chart
from minigpt.heatmap import PALETTE


def next_token_bars(tokens: list[str], before: list[float], after: list[float],
                    changed: str = "heads knocked out") -> alt.Chart:
    """The next-token distribution as the model gives it and with the change made: two bars per
    token (the likeliest of either run, in the order given)."""
    labels = [repr(t) for t in tokens]
    rows = [{"token": label, "run": run, "probability": float(p)}
            for run, probs in (("as trained", before), (changed, after))
            for label, p in zip(labels, probs)]
    return alt.Chart(pd.DataFrame(rows)).mark_bar().encode(
        y=alt.Y("token:N", sort=labels, title="next token"),
        x=alt.X("probability:Q", title="probability after the prompt"),
        yOffset=alt.YOffset("run:N", sort=["as trained", changed]),
        color=alt.Color("run:N", sort=["as trained", changed],
                        scale=alt.Scale(range=[PALETTE[2], PALETTE[4]]), title=None,
                        legend=alt.Legend(orient="top")),
        tooltip=["token", "run", alt.Tooltip("probability:Q", format=".3f")],
    ).properties(height=34 * len(labels) + 40)


def recovery_chart(recovery: torch.Tensor, columns: list[str], rows: list[str], x_title: str,
                   y_title: str) -> alt.Chart:
    """Activation patching's normalised recovery as a grid (0: the corrupted run's logit
    difference, 1: the clean run's), the value written in each cell."""
    frame = pd.DataFrame([{"column": columns[c], "row": rows[r],
                           "recovery": float(recovery[r, c]),
                           "shown": f"{float(recovery[r, c]):.2f}"}
                          for r in range(recovery.size(0)) for c in range(recovery.size(1))])
    return grid_chart(frame, "column", "row", "recovery", [0, 1], x_title, y_title, text="shown",
                      tooltip=[alt.Tooltip("row", title=y_title),
                               alt.Tooltip("column", title=x_title),
                               alt.Tooltip("recovery:Q", format=".3f")])


def attribution_chart(parts: dict[str, float], most: int = 24) -> alt.Chart:
    """Direct logit attribution: each part's contribution to the chosen token's logit, the
    `most` largest by size, largest first; bars left of 0 argue against the token."""
    shown = sorted(parts.items(), key=lambda kv: -abs(kv[1]))[:most]
    frame = pd.DataFrame([{"part": name, "contribution": value,
                           "sign": "for the token" if value >= 0 else "against it"}
                          for name, value in shown])
    return alt.Chart(frame).mark_bar().encode(
        y=alt.Y("part:N", sort=[name for name, _ in shown], title="part of the model",
                axis=alt.Axis(labelOverlap=False)),
        x=alt.X("contribution:Q", title="contribution to the token's logit"),
        color=alt.Color("sign:N", sort=["for the token", "against it"],
                        scale=alt.Scale(range=[PALETTE[3], PALETTE[1]]), title=None,
                        legend=alt.Legend(orient="top")),
        tooltip=["part", alt.Tooltip("contribution:Q", format=".3f")],
    ).properties(height=22 * len(shown) + 40)


SCORE_NAMES = {"previous_token": "previous-token", "first_token": "first-token",
               "duplicate_token": "duplicate-token", "induction": "induction"}


def head_scores_chart(scores: dict) -> alt.Chart:
    """Every head's four scores (a head_scores dict: name -> (L, H)) as a layer x head grid per
    kind, in the shared scale [0, 1], the score written in each cell."""
    rows = [{"kind": kind, "layer": f"layer {layer + 1}", "head": head,
             "score": float(scores[name][layer, head]),
             "shown": f"{float(scores[name][layer, head]):.2f}"}
            for name, kind in SCORE_NAMES.items()
            for layer in range(scores[name].size(0)) for head in range(scores[name].size(1))]
    heads = scores["induction"].size(1)
    base = alt.Chart().encode(x=alt.X("head:O", title="head", axis=alt.Axis(labelAngle=0)),
                              y=alt.Y("layer:N", sort=None, title=None))
    cells = base.mark_rect().encode(
        color=alt.Color("score:Q", scale=alt.Scale(domain=[0, 1], range=list(PALETTE)),
                        title="score"),
        tooltip=["kind", "layer", "head", alt.Tooltip("score:Q", format=".3f")])
    text = base.mark_text(fontSize=10).encode(
        text="shown:N", color=alt.condition("datum.score > 0.5", alt.value("black"),
                                            alt.value("white")))
    return alt.layer(cells, text, data=pd.DataFrame(rows)).properties(
        width=min(200, 44 * heads), height=24 * scores["induction"].size(0)
    ).facet(column=alt.Column("kind:N", sort=list(SCORE_NAMES.values()), title=None))


def score_curves_chart(steps: list[int], induction_max: list[float], icl: list[float],
                       step: int | None = None) -> alt.Chart:
    """The top induction score and the in-context-learning score at every evaluation, one
    panel each on the same step axis; a rule marks the step shown beside them."""
    names = ["top induction score (0 to 1)", "in-context learning (loss late - early, nats)"]
    frame = pd.DataFrame([{"step": s, "score": name, "value": v}
                          for name, values in zip(names, (induction_max, icl))
                          for s, v in zip(steps, values)])
    line = alt.Chart().mark_line(point=True, color=PALETTE[2]).encode(
        x=alt.X("step:Q", title="training step"), y=alt.Y("value:Q", title=None),
        tooltip=["step", "score", alt.Tooltip("value:Q", format=".3f")])
    layers = [line]
    if step is not None:
        layers.append(alt.Chart().mark_rule(color=PALETTE[5], strokeWidth=2).encode(
            x="step:Q").transform_filter(f"datum.step == {int(step)}"))
    return alt.layer(*layers, data=frame).properties(width=520, height=130).facet(
        row=alt.Row("score:N", sort=names, title=None, header=alt.Header(labelAngle=0, labelAlign="left",
                                                              labelOrient="top")),
    ).resolve_scale(y="independent")
