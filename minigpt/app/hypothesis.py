"""The app's "Test a hypothesis" tab: knock heads out and see what the model loses, patch a clean
prompt's activations into a corrupted one, split the predicted token's logit into the parts that
wrote it, and name what each head does. Built on minigpt.interventions and minigpt.head_scores."""

import contextlib
import warnings
from pathlib import Path

import pandas as pd
import streamlit as st
import torch

from minigpt import circuit_charts, show
from minigpt.corpus import load_corpus
from minigpt.data import prepare_data
from minigpt.errors import InputError, MiniGPTError
from minigpt.generation import encode_prompt
from minigpt.gpt2 import is_gpt2_dir
from minigpt.head_scores import HeadScores, head_kinds, head_scores, val_windows
from minigpt.inspection import load_snapshots
from minigpt.interventions import ablate, logit_attribution, patch, patching_tokens
from minigpt.resume import resume_config
from minigpt.tokenizer import CharTokenizer

# Clean / corrupted pairs of the same length: the first whose two prompts this tokenizer reads
# as known tokens of the same count is offered (the last one is the IOI sentence GPT-2 knows).
PAIRS = [("the cat sat on the mat . the cat", "the dog sat on the mat . the dog"),
         ("the cat sat. the ca", "the dog sat. the do"),
         ("When Mary and John went to the store, John gave a drink to",
          "When Mary and John went to the store, Mary gave a drink to")]
FALLBACK_TEXT = 20_000  # characters of the embedded corpus scored when the run's data is unread
TOP = 8  # next tokens shown before and after a knock-out
SCORE_LENGTH = 256  # tokens per scoring window: GPT-2's 1024 would keep gigabytes of weights


def remember(name: str, key, compute, spinner: str = ""):
    """compute() once per key for this visitor, kept in the session under name: a widget
    elsewhere on the page reruns the script, and this work need not be done again."""
    if st.session_state.get(name, (None,))[0] != key:
        with st.spinner(spinner) if spinner else contextlib.nullcontext():
            st.session_state[name] = (key, compute())
    return st.session_state[name][1]


@st.cache_resource(show_spinner="Reading the val text...")
def val_tokens(run_dir: str, _tokenizer, modified: float) -> tuple[torch.Tensor, str]:
    """The run's val split (prepare_data with the run's config), or for a GPT-2 directory or a
    run whose data cannot be read, the end of the embedded corpus: (tokens, where from)."""
    why = "a GPT-2 directory names no training text"
    try:
        if is_gpt2_dir(run_dir):
            raise FileNotFoundError
        cfg = resume_config(run_dir)
        data = prepare_data(cfg.data, cfg.model.context_length, _tokenizer)
        return data.val, f"the run's val split ({len(data.val):,} tokens)"
    except FileNotFoundError:
        pass
    except (MiniGPTError, OSError) as err:
        why = f"this run's data could not be read: {err}"
    text = load_corpus()[-FALLBACK_TEXT:]
    if isinstance(_tokenizer, CharTokenizer):
        unknown = set(_tokenizer.unknown_chars(text))
        text = "".join(c for c in text if c not in unknown)
    tokens = torch.tensor(_tokenizer.encode(text))
    return tokens, f"the end of minigpt's embedded corpus ({len(tokens):,} tokens; {why})"


def encode(tokenizer, text: str, context_length: int) -> list[int]:
    with warnings.catch_warnings():  # unknown words are said by the page
        warnings.simplefilter("ignore")
        return encode_prompt(tokenizer, text, context_length)


def hypothesis_view(model, tokenizer, ids: list[int], run_dir: Path, modified: float) -> None:
    st.caption("Looking shows what a head attends to; this tab tests what it does: take parts of "
               "the model away, or move them from one prompt into another, and watch the "
               "prediction. Layers are counted from 1, heads from 0.")
    val, source = val_tokens(str(run_dir), tokenizer, modified)
    knockout_view(model, tokenizer, ids, val, source)
    patching_view(model, tokenizer)
    attribution_view(model, tokenizer, ids)
    head_table_view(model, run_dir, val, source)


