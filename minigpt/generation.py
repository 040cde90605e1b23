"""Decoding: a GPT's next tokens one at a time, with a KV cache, stop sequences and the policy
past the context, as token ids or as streamed text.

    model, tokenizer = minigpt.load("runs/my-run")
    for piece in generate_text(model, tokenizer, "the cat sat on", max_new_tokens=50):
        print(piece.text, end="", flush=True)
    ids = generate(model, torch.tensor([[1, 2, 3]]), max_new_tokens=20, temperature=0.8)

`stream` yields each step's tokens; `generate` (token ids) and `generate_text` (text, streamed)
are built on it. Sampling itself (temperature, top-k, top-p) is minigpt.sampling.
"""

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from minigpt.errors import InputError
from minigpt.model import GPT, ModelConfig, eval_mode
from minigpt.runtime import device_memory
from minigpt.sampling import check_sampling_args, sample_next
from minigpt.tokenizer import CharTokenizer, Tokenizer, warn_unknown_words

START_TEXT = "\n"  # with no prompt, generation starts as if at the start of a new line


@dataclass
class Piece:
    """New text of sample `index`; `done` once the sample has ended (stop string or length)."""

    index: int
    text: str
    done: bool = False


class KVCache:
    """Keys and values of the positions seen so far, for every layer, so decoding feeds one token
    per step instead of the whole sequence (GPT.forward(idx, cache) fills it).

    `length` slots are filled; `position` is the absolute position of the next token (it exceeds
    `length` once a rope model has rolled old keys out of the window).
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, device=None, dtype=None):
        shape = (cfg.num_layers, batch_size, cfg.num_heads, cfg.context_length, cfg.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.capacity = cfg.context_length
        self.length = 0
        self.position = 0
        self.inputs = {}  # ShortConv -> its last inputs (B, K - 1, C)
        self.pending = {}  # the same, from the forward pass under way; kept by advance()

    @classmethod
    def for_model(cls, model: GPT, batch_size: int) -> "KVCache":
        weight = model.token_emb.weight
        return cls(model.config, batch_size, device=weight.device, dtype=weight.dtype)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, H, T, D) after the filled slots; return all keys and values (B, H, S, D)."""
        end = self.length + k.size(2)
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def recent(self, conv, x: torch.Tensor, keep: int) -> torch.Tensor:
        """x (B, T, C) after the last `keep` inputs conv has seen (zeros before the first):
        (B, keep + T, C). Its last `keep` rows become conv's history when the pass completes
        (advance), so a pass that fails half-way leaves the history as it was."""
        before = self.inputs.get(conv)
        if before is None:
            before = x.new_zeros(x.size(0), keep, x.size(2))
        both = torch.cat([before, x], dim=1)
        self.pending[conv] = both[:, both.size(1) - keep:].detach().clone()  # not the whole buffer
        return both

    def advance(self, num_tokens: int) -> None:
        self.length += num_tokens
        self.position += num_tokens
        self.inputs.update(self.pending)
        self.pending.clear()

    def evict(self, num_tokens: int) -> None:
        """Drop the oldest num_tokens keys and values (used by rope models past context_length)."""
        keep = self.length - num_tokens
        self.keys[:, :, :, :keep] = self.keys[:, :, :, num_tokens:self.length].clone()
        self.values[:, :, :, :keep] = self.values[:, :, :, num_tokens:self.length].clone()
        self.length = keep

    def reset(self) -> None:
        self.length = 0
        self.position = 0
        self.inputs.clear()
        self.pending.clear()


MAX_NEW_TOKENS = 100_000  # hours of CPU decoding for a small model; more is a slip of the keyboard
MAX_SAMPLES = 1024


