"""Decoding: the KV cache is exact, generation continues past the context, text controls work."""

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import VARIANTS, randomise_short_convs, run_config, tiny_config
from torch.testing import assert_close

from minigpt import GPT, CharTokenizer, MiniTransformer
from minigpt.generation import KVCache, encode_prompt, generate, generate_text, stream
from minigpt.inspection import inspect_prompt
from minigpt.tokenizer import UnknownCharactersError, WordTokenizer
from minigpt.training import train

ROOT = Path(__file__).resolve().parent.parent


def greedy_reference(model: GPT, idx: torch.Tensor, steps: int, window: int):
    """Full recomputation on the last `window` tokens at every step."""
    logits_seen = []
    for _ in range(steps):
        logits = model(idx[:, -window:])[:, -1]
        logits_seen.append(logits)
        idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
    return idx, logits_seen


SPEEDRUN_OPTIONS = dict(qk_norm=True, logit_softcap=3.0, activation="relu2", tie_weights=False)


@pytest.mark.parametrize("pos_encoding,norm_placement,options", [
    *((*variant, {}) for variant in VARIANTS), ("rope", "pre", SPEEDRUN_OPTIONS),
    ("rope", "pre", {"short_conv": 4}), ("learned", "post", {"short_conv": 3})])
def test_cached_decoding_equals_full_recompute(pos_encoding, norm_placement, options):
    model = randomise_short_convs(GPT(tiny_config(
        pos_encoding=pos_encoding, norm_placement=norm_placement, context_length=32,
        **options))).eval()
    prompt = torch.randint(0, 23, (2, 5))
    expected, expected_logits = greedy_reference(model, prompt, 27, 32)  # fills the context
    cache = KVCache.for_model(model, 2)
    logits = model(prompt, cache)[:, -1]
    idx = prompt
    for step in range(27):
        assert_close(logits, expected_logits[step], rtol=1e-5, atol=1e-5)
        token = logits.argmax(-1, keepdim=True)
        idx = torch.cat([idx, token], dim=1)
        if step < 26:
            logits = model(token, cache)[:, -1]
    assert torch.equal(idx, expected)
    assert torch.equal(generate(model, prompt, 27, temperature=0), expected)


WINDOW = 8


def forced_logits(model: GPT, prompt: torch.Tensor, tokens: torch.Tensor, **options) -> list:
    """The logits stream computes before each of `tokens`, fed to it in place of samples."""
    seen, fed = [], iter(tokens.T)

    def choose(logits):
        seen.append(logits)
        return next(fed)

    for _ in stream(model, prompt, tokens.size(1), choose=choose, **options):
        pass
    return seen


def window_logits(model: GPT, sequence: torch.Tensor, lengths: list[int]) -> list:
    """The model's next-token logits on the last lengths[i] tokens of the first T0 + i."""
    start = sequence.size(1) - len(lengths)
    return [model(sequence[:, :start + i][:, -length:])[:, -1] for i, length in enumerate(lengths)]


def decoding_case(pos_encoding: str, num_layers: int, short_conv: int = 0):
    model = randomise_short_convs(GPT(tiny_config(
        pos_encoding=pos_encoding, num_layers=num_layers, context_length=WINDOW,
        short_conv=short_conv))).eval()
    prompt = torch.randint(0, 23, (2, 3))
    tokens = torch.randint(0, 23, (2, 3 * WINDOW))  # three times the context
    return model, prompt, tokens, torch.cat([prompt, tokens], dim=1)


