"""Prepared token shards: text of any size, tokenized once in bounded memory into a token file
that training reads through a memory map, never all into RAM.

    sources, _ = data_sources(cfg.data)              # minigpt.data: what to read
    shards = prepare(cfg.data, sources, cache=Path("cache"), progress=True)  # found, or made
    shards.tokens                                    # (N,) tensor over the mapped file
    train, val = shards.split(0.1)                   # at a document's end where it can

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

The key is made from the tokenizer settings and each source's path, size, times and inode (the
embedded corpus: its text), so finding prepared shards reads no text; a changed file gets new ones.
One process prepares a key at a time (a lock file beside it); the others wait and then share them.
"""

import errno
import hashlib
import itertools
import json
import mmap
import os
import shutil
import socket
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

from minigpt.encoders import encoder, end_of_text, token_dtype
from minigpt.errors import DataError, DiskFullError, Interrupted
from minigpt.files import disk_full, is_disk_full
from minigpt.lock import _lock, _unlock
from minigpt.sources import BLOCK, Source, cut_where_words_end, documents
from minigpt.tokenizer import (
    CharTokenizer,
    Tokenizer,
    tokenizer_from_dict,
    train_tokenizer,
)

FORMAT = 1  # of the folder's layout; a new one prepares anew
# The largest page-cache folio the kernel maps around a read (a PMD: 2 MB with 4 kB pages, 512 MB
# with 64 kB pages), what Shards.release unmaps around each window.
FOLIO = mmap.PAGESIZE ** 2 // 8
SHOW_PROGRESS = 16 << 20  # bytes of text from which preparing shows a progress bar


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
        folios = {f for start in starts.tolist()
                  for f in range((offset + start) * size // FOLIO,
                                 (offset + start + length) * size // FOLIO + 1)}
        for folio in sorted(folios):
            first = folio * FOLIO
            self.mapped._mmap.madvise(mmap.MADV_DONTNEED, first,
                                      min(first + FOLIO, end_of_file) - first)

    def split(self, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, val): the last val_fraction of the tokens, moved to the nearest document end
        so that no document is cut, unless that end would leave val under half or over twice
        its share (documents too few or too uneven); one document: its last tokens, as minigpt
        always split."""
        n = len(self.tokens)
        target = int(n * val_fraction)
        inner = self.ends[(self.ends > 0) & (self.ends < n)]  # ends that leave train and val
        cut = n - target
        if len(inner):
            nearest = int(inner[np.abs(inner - cut).argmin()])
            if target / 2 <= n - nearest <= 2 * target:
                cut = nearest
        return self.tokens[:cut], self.tokens[cut:]


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
        blocks = itertools.chain.from_iterable(  # the documents' text, "\n" between them
            itertools.chain(["\n"] if i else [], doc) for i, doc in enumerate(docs))
        sample, size = [], 0
        for block in blocks:
            sample.append(block)
            size += len(block)
            if size >= cfg.tokenizer_sample:
                break
        return train_tokenizer(cfg.tokenizer, "".join(sample)[:max(cfg.tokenizer_sample, 1)],
                               cfg.bpe_vocab_size)


def _encode_all(cfg, sources: list[Source], tokenizer: Tokenizer, total: int, progress: bool,
                write: Callable[[np.ndarray], object], interrupted) -> tuple[int, array, str]:
    """Encode every document, passing each block's ids to write; (tokens, document ends, SHA-256
    of the text)."""
    encode, _ = encoder(tokenizer)
    eot, dtype = end_of_text(tokenizer), token_dtype(tokenizer.vocab_size)
    hasher, ends, count, any_text = hashlib.sha256(), array("q"), 0, False
    pending: list[str] = []  # blocks of text, many documents' at a time: one batch to encode
    closing: list[bool] = []  # whether each block ends its document ("" marks the end)
    pending_size = 0

    def flush() -> None:
        nonlocal count, pending_size
        for ids, last in zip(encode(pending), closing):
            write(ids.astype(dtype))
            count += len(ids)
            if last:
                if eot is not None:
                    write(np.array([eot], dtype=dtype))
                    count += 1
                ends.append(count)
        pending.clear()
        closing.clear()
        pending_size = 0

    with _bar(total, "tokenizing", progress) as bar:
        for doc in documents(sources, cfg.text_field, bar, hasher):
            blocks = doc if isinstance(tokenizer, CharTokenizer) else cut_where_words_end(doc)
            for block in itertools.chain(blocks, [""]):  # "": the document's end
                _check(interrupted)
                any_text = any_text or (bool(block) and not block.isspace())
                pending.append(block)
                closing.append(not block)
                pending_size += len(block) + 64  # a short document costs a call as well
                if pending_size >= BLOCK:
                    flush()
        flush()
    if not any_text or count == 0:
        what = f"data file {sources[0].path}" if len(sources) == 1 and sources[0].path else "the data"
        raise DataError(f"{what} is empty (or only spaces); it needs some text to train on")
    return count, ends, hasher.hexdigest()


def _key(cfg, sources: list[Source], tokenizer: Tokenizer | None) -> str:
    """The shards' folder name: the tokenizer (or the settings that train one) and each source's
    real path, size, modification and change times and inode (the embedded corpus: its text's
    hash). An edited file changes them, so stale shards are not reused; reading no text."""
    if tokenizer is not None:
        settings = {"tokenizer": tokenizer.to_dict()}
    else:
        settings = {"tokenizer": cfg.tokenizer, "sample": cfg.tokenizer_sample
                    if cfg.tokenizer != "char" else None,
                    "bpe_vocab_size": cfg.bpe_vocab_size if cfg.tokenizer == "bpe" else None}
    seen = []
    for s in sources:
        if s.path is None:
            seen.append(hashlib.sha256(s.text.encode()).hexdigest())
        else:
            stat = s.stat()
            seen.append([str(s.path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns,
                         stat.st_ino, cfg.text_field if s.jsonl else None])
    blob = json.dumps([FORMAT, settings, seen], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class _Damaged(Exception):
    """A shards folder whose files do not add up: prepared again."""


def _open(folder: Path) -> Shards | None:
    """Prepared shards in folder; None when there are none; _Damaged when they do not add up.
    Other OSErrors (no permission, too many open files) pass: they are not damage."""
    if not (folder / "index.json").is_file():
        return None
    try:
        index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
        dtype = np.dtype(index["dtype"])
        tokens_file, ends_file = folder / "tokens.bin", folder / "ends.bin"
        if (index.get("format") != FORMAT or tokens_file.stat().st_size != index["tokens"]
                * dtype.itemsize or ends_file.stat().st_size != index["documents"] * 8):
            raise _Damaged
        tokenizer = tokenizer_from_dict(index["tokenizer"])
        # copy-on-write: writable for torch, never written back; pages are shared with every
        # process mapping the same file, and read from disk only when a batch touches them
        mapped = np.memmap(tokens_file, dtype=dtype, mode="c")
        ends = np.fromfile(ends_file, dtype=np.int64)
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        raise _Damaged from None
    return Shards(tokenizer, torch.from_numpy(mapped), ends, index, mapped)


class _KeyLock:
    """One process prepares a key at a time: the others wait here, then use its shards."""

    def __init__(self, path: Path, interrupted: Callable[[], bool]):
        self.path, self.fd, self.interrupted = path, None, interrupted

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        said = False
        while not _lock(self.fd):
            if not said:
                print(f"waiting for another process preparing the same data ({self.path})",
                      file=sys.stderr)
                said = True
            _check(self.interrupted)
            time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        _unlock(self.fd)
        os.close(self.fd)


def prepare(cfg, sources: list[Source], tokenizer: Tokenizer | None = None,
            cache: Path | None = None, progress: bool = False,
            interrupted: Callable[[], bool] = lambda: False) -> Shards:
    """The prepared shards of these sources (with cfg's tokenizer settings, or this tokenizer):
    found in cache, else made there. When cache is None, or cannot take them (unwritable, full,
    without file locks), the tokens are made in memory, with a warning saying why."""
    total = sum(s.size for s in sources)
    if cache is None:
        return _in_memory(cfg, sources, tokenizer, total, progress, interrupted)
    root = cache / "shards"
    folder = root / _key(cfg, sources, tokenizer)
    try:
        found = _find(cfg, sources, tokenizer, root, folder)
        if found is not None:
            return found
        root.mkdir(parents=True, exist_ok=True)
        with _KeyLock(root / f"{folder.name}.lock", interrupted):
            try:
                found = _open(folder)  # prepared while this process waited
            except _Damaged:
                shutil.rmtree(folder, ignore_errors=True)  # a process mapping it keeps its map
            if found is not None:
                return found
            _remove_leftovers(folder)
            tokenizer = tokenizer or _train_tokenizer(cfg, sources, total, progress, interrupted)
            return _write(cfg, sources, tokenizer, total, progress, folder, interrupted)
    except (OSError, DiskFullError) as err:
        why = str(err) if isinstance(err, DiskFullError) else (
            f"cannot prepare token shards in {root}: {err.strerror or err}")
        warnings.warn(f"{why}; the tokens are kept in memory this time (set --data.cache_dir to "
                      "a writable folder with room to keep them)", stacklevel=3)
        return _in_memory(cfg, sources, tokenizer, total, progress, interrupted)


def _find(cfg, sources, tokenizer, root: Path, folder: Path) -> Shards | None:
    """Shards already prepared: this key's, or for a run's own tokenizer (resuming, evaluating)
    the ones its first start prepared under the tokenizer settings, when they hold its tokenizer."""
    keys = [folder] + ([root / _key(cfg, sources, None)] if tokenizer is not None else [])
    for candidate in keys:
        try:
            found = _open(candidate)
        except _Damaged:
            continue
        if found is not None and (tokenizer is None
                                  or found.tokenizer.to_dict() == tokenizer.to_dict()):
            return found
    return None


def _remove_leftovers(folder: Path) -> None:
    """.tmp folders of this key that a killed preparation on this host left (with the key's lock
    held, no live one is here); another host's are left alone, as its lock may not reach here."""
    host, start = socket.gethostname(), len(f".{folder.name}.")
    for stale in folder.parent.glob(f".{folder.name}.*.tmp"):  # .KEY.HOST-PID.RANDOM.tmp
        if stale.name[start:].rsplit(".", 2)[0].rsplit("-", 1)[0] == host:
            shutil.rmtree(stale, ignore_errors=True)


def _write(cfg, sources, tokenizer, total, progress, folder: Path, interrupted) -> Shards:
    prefix = f".{folder.name}.{socket.gethostname()}-{os.getpid()}."
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=prefix, suffix=".tmp"))
    current = tmp / "tokens.bin"
    try:
        with open(current, "wb") as f:
            count, ends, digest = _encode_all(cfg, sources, tokenizer, total, progress,
                                              lambda ids: f.write(ids.tobytes()), interrupted)
            f.flush()
            os.fsync(f.fileno())  # whole on disk before the rename makes it visible
        index = {"format": FORMAT, "dtype": token_dtype(tokenizer.vocab_size).str,
                 "tokens": count, "documents": len(ends), "text_sha256": digest,
                 "bytes": total, "sources": [str(s.path) if s.path else "(in memory)"
                                             for s in sources[:100]],
                 "tokenizer": tokenizer.to_dict()}
        for current, blob in ((tmp / "ends.bin", ends.tobytes()),
                              (tmp / "index.json", json.dumps(index).encode())):
            with open(current, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
        try:
            os.replace(tmp, folder)
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first: its shards
        return _open(folder)
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
