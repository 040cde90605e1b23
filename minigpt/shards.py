"""Prepared token shards: text of any size, tokenized once in bounded memory into a token file
that training reads through a memory map, never all into RAM.

    shards = prepare(cfg.data, progress=True)    # cached: a second start reads no text
    shards.tokens                                # (N,) tensor over the mapped file
    train, val = shards.split(0.1)               # the val split never cuts a document

What is read: the embedded corpus (or Tiny Shakespeare), a text file, a directory (its .txt, .md
and .jsonl files, in path order) or a glob of files. A plain text file is one document; a .jsonl
file holds one document a line, its text in the field `data.text_field`. Text is read in blocks of
BLOCK bytes, cut where a word ends, and encoded block by block, so memory stays flat whatever the
corpus' size. Documents are separated by an end-of-text token where the tokenizer has one (GPT-2's).

On disk, in <cache>/shards/<key>/, written into a temporary folder renamed when complete (a kill
leaves only a .tmp folder, which the next preparation removes, and no half-written shard is used):

    tokens.bin   every document's token ids back to back, in the smallest integer type that holds
                 the vocabulary (uint8, uint16 or int32), little-endian: np.memmap reads it too
    ends.bin     int64: where each document ends in tokens.bin
    index.json   dtype, tokens, documents, the tokenizer, the sources, the text's SHA-256

The key is made from the tokenizer settings and each source's path, size and modification time (the
embedded corpus: its text), so finding prepared shards reads no text; a changed file gets new ones.
One process prepares a key at a time (a lock file beside it); the others wait and then share them.
"""

import hashlib
import json
import mmap
import os
import shutil
import sys
import tempfile
import time
import warnings
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from minigpt.errors import DataError, DiskFullError, Interrupted
from minigpt.files import disk_full, is_disk_full
from minigpt.lock import _lock, _unlock
from minigpt.sources import BLOCK, Source, cut_where_words_end, documents
from minigpt.tokenizer import (
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    UnknownCharactersError,
    WordTokenizer,
    tokenizer_from_dict,
    train_tokenizer,
)

FORMAT = 1  # of the folder's layout; a new one prepares anew
FOLIO = 2 << 20  # the largest page-cache folio the kernel maps around a read (Shards.release)
SHOW_PROGRESS = 16 << 20  # bytes of text from which preparing shows a progress bar
GPT2_PATTERN = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