@pytest.mark.parametrize("num_layers,short_conv", [(1, 0), (2, 0), (3, 0), (4, 0), (2, 3)])
@pytest.mark.parametrize("pos_encoding", ["sinusoidal", "learned", "rope"])
def test_exact_decoding_is_the_model_on_the_last_window_at_every_step(pos_encoding, num_layers,
                                                                      short_conv):
    """The default, with or without the cache: logits equal recomputing the last context_length
    tokens, to 1e-5, through three times the context."""
    model, prompt, tokens, sequence = decoding_case(pos_encoding, num_layers, short_conv)
    lengths = [min(3 + i, WINDOW) for i in range(tokens.size(1))]
    expected = window_logits(model, sequence, lengths)
    for use_cache in (True, False):
        got = forced_logits(model, prompt, tokens, use_cache=use_cache)
        for step, (a, b) in enumerate(zip(got, expected)):
            assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"step {step}, cache {use_cache}")


@pytest.mark.parametrize("num_layers,short_conv", [(1, 0), (2, 0), (3, 0), (4, 0), (2, 3)])
@pytest.mark.parametrize("pos_encoding", ["sinusoidal", "learned"])
def test_fast_decoding_with_absolute_positions_halves_the_window_when_full(pos_encoding,
                                                                          num_layers, short_conv):
    """past_context="fast": when the cache is full it keeps the last context_length // 2 + 1
    tokens, then grows again; the logits are the model's on exactly that window (the re-prefill
    starts the short convolutions' history afresh too)."""
    model, prompt, tokens, sequence = decoding_case(pos_encoding, num_layers, short_conv)
    lengths, length = [], 3
    for _ in range(tokens.size(1)):
        lengths.append(length)
        length = WINDOW // 2 + 1 if length == WINDOW else length + 1
    expected = window_logits(model, sequence, lengths)
    got = forced_logits(model, prompt, tokens, past_context="fast")
    for step, (a, b) in enumerate(zip(got, expected)):
        assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"step {step}")


@pytest.mark.parametrize("num_layers,short_conv", [(1, 0), (2, 0), (3, 0), (4, 0), (1, 3)])
def test_fast_decoding_with_rope_rolls_the_cache(num_layers, short_conv):
    """past_context="fast" with rope: exact within the context and, with one layer, past it;
    deeper models differ past the context, as documented (their cached keys remember more), and
    so does one layer with short convolutions (their last inputs include dropped tokens)."""
    model, prompt, tokens, sequence = decoding_case("rope", num_layers, short_conv)
    lengths = [min(3 + i, WINDOW) for i in range(tokens.size(1))]
    expected = window_logits(model, sequence, lengths)
    got = forced_logits(model, prompt, tokens, past_context="fast")
    inside = WINDOW - 3 + 1  # steps whose window still starts at the first token
    for a, b in zip(got[:inside], expected[:inside]):
        assert_close(a, b, rtol=1e-5, atol=1e-5)
    gap = max((a - b).abs().max().item() for a, b in zip(got[inside:], expected[inside:]))
    assert gap < 1e-5 if num_layers == 1 and not short_conv else gap > 1e-4


def test_a_failed_pass_leaves_the_short_convolutions_history_as_it_was():
    model = randomise_short_convs(GPT(tiny_config(short_conv=3, context_length=32))).eval()
    idx = torch.randint(0, 23, (1, 9))
    cache = KVCache.for_model(model, 1)
    model(idx[:, :5], cache)

    def fail(module, args, output):
        raise RuntimeError("a hook that fails")

    handle = model.blocks[1].register_forward_hook(fail)  # after block 0's convolutions ran
    with pytest.raises(RuntimeError, match="a hook that fails"):
        model(idx[:, 5:7], cache)
    handle.remove()
    steps = [model(idx[:, t:t + 1], cache)[:, -1] for t in range(5, 9)]
    assert_close(torch.stack(steps, 1), model(idx)[:, 5:9], rtol=1e-5, atol=1e-5)


def test_generate_without_cache_is_the_recompute_reference():
    model = GPT(tiny_config(pos_encoding="learned")).eval()
    prompt = torch.randint(0, 23, (2, 4))
    expected, _ = greedy_reference(model, prompt, 30, 16)
    assert torch.equal(generate(model, prompt, 30, temperature=0, use_cache=False), expected)


