"""Data: text -> prepared token shards -> train/val split -> random batches.

    data = prepare_data(cfg.data, context_length)    # tokenizer + train/val token tensors
    x, y = get_batch(data.train, batch_size, context_length, generator)   # (B, T) each
    epochs = Epochs(len(data.train), context_length, generator)  # data.sampling = "epochs"
    x, y = get_batch(data.train, batch_size, context_length, starts=epochs.draw(batch_size))

The text is tokenized once into shards in the cache (minigpt.shards), which later runs map into
memory without reading the text again: a corpus of any size starts in about the same time and
memory as the embedded one.
"""

import hashlib
import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from minigpt import encoders, shards
from minigpt.config import DataConfig
from minigpt.corpus import load_corpus, with_repeats
from minigpt.errors import DataError
from minigpt.files import atomic_write
from minigpt.sources import Source, find_sources, read_text_file
from minigpt.tokenizer import Tokenizer

SHAKESPEARE_URL = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                   "tinyshakespeare/input.txt")
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


@dataclass
class Dataset:
    tokenizer: Tokenizer
    train: torch.Tensor  # (N_train,) token ids, in the smallest integer dtype that holds them
    val: torch.Tensor  # (N_val,)
    source: str  # where the text came from, for the log
    # release(tokens, starts, length) unmaps the pages of the token file that reading these
    # windows mapped in (Shards.release): memory stays flat however big the corpus
    release: Callable[[torch.Tensor, torch.Tensor, int], None] = lambda *window: None


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
    """A UTF-8 text file's whole contents with "\\n" line ends, or a DataError saying what is
    wrong (for files known to be small; training data goes through minigpt.shards)."""
    sources = find_sources(str(path))
    if len(sources) != 1 or sources[0].jsonl or Path(path).is_dir():
        raise DataError(f"data path {path} is not one text file; pass a UTF-8 text file")
    text = "".join(read_text_file(sources[0].path, tqdm(disable=True), hashlib.sha256()))
    if not text.strip():
        raise DataError(f"data file {path} is empty; it needs some text to train on")
    return text


def data_sources(cfg: DataConfig) -> tuple[list[Source], str]:
    """(what to read, a description of it for the log) for the data config."""
    if cfg.path:
        sources = find_sources(cfg.path)
        return sources, cfg.path if len(sources) == 1 else f"{cfg.path} ({len(sources)} files)"
    if cfg.dataset == "shakespeare":
        path = download_shakespeare(cache_dir(cfg))
        return [Source(path)], f"shakespeare ({path})"
    if cfg.dataset == "repeats":
        return ([Source(text=with_repeats(load_corpus()))],
                "embedded corpus with repeated word lists")
    return [Source(text=load_corpus())], "embedded corpus"


def prepare_data(cfg: DataConfig, context_length: int, tokenizer: Tokenizer | None = None,
                 progress: bool = False, interrupted=lambda: False) -> Dataset:
    """The configured text as prepared shards (made on first use, with a progress bar when
    progress is set and the text is large), split into train and val. With tokenizer (a resumed
    or fine-tuned run's own), the text is encoded with it instead of a tokenizer trained on it.
    interrupted() is asked between blocks of text: once true, preparing stops (Interrupted)."""
    sources, source = data_sources(cfg)  # an unwritable cache only costs time: shards.prepare
    prepared = shards.prepare(cfg, sources, tokenizer, cache_dir(cfg), progress, interrupted)
    train, val = prepared.split(cfg.val_fraction)
    for split, part in (("validation", val), ("training", train)):
        if len(part) <= context_length:
            raise DataError(
                f"the {split} split has {len(part)} tokens but needs more than "
                f"model.context_length={context_length}; use a longer text, a smaller "
                f"model.context_length or a different data.val_fraction")
    return Dataset(prepared.tokenizer, train, val, source, prepared.release)


def token_dtype(vocab_size: int) -> torch.dtype:
    """The torch dtype of prepared tokens (minigpt.encoders.token_dtype): uint8, uint16 or int32;
    batches are widened to int64 when drawn."""
    return getattr(torch, encoders.token_dtype(vocab_size).name)


def get_batch(tokens: torch.Tensor, batch_size: int, context_length: int,
              generator: torch.Generator | None = None, release=None,
              starts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """batch_size windows of tokens, at random (with replacement, as nanoGPT draws them) or at
    the given starts: inputs x and next-token targets y, (B, T) each, int64 whatever the dtype
    of tokens. release: a Dataset's, to unmap what the reads mapped."""
    if starts is None:
        starts = torch.randint(len(tokens) - context_length, (batch_size,), generator=generator)
    windows = tokens[starts[:, None] + torch.arange(context_length + 1)].long()  # (B, T + 1)
    if release is not None:
        release(tokens, starts, context_length + 1)
    return windows[:, :-1], windows[:, 1:]


class Epochs:
    """Where training windows start when data.sampling is "epochs": each epoch cuts the split at
    a random offset into non-overlapping windows of context_length (each reads one token more,
    its last target) and deals them out in a random order, so every token is trained on once an
    epoch (but for the fewer than context_length at each end that the cut leaves out). Random
    windows (get_batch's default) repeat some text and miss other text in the same number of
    tokens; on Tiny Shakespeare, epochs reached a lower val loss in the same steps
    (configs/shakespeare_char_long.toml).

    An epoch's order takes 4 bytes a window (100 MB for 1.6 G tokens at context 64). Its state is
    the generator's state at the epoch's start and the windows dealt since: load_state_dict deals
    the same epoch again and goes on from there (exact resume).
    """

    def __init__(self, length: int, context_length: int, generator: torch.Generator):
        self.length, self.T, self.generator = length, context_length, generator
        self.order, self.position, self.offset, self.epoch_state = torch.empty(0), 0, 0, None

    def _deal(self) -> None:
        """A new epoch: a random offset (one that leaves a whole window), then the numbers of
        its windows in a random order."""
        self.epoch_state, self.position = self.generator.get_state(), 0
        self.offset = int(torch.randint(min(self.T, self.length - self.T), (1,),
                                        generator=self.generator))
        count = (self.length - self.offset - 1) // self.T
        dtype = torch.int32 if count < 2 ** 31 else torch.int64
        self.order = torch.randperm(count, generator=self.generator, dtype=dtype)

    def draw(self, n: int) -> torch.Tensor:
        """The starts of the next n windows, crossing into new epochs as they run out."""
        parts = [torch.empty(0, dtype=torch.long)]
        while n > 0:
            if self.position == len(self.order):
                self._deal()
            part = self.order[self.position:self.position + n]
            self.position += len(part)
            n -= len(part)
            parts.append(self.offset + self.T * part.long())
        return torch.cat(parts)

    def state_dict(self) -> dict:
        return {"epoch_state": self.epoch_state, "position": self.position, "length": self.T}

    def load_state_dict(self, state: dict) -> None:
        """The epoch saved, dealt again; a new one at the next draw when it was saved before its
        first draw or with windows of another length (train.seq_len changed on resume)."""
        if (state["epoch_state"] is None and state["position"] == 0
                or state["length"] != self.T):
            self.order, self.position, self.epoch_state = self.order[:0], 0, None
            return
        self.generator.set_state(state["epoch_state"])
        self._deal()
        position = state["position"]
        if isinstance(position, bool) or not isinstance(position, int) or not (
                0 <= position <= len(self.order)):
            raise ValueError(f"epoch position {position!r} not in [0, {len(self.order)}]")
        self.position = position
