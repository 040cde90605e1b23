"""Text in, text out: prompts, stop strings and streaming on top of `GPT.stream`.

    model, tokenizer = minigpt.load("runs/my-run")
    for piece in generate_text(model, tokenizer, "the cat sat on", max_new_tokens=50):
        print(piece.text, end="", flush=True)
"""

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from minigpt.errors import InputError
from minigpt.model import GPT
from minigpt.runtime import device_memory
from minigpt.sampling import check_sampling_args
from minigpt.tokenizer import CharTokenizer, Tokenizer, warn_unknown_words

START_TEXT = "\n"  # with no prompt, generation starts as if at the start of a new line


@dataclass
class Piece:
    """New text of sample `index`; `done` once the sample has ended (stop string or length)."""

    index: int
    text: str
    done: bool = False


MAX_NEW_TOKENS = 100_000  # hours of CPU decoding for a small model; more is a slip of the keyboard
MAX_SAMPLES = 1024


def check_generation_args(max_new_tokens: int, temperature: float, top_k: int | None,
                          top_p: float | None, num_samples: int, seed: int | None = None,
                          stop: Sequence[str] = ()) -> None:
    """Raise InputError for controls that have no meaning (before any model is loaded)."""
    check_sampling_args(temperature, top_k, top_p)
    if max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if max_new_tokens > MAX_NEW_TOKENS:
        raise InputError(f"max_new_tokens must be at most {MAX_NEW_TOKENS:,}, got {max_new_tokens}")
    if not 1 <= num_samples <= MAX_SAMPLES:
        raise InputError(f"num_samples must be >= 1 and at most {MAX_SAMPLES}, got {num_samples}")
    if seed is not None and not 0 <= seed < 2**63:
        raise InputError(f"seed must be in [0, 2**63), got {seed}")
    if any(not s for s in stop):
        raise InputError("a stop string must not be empty; give the text that ends a sample")


def encode_prompt(tokenizer: Tokenizer, prompt: str, context_length: int,
                  drop_unknown: bool = False) -> list[int]:
    """Token ids of prompt, at most the last context_length of them (with a warning).

    A char tokenizer refuses characters it never saw (UnknownCharactersError) unless
    drop_unknown; a word tokenizer maps unknown words to <unk> with a warning.
    """
    if not prompt:
        prompt = START_TEXT
    if isinstance(tokenizer, CharTokenizer) and drop_unknown:
        unknown = set(tokenizer.unknown_chars(prompt))
        if unknown:
            warnings.warn(f"dropped {len(unknown)} unknown character(s) from the prompt: "
                          f"{' '.join(repr(c) for c in sorted(unknown))}", stacklevel=2)
            prompt = "".join(c for c in prompt if c not in unknown)
    warn_unknown_words(tokenizer, prompt)
    ids = tokenizer.encode(prompt)
    if not ids:
        raise InputError("the prompt holds no tokens; give a prompt with some text")
    if len(ids) > context_length:
        warnings.warn(f"the prompt has {len(ids)} tokens; keeping its last {context_length} "
                      f"(the model's context_length)", stacklevel=2)
        ids = ids[-context_length:]
    return ids


def check_batch_fits(model: GPT, num_samples: int) -> None:
    """Refuse a batch whose key/value cache and logits would not fit half the device's memory."""
    cfg, weight = model.config, model.token_emb.weight
    per_sample = (2 * cfg.num_layers * cfg.context_length * cfg.embed_dim + 2 * cfg.vocab_size)
    need, total = num_samples * per_sample * weight.element_size(), device_memory(weight.device)
    if total is not None and need > total // 2:
        raise InputError(f"{num_samples} samples need about {need / 2**30:,.1f} GiB for their "
                         f"key/value caches, more than half the {total / 2**30:,.1f} GiB of "
                         f"{weight.device}; ask for fewer samples")


def _first_stop(text: str, stop: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stop if s and s in text]
    return min(hits) if hits else None


def generate_text(model: GPT, tokenizer: Tokenizer, prompt: str | list[int],
                  max_new_tokens: int = 200,
                  temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                  num_samples: int = 1, seed: int | None = None, stop: Sequence[str] = (),
                  drop_unknown: bool = False, use_cache: bool = True,
                  past_context: str = "exact") -> Iterator[Piece]:
    """Yield the new text of each sample as it is produced, num_samples decoded in one batch.

    prompt is text, or token ids already made by encode_prompt. A sample ends at the first
    occurrence of any stop string (which is not yielded); text that could still turn into a stop
    string is held back until it cannot.
    """
    check_generation_args(max_new_tokens, temperature, top_k, top_p, num_samples, seed, stop)
    ids = (prompt if isinstance(prompt, list)
           else encode_prompt(tokenizer, prompt, model.config.context_length, drop_unknown))
    device = model.token_emb.weight.device
    check_batch_fits(model, num_samples)
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed) if seed is not None else generator.seed()
    prompt_text = tokenizer.decode(ids)
    new_ids: list[list[int]] = [[] for _ in range(num_samples)]
    shown = [0] * num_samples  # characters of new text already yielded
    done = [False] * num_samples
    hold = max((len(s) for s in stop), default=1) - 1
    model.eval()
    for step, tokens in enumerate(model.stream(idx, max_new_tokens, temperature, top_k, top_p,
                                               generator, use_cache, past_context)):
        last = step == max_new_tokens - 1
        for i, token in enumerate(tokens.tolist()):
            if done[i]:
                continue
            new_ids[i].append(token)
            text = tokenizer.decode(ids + new_ids[i])[len(prompt_text):]
            cut = _first_stop(text, stop)
            if cut is not None or last:
                done[i] = True
                end = cut if cut is not None else len(text)
            else:  # hold back a possible stop-string prefix and an unfinished UTF-8 sequence
                end = len(text) - hold
                while end > shown[i] and text[end - 1] == "\ufffd":
                    end -= 1
            if end > shown[i] or done[i]:
                yield Piece(i, text[shown[i]:max(end, shown[i])], done[i])
                shown[i] = max(end, shown[i])
        if all(done):
            return
    for i in range(num_samples):  # max_new_tokens == 0
        if not done[i]:
            yield Piece(i, "", True)