def test_generate_is_tensor_in_tensor_out_and_restores_training_mode():
    model = GPT(tiny_config()).train()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = generate(model, prompt, max_new_tokens=4)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 7) and out.dtype == torch.long
    assert torch.equal(out[:, :3], prompt) and model.training
    with pytest.raises(TypeError, match=r"a \(B, T\) tensor of token ids"):
        generate(model, [1, 2, 3], max_new_tokens=4)


def test_the_decks_list_form_lives_on_mini_transformer():
    model = MiniTransformer(vocab_size=23, embed_dim=32, num_heads=4, num_layers=2)
    out = model.generate([1, 2, 3], max_new_tokens=4, temperature=0)
    assert isinstance(out, list) and len(out) == 7 and out[:3] == [1, 2, 3]
    as_tensor = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, temperature=0)
    assert as_tensor[0].tolist() == out


def test_generate_rejects_bad_controls():
    model = GPT(tiny_config())
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0"):
        generate(model, torch.tensor([[1]]), max_new_tokens=-1)
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        generate(model, torch.tensor([[1]]), max_new_tokens=1, temperature=-1)


@pytest.mark.parametrize("idx,error,message", [
    (torch.tensor([[1, 10**6]]), ValueError, r"token ids must be in \[0, 23\) \(the vocabulary\), "
                                             r"got ids from 1 to 1000000"),
    (torch.tensor([[-1]]), ValueError, r"must be in \[0, 23\).*from -1 to -1"),
    (torch.tensor([[1.0]]), TypeError, "token ids must be an integer tensor, got torch.float32"),
    (torch.zeros(1, 0, dtype=torch.long), ValueError, "need at least one prompt token"),
])
def test_prompts_no_embedding_fits_are_refused_before_the_lookup(idx, error, message):
    """On CUDA an id outside the vocabulary is a device-side assert that ends the process."""
    model = GPT(tiny_config())
    assert model.config.vocab_size == 23
    with pytest.raises(error, match=message):
        generate(model, idx, max_new_tokens=1)
    with pytest.raises(error, match=message):
        inspect_prompt(model, None, idx[0].tolist())


# ----------------------------------------------------------------------------- text level

@pytest.fixture(scope="module")
def char_model():
    text = "the cat sat on the mat. the dog sat on the log.\n" * 10
    tokenizer = CharTokenizer.train(text)
    torch.manual_seed(0)
    return GPT(tiny_config(vocab_size=tokenizer.vocab_size)).eval(), tokenizer


def collect(pieces, n=1):
    texts = [""] * n
    for piece in pieces:
        texts[piece.index] += piece.text
    return texts


def test_same_seed_same_text_and_batched_samples_differ(char_model):
    model, tok = char_model
    a = collect(generate_text(model, tok, "the ", 30, num_samples=3, seed=7), 3)
    b = collect(generate_text(model, tok, "the ", 30, num_samples=3, seed=7), 3)
    assert a == b and len(set(a)) == 3
    greedy = collect(generate_text(model, tok, "the ", 30, temperature=0, num_samples=2), 2)
    assert greedy[0] == greedy[1]


def test_streamed_pieces_concatenate_to_the_full_text(char_model):
    model, tok = char_model
    pieces = list(generate_text(model, tok, "the ", 25, seed=3))
    assert len(pieces) > 5 and pieces[-1].done
    ids = tok.encode("the ")
    out = generate(model, torch.tensor([ids]), 25, generator=torch.Generator().manual_seed(3))
    assert "".join(p.text for p in pieces) == tok.decode(out[0, len(ids):].tolist())


def test_stop_string_ends_the_sample_and_is_not_printed(char_model):
    model, tok = char_model
    full = collect(generate_text(model, tok, "the ", 40, seed=11))[0]
    stop = full[5:7]
    cut = collect(generate_text(model, tok, "the ", 40, seed=11, stop=[stop, "never"]))[0]
    assert cut == full[: full.index(stop)]


