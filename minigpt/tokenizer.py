"""Tokenizers: text <-> token ids, behind one small interface.

    tok = CharTokenizer.train(text)      # or WordTokenizer.train(text), BPETokenizer.train(text, 512)
    ids = tok.encode("the cat sat on")   # list[int]
    tok.decode(ids)                      # str
    tok.vocab_size
    tokenizer_from_dict(tok.to_dict())   # plain data, stored in checkpoints

- char: one token per character seen in the training text.
- word: the deck's SimpleVocab: lower-cased words and punctuation marks, plus <unk>.
- bpe:  byte-level byte-pair encoding; any UTF-8 text round-trips exactly.
"""

import functools
import re
import unicodedata
import warnings
from collections import Counter
from typing import Protocol

from minigpt.corpus import load_corpus
from minigpt.errors import InputError


class Tokenizer(Protocol):
    kind: str

    @property
    def vocab_size(self) -> int: ...
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def to_dict(self) -> dict: ...


class UnknownCharactersError(InputError):
    """Text holds characters a char tokenizer never saw in its training text."""

    def __init__(self, unknown: list[str]):
        self.unknown = unknown
        shown = " ".join(repr(c) for c in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
        super().__init__(f"{len(unknown)} character(s) not in the tokenizer's vocabulary: {shown}")


def _check_ids(ids, vocab_size: int) -> None:
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"token id(s) {bad[:10]} outside the vocabulary [0, {vocab_size})")


class CharTokenizer:
    kind = "char"

    def __init__(self, chars: str):
        if not chars or len(set(chars)) != len(chars):
            raise ValueError("a char tokenizer needs a non-empty string of distinct characters")
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def unknown_chars(self, text: str) -> list[str]:
        return sorted(set(text) - self.index.keys())

    def encode(self, text: str) -> list[int]:
        try:
            return [self.index[c] for c in text]
        except KeyError:
            raise UnknownCharactersError(self.unknown_chars(text)) from None

    def decode(self, ids) -> str:
        _check_ids(ids, self.vocab_size)
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}


# A word is letters/digits, optionally with an apostrophe part (don't, cat's); everything else
# that is not a space is its own token; a newline is kept as a token so paragraphs survive.
_WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)?|\n|[^\w\s]|_")
_NO_SPACE_BEFORE = set(".,!?;:)]}'\"\n")
_NO_SPACE_AFTER = set("([{\n")


class WordTokenizer:
    """Lower-cased words and punctuation as tokens; words outside the vocabulary become <unk>."""

    kind = "word"
    UNK = "<unk>"

    def __init__(self, words: list[str]):
        if self.UNK not in words:
            words = [self.UNK, *words]
        if len(set(words)) != len(words):
            raise ValueError("a word tokenizer's vocabulary must not repeat words")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.unk_id = self.index[self.UNK]

    @staticmethod
    def split(text: str) -> list[str]:
        return _WORD_RE.findall(text.lower())

    @classmethod
    def train(cls, text: str, max_words: int | None = None) -> "WordTokenizer":
        """Vocabulary of the most frequent words (all of them if max_words is None), ties by order."""
        counts = Counter(cls.split(text))
        ranked = sorted(counts, key=lambda w: (-counts[w], w))
        if max_words is not None:
            ranked = ranked[: max_words - 1]
        return cls([cls.UNK, *sorted(ranked)])

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def unknown_words(self, text: str) -> list[str]:
        return sorted({w for w in self.split(text) if w not in self.index})

    def encode(self, text: str) -> list[int]:
        return [self.index.get(w, self.unk_id) for w in self.split(text)]

    def decode(self, ids) -> str:
        _check_ids(ids, self.vocab_size)
        out = []
        for i in ids:
            word = self.words[i]
            if out and word[0] not in _NO_SPACE_BEFORE and out[-1][-1] not in _NO_SPACE_AFTER:
                out.append(" ")
            out.append(word)
        return "".join(out)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "words": self.words}


class SimpleVocab(WordTokenizer):
    """The deck's `SimpleVocab()`: a word tokenizer, by default over the embedded corpus."""

    def __init__(self, words: list[str] | None = None):
        super().__init__(words if words is not None else WordTokenizer.train(load_corpus()).words)