def knockout_view(model, tokenizer, ids: list[int], val: torch.Tensor, source: str) -> None:
    cfg = model.config
    st.markdown("**Knock heads out**: the next-token distribution after the prompt, and the "
                "loss on the prompt, with and without the heads you tick.")
    left, right = st.columns([3, 1])
    heads = left.multiselect(
        "heads to knock out", [(layer, head) for layer in range(1, cfg.num_layers + 1)
                               for head in range(cfg.num_heads)],
        format_func=lambda lh: f"layer {lh[0]}, head {lh[1]}", key="knockout",
        placeholder="tick one or more heads")
    method = right.radio("knock out by", ["zero", "mean"], key="knockout_method",
                         format_func=lambda m: {"zero": "zero",
                                                "mean": "mean over the val text"}[m])
    reference = val_windows(val, min(cfg.context_length, 64, len(val) - 1), 16)[:, :-1]
    result = ablate(model, ids, heads=heads, method=method, reference=reference)
    if len(ids) > 1:
        st.metric("loss on the prompt (nats per token)", f"{result.ablated_loss:.3f}",
                  delta=f"{result.loss_change:+.3f} from {result.loss:.3f}" if heads else None,
                  delta_color="inverse")
    else:
        st.caption("The loss on the prompt needs a prompt of two tokens or more.")
    st.altair_chart(show.knockout_chart(result, tokenizer, TOP), width="stretch")
    st.caption("What am I looking at: the likeliest next tokens as the model gives them (first "
               "bar) and with the ticked heads' outputs set to "
               + ("zero" if method == "zero" else f"their average over {source}")
               + f" (second bar). The distribution moved by {result.next_token_change:.3f} nats "
               "(KL divergence). A head the prediction needs changes it; one it does not leaves "
               "the bars alike.")


def default_pair(tokenizer, context_length: int) -> tuple[str, str]:
    """The first of PAIRS whose two prompts this tokenizer reads as known tokens of one count."""
    for clean, corrupted in PAIRS:
        try:
            known = all(not getattr(tokenizer, "unknown_words", lambda _: [])(text)
                        for text in (clean, corrupted))
            if known and len(encode(tokenizer, clean, context_length)) == len(
                    encode(tokenizer, corrupted, context_length)):
                return clean, corrupted
        except MiniGPTError:
            continue
    return swapped_pair(tokenizer, context_length)


SWAPS = ["dog", "cat", "fox", "sun", "red", "day", "man", "the", "a"]


def swapped_pair(tokenizer, context_length: int) -> tuple[str, str]:
    """No stock pair fits this tokenizer: the first stock prompt with one word swapped for another
    of the same token count (else the first pair, which the page then explains)."""
    for clean, _ in PAIRS:
        try:
            size = len(encode(tokenizer, clean, context_length))
            words = clean.split(" ")
            for i in range(len(words) - 1, -1, -1):
                for swap in SWAPS:
                    corrupted = " ".join([*words[:i], swap, *words[i + 1:]])
                    if corrupted != clean and len(encode(tokenizer, corrupted,
                                                         context_length)) == size:
                        return clean, corrupted
        except MiniGPTError:
            continue
    return PAIRS[0]


def single_token(tokenizer, text: str, what: str) -> int | None:
    ids = tokenizer.encode(text) if text else []
    if len(ids) != 1:
        st.error(f"The {what} must be one token; {text!r} is {len(ids)}.")
        return None
    return ids[0]


def patching_view(model, tokenizer) -> None:
    cfg = model.config
    st.markdown("**Activation patching**: run a clean and a corrupted prompt, then rerun the "
                "corrupted one with one activation copied from the clean run.")
    clean_text, corrupted_text = default_pair(tokenizer, cfg.context_length)
    left, right = st.columns(2)
    clean_text = left.text_input("clean prompt", clean_text, key="clean")
    corrupted_text = right.text_input("corrupted prompt (same number of tokens)", corrupted_text,
                                      key="corrupted")
    try:
        clean = encode(tokenizer, clean_text, cfg.context_length)
        corrupted = encode(tokenizer, corrupted_text, cfg.context_length)
    except MiniGPTError as err:
        st.error(f"That pair cannot be used: {err}")
        return
    if len(clean) != len(corrupted):
        st.error(f"The clean prompt is {len(clean)} tokens and the corrupted one {len(corrupted)}: "
                 "patching copies an activation to the same position of the other run, so both "
                 "need the same number of tokens. Change a word for a word.")
        return
    answer, wrong = patching_tokens(model, clean, corrupted)
    pair = f"{clean}|{corrupted}"  # the defaults follow the pair; a stale choice does not stay
    answer = single_token(tokenizer, left.text_input(
        "answer token (the clean run's prediction)", tokenizer.decode([answer]),
        key=f"answer:{pair}"), "answer token")
    wrong = single_token(tokenizer, right.text_input(
        "wrong token (the corrupted run's prediction)", tokenizer.decode([wrong]),
        key=f"wrong:{pair}"), "wrong token")
    if answer is None or wrong is None:
        return
    result = remember("patched", (id(model), tuple(clean), tuple(corrupted), answer, wrong),
                      lambda: patch(model, clean, corrupted, answer, wrong),  # dozens of passes
                      "Patching every layer, position and head...")
    patching_charts(result, tokenizer, clean, corrupted)