def test_unknown_prompt_characters(char_model):
    model, tok = char_model
    with pytest.raises(UnknownCharactersError, match="'Z'"):
        encode_prompt(tok, "the Zqa", 16)
    with pytest.warns(UserWarning, match=r"dropped 2 unknown character\(s\).*'Z' 'q'"):
        assert encode_prompt(tok, "the Zqa", 16, drop_unknown=True) == tok.encode("the a")


def test_long_prompt_keeps_the_last_context_tokens(char_model):
    _, tok = char_model
    with pytest.warns(UserWarning, match="keeping its last 16"):
        ids = encode_prompt(tok, "the cat sat on the mat. " * 3, 16)
    assert ids == tok.encode(("the cat sat on the mat. " * 3)[-16:])


def test_word_tokenizer_warns_about_unknown_words():
    tok = WordTokenizer.train("the cat sat on the mat .")
    with pytest.warns(UserWarning, match="zebra"):
        assert encode_prompt(tok, "the zebra", 16) == [tok.index["the"], tok.unk_id]


def test_empty_prompt_starts_at_a_new_line():
    tok = CharTokenizer.train("ab\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert encode_prompt(tok, "", 16) == tok.encode("\n")


# ----------------------------------------------------------------------------- generate.py

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train(run_config(tmp_path_factory.mktemp("gen")), progress=False).run_dir


def generate_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "generate.py"), *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


@pytest.mark.slow  # real processes (python train.py, generate.py) or a whole app run
def test_cli_samples_reproducibly_with_a_seed(run_dir):
    args = ["--checkpoint", str(run_dir), "--prompt", "the cat sat on", "--seed", "3",
            "--max-new-tokens", "12"]
    first, second = generate_cli(*args), generate_cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.startswith("the cat sat on ")
    assert len(first.stdout.split()) >= 14


# One real process for each kind (a flag, a file); tests/reliability/test_bad_input.py runs the
# whole table of bad input through the same main() in-process.
@pytest.mark.parametrize("args,message", [
    (["--temperature", "-1"], "temperature must be a finite number >= 0"),
    (["--checkpoint", "/nonexistent/x.pt"], "not found"),
])
def test_cli_bad_input_is_one_clear_line(run_dir, args, message):
    done = generate_cli(*args)
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr
    assert __import__("re").search(message, lines[0])


def first_at(row: list[int], seq: list[int]) -> int | None:
    return next((i for i in range(len(row)) if row[i:i + len(seq)] == seq), None)


def test_generate_stops_at_a_token_sequence():
    model = GPT(tiny_config()).eval()
    prompt = torch.tensor([[1, 2, 3]])
    new = generate(model, prompt, 20, temperature=0)[0, 3:].tolist()
    stop = new[4:6]
    cut = generate(model, prompt, 20, temperature=0, stop=[stop, [99]])
    assert cut[0].tolist() == [1, 2, 3] + new[:first_at(new, stop)]  # cut before the sequence


def test_rows_that_stop_early_are_padded():
    model = GPT(tiny_config()).eval()
    prompts = torch.tensor([[1, 2, 3], [7, 8, 9]])
    rows = [generate(model, p[None], 20, temperature=0)[0, 3:].tolist() for p in prompts]
    stop = rows[0][2:4]
    ends = [first_at(row, stop) for row in rows]
    assume_differs = ends[0] != ends[1]
    out = generate(model, prompts, 20, temperature=0, stop=[stop], pad_id=-1)
    kept = [row[:end] if end is not None else row for row, end in zip(rows, ends)]
    assert out.shape == (2, 3 + max(map(len, kept)))
    for i, row in enumerate(kept):
        assert out[i, 3:3 + len(row)].tolist() == row
        assert (out[i, 3 + len(row):] == -1).all()
    assert assume_differs  # the rows really ended at different places