def check_generation_args(max_new_tokens: int, temperature: float, top_k: int | None,
                          top_p: float | None, num_samples: int = 1, seed: int | None = None,
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


def first_stop(sequence: str | list[int], stops: Sequence) -> int | None:
    """Where the earliest stop in sequence begins, or None: stop strings in text, or stop token-id
    lists in a list of ids (whose stops are checked after every token, so only at its end)."""
    if isinstance(sequence, str):
        hits = [sequence.find(s) for s in stops if s and s in sequence]
    else:
        hits = [len(sequence) - len(s) for s in stops
                if s and sequence[-len(s):] == list(s)]
    return min(hits) if hits else None


PAST_CONTEXT = ("exact", "fast")


def check_ids(model: GPT, idx: torch.Tensor) -> None:
    """Refuse a prompt that no embedding row fits: not integer ids, no token, or an id outside
    the vocabulary (on CUDA the lookup would end the process with a device-side assert).
    Generation, inspection and the interventions check; the training step does not pay for it."""
    if idx.size(-1) == 0:
        raise ValueError("generation and inspection need at least one prompt token")
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise TypeError(f"token ids must be an integer tensor, got {idx.dtype}")
    low, high = int(idx.min()), int(idx.max())
    if low < 0 or high >= model.config.vocab_size:
        raise ValueError(f"token ids must be in [0, {model.config.vocab_size}) (the "
                         f"vocabulary), got ids from {low} to {high}")


def stream(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None, use_cache: bool = True,
           past_context: str = "exact",
           choose: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[torch.Tensor]:
    """Yield max_new_tokens next-token batches (B,), continuing idx (B, T), in eval mode.

    Every next token is predicted from the last context_length tokens. With use_cache the
    prompt is processed once and each step feeds one token, which gives the same logits as
    recomputing the window, as long as the sequence fits the context. Past it, past_context
    says what happens:

    - "exact" (the default): every step recomputes the window of the last context_length
      tokens, as use_cache=False does throughout: the logits are those of the model on that
      window, whatever the position encoding or depth. Slower past the context.
    - "fast": keep using a cache. Relative (rope) models drop the oldest cached keys and
      values, a rolling window: with one layer and no short_conv this equals recomputing the
      window; with more layers it differs (deeper layers' cached keys were computed while the
      dropped tokens were still visible), and with short_conv too (its last inputs include
      dropped tokens). Absolute encodings re-prefill the last context_length // 2 + 1 tokens when
      the cache is full, so the window shrinks to half and grows back, paying for a prefill
      once every context_length / 2 tokens.

    choose picks the next tokens from the logits (B, V) instead of sampling with temperature,
    top_k and top_p (tests use it to feed fixed tokens and read the logits).
    """
    check_generation_args(max_new_tokens, temperature, top_k, top_p)
    check_ids(model, idx)
    if past_context not in PAST_CONTEXT:
        raise InputError(f"past_context must be one of {PAST_CONTEXT}, got {past_context!r}")
    choose = choose or (lambda logits: sample_next(logits, temperature, top_k, top_p, generator))
    window, relative = model.config.context_length, model.pos_emb.relative
    cache = KVCache.for_model(model, idx.size(0)) if use_cache else None
    idx = idx[:, -window:]
    with torch.no_grad(), eval_mode(model):
        logits = model(idx, cache)[:, -1]
        for step in range(max_new_tokens):
            next_token = choose(logits)  # (B,)
            yield next_token
            if step == max_new_tokens - 1:
                return
            idx = torch.cat([idx, next_token[:, None]], dim=1)[:, -window:]  # the last window
            if cache is not None and cache.length == window:  # the cache is full
                if past_context == "exact":
                    cache = None  # from here on, recompute the window every step
                elif not relative:
                    cache.reset()
                    logits = model(idx[:, -(window // 2 + 1):], cache)[:, -1]
                    continue
            logits = (model(idx) if cache is None else model(next_token[:, None], cache))[:, -1]


def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True,
             stop: Sequence[Sequence[int]] = (), pad_id: int = -1,
             past_context: str = "exact") -> torch.Tensor:
    """Sample up to max_new_tokens tokens after idx (B, T); returns idx with them appended.

    stop: token-id sequences. A row ends just before the first stop sequence it produces (the
    sequence is not returned), and generation ends once every row has ended. Rows that end
    before the longest one are filled up with pad_id: -1 by default, which is no token's id, so
    `row[row >= 0]` gives a row back. (Stop *strings* are matched on text by generate_text, since
    token boundaries need not match them.)
    """
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        raise TypeError("generate takes a (B, T) tensor of token ids (the deck's "
                        "MiniTransformer.generate also takes a plain list)")
    stop = [list(s) for s in stop if len(s)]
    rows = [[] for _ in range(idx.size(0))]  # the new tokens of each row
    ends: list[int | None] = [None] * idx.size(0)  # where each row's first stop sequence begins
    for tokens in stream(model, idx, max_new_tokens, temperature, top_k, top_p, generator,
                         use_cache, past_context):
        for i, token in enumerate(tokens.tolist()):
            rows[i].append(token)
            if ends[i] is None:
                ends[i] = first_stop(rows[i], stop)
        if stop and None not in ends:
            break
    kept = [row if end is None else row[:end] for row, end in zip(rows, ends)]
    new = torch.full((idx.size(0), max(map(len, kept))), pad_id, dtype=torch.long,
                     device=idx.device)
    for i, row in enumerate(kept):
        new[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return torch.cat([idx, new], dim=1)


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
    for step, tokens in enumerate(stream(model, idx, max_new_tokens, temperature, top_k, top_p,
                                         generator, use_cache, past_context)):
        last = step == max_new_tokens - 1
        for i, token in enumerate(tokens.tolist()):
            if done[i]:
                continue
            new_ids[i].append(token)
            text = tokenizer.decode(ids + new_ids[i])[len(prompt_text):]
            cut = first_stop(text, stop)
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