def patching_charts(result, tokenizer, clean: list[int], corrupted: list[int]) -> None:
    residual, heads, *ffn = show.patching_charts(result, tokenizer, clean, corrupted)
    st.caption(f"What am I looking at: the logit difference answer - wrong after the last token "
               f"is {result.clean_diff:.2f} in the clean run and {result.corrupted_diff:.2f} in "
               "the corrupted one. Each cell is how much of that gap one patched activation "
               "recovers: 0 = nothing (the corrupted run's), 1 = all of it (the clean run's). "
               "Positions where the prompts differ show both tokens, clean/corrupted.")
    st.altair_chart(residual, width="stretch")
    left, right = st.columns(2)
    with left:
        st.caption("Each head's output, at every position at once.")
        st.altair_chart(heads, width="stretch")
    if ffn:
        with right:
            st.caption("Each feed-forward block's output, one position at a time.")
            st.altair_chart(ffn[0], width="stretch")


POST_NORM_NOTE = ("Direct logit attribution does not apply to this model: it is post-norm, so "
                  "a LayerNorm rescales the stream after every sublayer and no head's output "
                  "reaches the prediction unchanged; the logit cannot be split into their parts. "
                  "Knocking heads out and patching (above) work on every model: use them instead.")


def attribution_view(model, tokenizer, ids: list[int]) -> None:
    st.markdown("**Direct logit attribution**: which parts of the model wrote the predicted "
                "token's logit.")
    with torch.no_grad():
        top = model(torch.tensor([ids], device=model.token_emb.weight.device))[0, -1].topk(5)
    top = top.indices.tolist()
    token = st.selectbox("token (the model's likeliest first)", top, key=f"dla_token:{ids}",
                         format_func=lambda i: repr(tokenizer.decode([i])))
    try:
        parts = logit_attribution(model, ids, token)
    except InputError as err:
        st.info(POST_NORM_NOTE if model.config.norm_placement == "post" else
                f"Direct logit attribution does not apply to this model: {err}.")
        return
    st.altair_chart(circuit_charts.attribution_chart(parts), width="stretch")
    cap = model.config.logit_softcap
    st.caption("What am I looking at: the logit of the token after the prompt, split into what "
               "the embeddings, each head (L1H0 = layer 1, head 0) and each feed-forward block "
               "added to the residual stream, each read through the final LayerNorm with its "
               "scale frozen; the bars sum to the logit. The largest parts shown."
               + (f" This model soft-caps its logits ({cap:g} * tanh(logit / {cap:g})): the bars "
                  "sum to the logit before the cap." if cap else ""))


def scores_of(model, run_dir: Path, val: torch.Tensor) -> tuple[dict, str]:
    """The run's last evaluation's head scores, or scores computed on val now."""
    kept = load_snapshots(run_dir)
    if kept and kept["snapshots"] and "head_scores" in kept["snapshots"][-1]:
        return kept["snapshots"][-1]["head_scores"], f"at step {kept['steps'][-1]}, the run's " \
            "last evaluation"
    scores = remember("head_scores", (id(model), str(run_dir)),
                      lambda: head_scores(model, val, length=SCORE_LENGTH).as_dict(),
                      "Scoring every head...")
    return scores, "now, on this model"


def head_table_view(model, run_dir: Path, val: torch.Tensor, source: str) -> None:
    scores, when = scores_of(model, run_dir, val)
    st.markdown("**What each head does**: its scores, and the kind it stands out for.")
    kinds = head_kinds(HeadScores(**scores))
    layers, heads = scores["induction"].shape
    table = pd.DataFrame([{"layer": layer + 1, "head": head,
                           **{kind: round(float(scores[name][layer, head]), 3)
                              for name, kind in circuit_charts.SCORE_NAMES.items()},
                           "kind": kinds.get((layer + 1, head), "-")}
                          for layer in range(layers) for head in range(heads)])
    st.dataframe(table, hide_index=True)
    st.caption(f"What am I looking at: scored {when} (text: {source}). Each score is a mean "
               "attention weight in [0, 1]: previous-token = to the token just before, "
               "first-token = to the first token (an 'attention sink'), duplicate-token and "
               "induction = on a random sequence repeated once, to the earlier copy of the token "
               "and to the token after it (the head that continues a pattern seen once). A head "
               "above 0.3 is named for its highest score; '-' stands out for none.")
