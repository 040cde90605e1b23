"""Data: text -> token tensor -> train/val split -> random batches.

    data = prepare_data(cfg.data, context_length)    # tokenizer + train/val token tensors
    x, y = get_batch(data.train, batch_size, context_length, generator)   # (B, T) each

Tokenized corpora are cached (keyed by a hash of the text and the tokenizer settings), so a second
run on the same text skips tokenization and, for bpe, tokenizer training.
"""

import hashlib
import io
import json
import os
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from minigpt.config import DataConfig
from minigpt.corpus import load_corpus, with_repeats
from minigpt.errors import DataError, DiskFullError
from minigpt.files import atomic_write
from minigpt.tokenizer import Tokenizer, tokenizer_from_dict, train_tokenizer

SHAKESPEARE_URL = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                   "tinyshakespeare/input.txt")
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


@dataclass
class Dataset:
    tokenizer: Tokenizer
    train: torch.Tensor  # (N_train,) token ids, in the smallest integer dtype that holds them
    val: torch.Tensor  # (N_val,)
    source: str  # where the text came from, for the log


def cache_dir(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir or os.environ.get("MINIGPT_CACHE")
                or Path.home() / ".cache" / "minigpt")


def download_shakespeare(directory: Path, url: str = SHAKESPEARE_URL) -> Path:
    """Tiny Shakespeare in directory, downloaded once and checked against its SHA-256."""
    path = directory / "tinyshakespeare.txt"
    if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == SHAKESPEARE_SHA256:
        return path
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            payload = response.read()
    except OSError as err:
        raise DataError(f"could not download Tiny Shakespeare from {url} ({err}); offline, pass "
                        f"a local copy with --data.path FILE") from None
    digest = hashlib.sha256(payload).hexdigest()
    if digest != SHAKESPEARE_SHA256:
        raise DataError(f"downloaded Tiny Shakespeare has SHA-256 {digest}, expected "
                        f"{SHAKESPEARE_SHA256}; pass a trusted local copy with --data.path FILE")
    try:
        atomic_write(path, lambda f: f.write(payload))
    except OSError as err:
        raise DataError(f"could not store Tiny Shakespeare in {directory} ({err.strerror or err}); "
                        f"choose a writable --data.cache_dir") from None
    return path


def read_text(path: str | Path) -> str:
    """A UTF-8 text file's contents with "\\n" line ends, or a DataError saying what is wrong."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"data path {path} is a directory; pass a UTF-8 text file")
    if path.exists() and not path.is_file():
        raise DataError(f"data path {path} is not a regular file; pass a UTF-8 text file")
    if not path.is_file():
        raise DataError(f"data file {path} not found; check --data.path")
    try:
        text = path.read_bytes().decode("utf-8").replace("\r\n", "\n")  # Windows line ends
    except OSError as err:
        raise DataError(f"data file {path} cannot be read: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"data file {path} is not valid UTF-8 text (byte {err.start}); "
                        f"convert it to UTF-8 first") from None
    if not text.strip():
        raise DataError(f"data file {path} is empty; it needs some text to train on")
    return text


def load_text(cfg: DataConfig) -> tuple[str, str]:
    """(text, description of its source) for the data config."""
    if cfg.path:
        return read_text(cfg.path), cfg.path
    if cfg.dataset == "shakespeare":
        path = download_shakespeare(cache_dir(cfg))
        return read_text(path), f"shakespeare ({path})"
    if cfg.dataset == "repeats":
        return with_repeats(load_corpus()), "embedded corpus with repeated word lists"
    return load_corpus(), "embedded corpus"


def prepare_data(cfg: DataConfig, context_length: int, tokenizer: Tokenizer | None = None) -> Dataset:
    """Tokenize the configured text (or reuse the cached result) and split it into train/val.
    With tokenizer (a resumed or fine-tuned run's own), the text is encoded with it instead of a
    tokenizer trained on it."""
    text, source = load_text(cfg)
    settings = ({"tokenizer": tokenizer.to_dict()} if tokenizer is not None else
                {"tokenizer": cfg.tokenizer, "bpe_vocab_size": cfg.bpe_vocab_size,
                 "bpe_split": "gpt2"})  # caches of earlier versions split BPE text otherwise
    key = hashlib.sha256(text.encode() + json.dumps(settings).encode()).hexdigest()[:20]
    cache_file = cache_dir(cfg) / "tokens" / f"{key}.pt"
    cached = _read_token_cache(cache_file)
    if cached is not None:
        tokenizer, tokens = cached
        tokens = tokens.to(token_dtype(tokenizer.vocab_size))  # caches from older versions: int64
    else:
        tokenizer = tokenizer or train_tokenizer(cfg.tokenizer, text, cfg.bpe_vocab_size)
        tokens = torch.tensor(tokenizer.encode(text), dtype=token_dtype(tokenizer.vocab_size))
        _write_token_cache(cache_file, tokenizer, tokens)
    n_val = int(len(tokens) * cfg.val_fraction)
    train, val = tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val:]
    for split, part in (("validation", val), ("training", train)):
        if len(part) <= context_length:
            raise DataError(
                f"the {split} split has {len(part)} tokens but needs more than "
                f"model.context_length={context_length}; use a longer text, a smaller "
                f"model.context_length or a different data.val_fraction")
    return Dataset(tokenizer, train, val, source)


def _read_token_cache(path: Path):
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, weights_only=True)
        return tokenizer_from_dict(blob["tokenizer"]), blob["tokens"]
    except Exception:  # a damaged cache entry is rebuilt, never trusted
        return None


def _write_token_cache(path: Path, tokenizer: Tokenizer, tokens: torch.Tensor) -> None:
    buffer = io.BytesIO()
    torch.save({"tokenizer": tokenizer.to_dict(), "tokens": tokens}, buffer)
    try:
        atomic_write(path, lambda f: f.write(buffer.getvalue()))
    except OSError:
        pass  # the cache only saves time; an unwritable cache directory is not an error
    except DiskFullError as err:  # but a full one is worth saying: the runs may be there too
        warnings.warn(f"{err}; the tokens are not cached, so the next run tokenizes again",
                      stacklevel=3)


def token_dtype(vocab_size: int) -> torch.dtype:
    """The smallest integer dtype holding ids below vocab_size: a character corpus stored as
    uint8 takes an eighth of the memory of int64; batches are widened to int64 when drawn."""
    for dtype in (torch.uint8, torch.int16, torch.int32):
        if vocab_size - 1 <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


def get_batch(tokens: torch.Tensor, batch_size: int, context_length: int,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """batch_size random windows of tokens: inputs x and next-token targets y, (B, T) each,
    int64 whatever the dtype of tokens."""
    starts = torch.randint(len(tokens) - context_length, (batch_size,), generator=generator)
    windows = tokens[starts[:, None] + torch.arange(context_length + 1)].long()  # (B, T + 1)
    return windows[:, :-1], windows[:, 1:]
