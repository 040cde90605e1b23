"""Text to token ids fast, with the ids of minigpt's own tokenizers: what minigpt.shards encodes
corpora with. char through a lookup table indexed by code point (numpy, no loop per character),
word through its index, BPE through tiktoken's Rust encoder built from minigpt's own vocabulary
(the `fast` extra) where it can express it, else through minigpt's reference BPE.
"""

import os
from collections.abc import Callable

import numpy as np

from minigpt.tokenizer import (
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    UnknownCharactersError,
    WordTokenizer,
)

GPT2_PATTERN = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest integer type holding ids below vocab_size: a character corpus as uint8 takes
    an eighth of int64; GPT-2's 50,257 ids fit uint16."""
    for dtype in (np.uint8, np.uint16, np.int32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _char_encoder(tokenizer: CharTokenizer):
    """Characters to ids through a lookup table indexed by code point: numpy, no loop per character."""
    table = np.full(max(map(ord, tokenizer.chars)) + 1, -1, dtype=np.int64)
    table[[ord(c) for c in tokenizer.chars]] = np.arange(tokenizer.vocab_size)

    def encode(texts: list[str]) -> list[np.ndarray]:
        out = []
        for text in texts:
            codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            ids = table[np.minimum(codes, len(table) - 1)]
            if (ids < 0).any() or (codes >= len(table)).any():
                raise UnknownCharactersError(tokenizer.unknown_chars(text))
            out.append(ids)
        return out

    return encode


def _tiktoken(tokenizer: BPETokenizer):
    """tiktoken's Encoding with this tokenizer's vocabulary, or None (no tiktoken installed, a
    split other than GPT-2's, or token byte strings that repeat). Its ids equal the reference's:
    tests/test_shards.py checks them on mixed scripts and emoji."""
    try:
        import tiktoken
    except ImportError:
        return None
    special = dict(tokenizer.special)
    ranks = {t: i for i, t in enumerate(tokenizer.token_bytes) if i not in special.values()}
    if tokenizer.split != "gpt2" or len(ranks) != tokenizer.vocab_size - len(special):
        return None
    return tiktoken.Encoding(name="minigpt", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens=special)


def encoder(tokenizer: Tokenizer) -> tuple[Callable[[list[str]], list[np.ndarray]], str]:
    """(encode a list of texts, how): the fastest encoder giving the tokenizer's own ids."""
    if isinstance(tokenizer, CharTokenizer):
        return _char_encoder(tokenizer), "lookup table"
    if isinstance(tokenizer, WordTokenizer):
        return (lambda texts: [np.asarray(tokenizer.encode(t), dtype=np.int64) for t in texts]), \
            "word index"
    fast = _tiktoken(tokenizer)
    if fast is not None:
        threads = os.cpu_count() or 1
        return (lambda texts: [np.asarray(ids, dtype=np.int64) for ids in
                               fast.encode_ordinary_batch(texts, num_threads=threads)],
                f"tiktoken, {threads} threads")
    how = ("minigpt's reference BPE (pip install 'minigpt[fast]' for tiktoken)"
           if tokenizer.split == "gpt2" else "minigpt's reference BPE")
    return (lambda texts: [np.asarray(tokenizer.encode(t), dtype=np.int64) for t in texts]), how


def end_of_text(tokenizer: Tokenizer) -> int | None:
    return getattr(tokenizer, "special", {}).get("<|endoftext|>")