@dataclass
class Shards:
    tokenizer: Tokenizer
    tokens: torch.Tensor  # (N,) over the mapped tokens.bin (or in memory, when no cache could hold it)
    ends: np.ndarray  # (documents,) where each document ends
    index: dict = field(default_factory=dict)
    mapped: np.memmap | None = None  # the token file's map, when tokens are read through one

    def release(self, tokens: torch.Tensor, starts: torch.Tensor, length: int) -> None:
        """Unmap what reading windows [start, start + length) of tokens (a slice of self.tokens)
        mapped in; the pages stay in the page cache. The kernel maps 64 kB to 2 MB around every
        read (whole page-cache folios), so without this a long run's resident memory grows
        toward the token file's size. A few microseconds a window; a no-op without a map or
        madvise (Windows)."""
        if self.mapped is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        size, offset = self.mapped.itemsize, tokens.storage_offset()
        end_of_file = len(self.mapped) * size
        for start in starts.tolist():
            first = (offset + start) * size // FOLIO * FOLIO
            last = min(-(-(offset + start + length) * size // FOLIO) * FOLIO, end_of_file)
            self.mapped._mmap.madvise(mmap.MADV_DONTNEED, first, last - first)

    def split(self, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, val): the last val_fraction of the tokens, moved to the nearest document end
        so that no document is cut (one document: its last tokens, as minigpt always split)."""
        n = len(self.tokens)
        cut = n - int(n * val_fraction)
        inner = self.ends[:-1]  # the ends that leave some val
        if len(inner):
            i = int(np.searchsorted(inner, cut))
            near = [int(inner[j]) for j in (i - 1, i) if 0 <= j < len(inner) and inner[j] > 0]
            cut = min(near, key=lambda end: abs(end - cut)) if near else cut
        return self.tokens[:cut], self.tokens[cut:]


# ----------------------------------------------------------------------------- encoders

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
        index, unk = tokenizer.index, tokenizer.unk_id
        return (lambda texts: [np.fromiter((index.get(w, unk) for w in tokenizer.split(t)),
                                           dtype=np.int64) for t in texts]), "word index"
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


# ----------------------------------------------------------------------------- preparing

def _check(interrupted: Callable[[], bool]) -> None:
    if interrupted():
        raise Interrupted("preparing the data stopped; nothing half-written was kept, and the "
                          "next run prepares it again")


def _bar(total: int, what: str, progress: bool):
    return tqdm(total=total, desc=what, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not progress or total < SHOW_PROGRESS, leave=False, file=sys.stderr)


def _train_tokenizer(cfg, sources: list[Source], total: int, progress: bool,
                     interrupted) -> Tokenizer:
    """A tokenizer of cfg.tokenizer's kind: char sees every character of the text (one fast
    pass); word and bpe learn from the first cfg.tokenizer_sample characters."""
    with _bar(total, "reading characters" if cfg.tokenizer == "char" else "sampling", progress) \
            as bar:
        docs = documents(sources, cfg.text_field, bar, hashlib.sha256())
        if cfg.tokenizer == "char":
            seen = np.zeros(0x110000, dtype=bool)
            for doc in docs:
                for block in doc:
                    _check(interrupted)
                    seen[np.frombuffer(block.encode("utf-32-le"), dtype=np.uint32)] = True
            chars = "".join(map(chr, np.flatnonzero(seen)))
            if not chars:
                raise DataError("the data holds no text; it needs some text to train on")
            return CharTokenizer(chars)
        sample, size = [], 0
        for doc in docs:
            for block in doc:
                sample.append(block)
                size += len(block)
                if size >= cfg.tokenizer_sample:
                    break
            if size >= cfg.tokenizer_sample:
                break
            sample.append("\n")
        return train_tokenizer(cfg.tokenizer, "".join(sample)[:max(cfg.tokenizer_sample, 1)],
                               cfg.bpe_vocab_size)


def _encode_all(cfg, sources: list[Source], tokenizer: Tokenizer, total: int, progress: bool,
                write: Callable[[np.ndarray], object], interrupted) -> tuple[int, array, str]:
    """Encode every document, passing each block's ids to write; (tokens, document ends, SHA-256
    of the text)."""
    encode, _ = encoder(tokenizer)
    eot, dtype = end_of_text(tokenizer), token_dtype(tokenizer.vocab_size)
    hasher, ends, count, any_text = hashlib.sha256(), array("q"), 0, False
    pending: list[str] = []
    pending_size = 0

    def flush() -> None:
        nonlocal count, pending_size
        for ids in encode(pending):
            write(ids.astype(dtype))
            count += len(ids)
        pending.clear()
        pending_size = 0

    with _bar(total, "tokenizing", progress) as bar:
        for doc in documents(sources, cfg.text_field, bar, hasher):
            blocks = doc if isinstance(tokenizer, CharTokenizer) else cut_where_words_end(doc)
            for block in blocks:
                _check(interrupted)
                any_text = any_text or not block.isspace()
                pending.append(block)
                pending_size += len(block)
                if pending_size >= BLOCK:
                    flush()
            flush()  # the document's last tokens, before its end is written down
            if eot is not None:
                write(np.array([eot], dtype=dtype))
                count += 1
            ends.append(count)
    if not any_text or count == 0:
        what = f"data file {sources[0].path}" if len(sources) == 1 and sources[0].path else "the data"
        raise DataError(f"{what} is empty (or only spaces); it needs some text to train on")
    return count, ends, hasher.hexdigest()


def _key(cfg, sources: list[Source], tokenizer: Tokenizer | None) -> str:
    settings = ({"tokenizer": tokenizer.to_dict()} if tokenizer is not None else
                {"tokenizer": cfg.tokenizer, "bpe_vocab_size": cfg.bpe_vocab_size,
                 "sample": cfg.tokenizer_sample})
    seen = []
    for s in sources:
        if s.path is None:
            seen.append(hashlib.sha256(s.text.encode()).hexdigest())
        else:
            stat = s.path.stat()
            seen.append([str(s.path.resolve()), stat.st_size, stat.st_mtime_ns, s.jsonl])
    blob = json.dumps([FORMAT, settings, cfg.text_field, seen], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _open(folder: Path) -> Shards | None:
    """Prepared shards in folder, or None when they are missing or do not add up."""
    try:
        index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
        dtype = np.dtype(index["dtype"])
        tokens_file, ends_file = folder / "tokens.bin", folder / "ends.bin"
        if (index.get("format") != FORMAT or tokens_file.stat().st_size != index["tokens"]
                * dtype.itemsize or ends_file.stat().st_size != index["documents"] * 8):
            return None
        tokenizer = tokenizer_from_dict(index["tokenizer"])
        # copy-on-write: writable for torch, never written back; pages are shared with every
        # process mapping the same file, and read from disk only when a batch touches them
        mapped = np.memmap(tokens_file, dtype=dtype, mode="c")
        ends = np.fromfile(ends_file, dtype=np.int64)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Shards(tokenizer, torch.from_numpy(mapped), ends, index, mapped)


class _KeyLock:
    """One process prepares a key at a time: the others wait here, then use its shards."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        said = False
        while not _lock(self.fd):
            if not said:
                print(f"waiting for another process preparing the same data ({self.path})",
                      file=sys.stderr)
                said = True
            time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        _unlock(self.fd)
        os.close(self.fd)