# GPT-2 style pre-split, with stdlib re: a word may carry one leading space; digits, runs of
# punctuation and whitespace are split off, so merges never cross word boundaries.
_MINIGPT_SPLIT = re.compile(r" ?[^\W\d_]+| ?\d{1,3}| ?[^\s\w]+|_+|\s+(?!\S)|\s+")
# Unicode's White_Space property: what GPT-2's pattern means by \s (Python's \s adds \x1c-\x1f).
_WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def _unicode_classes() -> tuple[str, str]:
    r"""Regex character class bodies of every letter and every number (general categories L* and
    N*): what the `regex` module writes \p{L} and \p{N}. Planes 4-16 hold neither (they are
    unassigned, tags and variation selectors, or private use), so the scan stops at plane 3."""
    ranges: dict[str, list[str]] = {"L": [], "N": []}
    start, kind = 0, None
    for cp in range(0x40001):
        now = unicodedata.category(chr(cp))[0] if cp < 0x40000 else None
        now = now if now in ranges else None
        if now != kind:
            if kind is not None:
                first, last = re.escape(chr(start)), re.escape(chr(cp - 1))
                ranges[kind].append(first if start == cp - 1 else f"{first}-{last}")
            start, kind = cp, now
    return "".join(ranges["L"]), "".join(ranges["N"])


@functools.cache
def _gpt2_split() -> re.Pattern:
    r"""GPT-2's pre-tokenization pattern (contractions, letters, numbers, other symbols, spaces),
    written with the standard library's re: \p{L} and \p{N} spelt out from unicodedata."""
    (letters, numbers), space = _unicode_classes(), _WHITE_SPACE
    return re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{letters}]+| ?[{numbers}]+"
                      rf"| ?[^{space}{letters}{numbers}]+|[{space}]+(?![^{space}])|[{space}]+")


SPLITS = {"gpt2": _gpt2_split, "minigpt": lambda: _MINIGPT_SPLIT}