def prepare(cfg, sources: list[Source], tokenizer: Tokenizer | None = None,
            cache: Path | None = None, progress: bool = False,
            interrupted: Callable[[], bool] = lambda: False) -> Shards:
    """The prepared shards of these sources (with cfg's tokenizer settings, or this tokenizer):
    found in cache, else made there. When cache is None, or cannot take them (unwritable, full),
    the tokens are made in memory, with a warning if the disk was full."""
    total = sum(s.size for s in sources)
    folder = None
    if cache is not None:
        folder = cache / "shards" / _key(cfg, sources, tokenizer)
        found = _open(folder)
        if found is not None:
            return found
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            lock = _KeyLock(folder.parent / f"{folder.name}.lock")
        except OSError as err:
            if is_disk_full(err):
                warnings.warn(f"{disk_full(folder)}; the tokens are kept in memory this time",
                              stacklevel=3)
            folder = None
    if folder is None:
        return _in_memory(cfg, sources, tokenizer, total, progress, interrupted)
    with lock:
        found = _open(folder)  # prepared while this process waited
        if found is not None:
            return found
        for stale in folder.parent.glob(f".{folder.name}.*.tmp"):  # left by a killed preparation
            shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)  # damaged: prepared again
        tokenizer = tokenizer or _train_tokenizer(cfg, sources, total, progress, interrupted)
        try:
            _write(cfg, sources, tokenizer, total, progress, folder, interrupted)
        except DiskFullError as err:
            warnings.warn(f"{err}; the tokens are kept in memory this time", stacklevel=3)
            return _in_memory(cfg, sources, tokenizer, total, progress, interrupted)
        shards = _open(folder)
    if shards is None:
        raise DataError(f"the prepared data in {folder} cannot be read back; remove that folder")
    return shards


def _write(cfg, sources, tokenizer, total, progress, folder: Path, interrupted) -> None:
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    current = tmp / "tokens.bin"
    try:
        with open(current, "wb") as f:
            count, ends, digest = _encode_all(cfg, sources, tokenizer, total, progress,
                                              lambda ids: f.write(ids.tobytes()), interrupted)
        current = tmp / "ends.bin"
        current.write_bytes(ends.tobytes())
        index = {"format": FORMAT, "dtype": token_dtype(tokenizer.vocab_size).str,
                 "tokens": count, "documents": len(ends), "text_sha256": digest,
                 "bytes": total, "sources": [str(s.path) if s.path else "(in memory)"
                                             for s in sources[:100]],
                 "tokenizer": tokenizer.to_dict()}
        current = tmp / "index.json"
        current.write_text(json.dumps(index), encoding="utf-8")
        os.replace(tmp, folder)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(err):
            raise disk_full(current) from None
        raise
    except BaseException:  # a bad document, Ctrl-C: nothing half-written stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _in_memory(cfg, sources, tokenizer, total, progress, interrupted) -> Shards:
    tokenizer = tokenizer or _train_tokenizer(cfg, sources, total, progress, interrupted)
    parts: list[np.ndarray] = []
    _, ends, _ = _encode_all(cfg, sources, tokenizer, total, progress, parts.append, interrupted)
    tokens = np.concatenate(parts)
    return Shards(tokenizer, torch.from_numpy(tokens), np.frombuffer(ends, dtype=np.int64))