def _merge(seq: tuple[int, ...], pair: tuple[int, int], new_id: int) -> tuple[int, ...]:
    out, i = [], 0
    while i < len(seq):
        if i + 1 < len(seq) and seq[i] == pair[0] and seq[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return tuple(out)


class BPETokenizer:
    """Byte-level BPE (https://arxiv.org/abs/1508.07909). Every token is a byte string; text is
    cut into chunks by `split` (GPT-2's pattern; "minigpt" is the pattern of checkpoints before
    GPT-2 support), each chunk's bytes are merged pair by pair, earliest-learned merge first.

    As trained here, ids 0-255 are the bytes and id 256 + n the n-th merge. A vocabulary read from
    GPT-2's files numbers tokens its own way: `tokens` then gives each id's bytes, and `special`
    tokens (such as <|endoftext|>) have ids but no merges.
    """

    kind = "bpe"

    def __init__(self, merges: list[tuple[int, int]], split: str = "minigpt",
                 tokens: list[bytes] | None = None, special: dict[str, int] | None = None):
        if split not in SPLITS:
            raise ValueError(f"unknown BPE split {split!r}; choose one of {sorted(SPLITS)}")
        self.merges, self.split, self.special = [tuple(p) for p in merges], split, special or {}
        self.own_numbering = tokens is not None  # else the ids follow from the merges
        if tokens is None:  # minigpt's numbering: bytes, then one id per merge
            tokens = [bytes([i]) for i in range(256)]
            for n, (a, b) in enumerate(self.merges):
                if not (0 <= a < 256 + n and 0 <= b < 256 + n):
                    raise ValueError(f"BPE merge {n} ({a}, {b}) refers to an id not yet defined")
                tokens.append(tokens[a] + tokens[b])
        self.token_bytes = list(tokens)
        ids = {t: i for i, t in enumerate(self.token_bytes) if i not in self.special.values()}
        self.byte_ids = [ids.get(bytes([b])) for b in range(256)]
        if None in self.byte_ids:
            raise ValueError("a byte-level BPE vocabulary needs a token for each of the 256 bytes")
        self.ranks = {}  # (left id, right id) -> (rank, id of the merged token)
        for rank, (a, b) in enumerate(self.merges):
            merged = ids.get(self.token_bytes[a] + self.token_bytes[b])
            if merged is None:
                raise ValueError(f"BPE merge {rank} makes a token the vocabulary lacks")
            self.ranks.setdefault((a, b), (rank, merged))
        self._pattern = SPLITS[split]()
        self._chunk_cache: dict[str, list[int]] = {}

    @classmethod
    def train(cls, text: str, vocab_size: int, split: str = "gpt2") -> "BPETokenizer":
        """Learn vocab_size - 256 merges, most frequent pair first (ties: smallest pair)."""
        if vocab_size < 256:
            raise ValueError(f"a byte-level BPE vocabulary needs at least 256 ids, got {vocab_size}")
        chunk_counts = Counter(SPLITS[split]().findall(text))
        words = [tuple(chunk.encode("utf-8")) for chunk in chunk_counts]
        freqs = list(chunk_counts.values())
        pair_counts: Counter = Counter()
        where: dict[tuple[int, int], set[int]] = {}  # pair -> indices of words holding it
        for w, (word, freq) in enumerate(zip(words, freqs)):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += freq
                where.setdefault(pair, set()).add(w)
        merges = []
        for new_id in range(256, vocab_size):
            if not pair_counts:
                break
            best = max(pair_counts, key=lambda p: (pair_counts[p], -p[0], -p[1]))
            merges.append(best)
            # Only words holding the pair change: take their pairs out, merge, put them back.
            for w in where.pop(best):
                word, freq = words[w], freqs[w]
                for pair in zip(word, word[1:]):
                    pair_counts[pair] -= freq
                    if pair_counts[pair] <= 0:
                        del pair_counts[pair]
                words[w] = word = _merge(word, best, new_id)
                for pair in zip(word, word[1:]):
                    pair_counts[pair] += freq
                    where.setdefault(pair, set()).add(w)
        return cls(merges, split)

    @property
    def vocab_size(self) -> int:
        return len(self.token_bytes)

    def _encode_chunk(self, chunk: str) -> list[int]:
        ids = [self.byte_ids[b] for b in chunk.encode("utf-8")]
        while len(ids) > 1:
            rank, pair = min((self.ranks.get(pair, (1 << 62, None)), pair)
                             for pair in zip(ids, ids[1:]))
            if rank[1] is None:
                break
            ids = list(_merge(tuple(ids), pair, rank[1]))
        return ids

    def encode(self, text: str) -> list[int]:
        out = []
        for chunk in self._pattern.findall(text):
            ids = self._chunk_cache.get(chunk)
            if ids is None:
                ids = self._encode_chunk(chunk)
                if len(self._chunk_cache) < 100_000:
                    self._chunk_cache[chunk] = ids
            out.extend(ids)
        return out

    def decode(self, ids) -> str:
        _check_ids(ids, self.vocab_size)
        return b"".join(self.token_bytes[i] for i in ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        data = {"kind": self.kind, "merges": [list(pair) for pair in self.merges],
                "split": self.split}
        if self.own_numbering:
            data["tokens"] = [t.hex() for t in self.token_bytes]
            data["special"] = dict(self.special)
        return data


TOKENIZERS = {"char": CharTokenizer, "word": WordTokenizer, "bpe": BPETokenizer}


def tokenizer_from_dict(data: dict) -> Tokenizer:
    """Rebuild a tokenizer saved with to_dict (as found in a checkpoint)."""
    if not isinstance(data, dict) or data.get("kind") not in TOKENIZERS:
        raise ValueError(f"not a saved tokenizer (expected kind in {sorted(TOKENIZERS)})")
    try:
        if data["kind"] == "char":
            return CharTokenizer(data["chars"])
        if data["kind"] == "word":
            return WordTokenizer(list(data["words"]))
        tokens = [bytes.fromhex(t) for t in data["tokens"]] if "tokens" in data else None
        return BPETokenizer([tuple(pair) for pair in data["merges"]],
                            data.get("split", "minigpt"), tokens, data.get("special"))
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"saved {data['kind']} tokenizer is malformed: {err}") from None


def train_tokenizer(kind: str, text: str, vocab_size: int = 512) -> Tokenizer:
    """Build a tokenizer of the given kind from text (vocab_size is used by bpe only)."""
    if kind not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {kind!r}; choose one of {sorted(TOKENIZERS)}")
    if kind == "bpe":
        return BPETokenizer.train(text, vocab_size)
    return TOKENIZERS[kind].train(text)


def warn_unknown_words(tokenizer: Tokenizer, text: str) -> None:
    """Warn (not fail) when a word tokenizer will map some of text's words to <unk>."""
    if isinstance(tokenizer, WordTokenizer):
        unknown = tokenizer.unknown_words(text)
        if unknown:
            warnings.warn(f"{len(unknown)} word(s) not in the vocabulary become <unk>: "
                          f"{', '.join(unknown[:10])}", stacklevel=2)
