"""Data: reading text, clear errors, the token cache, batches, the Shakespeare download."""

import hashlib
import io
from pathlib import Path

import pytest
import torch

import minigpt.data as data_module
import minigpt.shards as shards_module
from minigpt.config import DataConfig
from minigpt.corpus import load_corpus
from minigpt.data import (
    SHAKESPEARE_SHA256,
    DataError,
    Epochs,
    download_shakespeare,
    get_batch,
    prepare_data,
    token_dtype,
)

SHARED_SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def config(tmp_path, **options) -> DataConfig:
    return DataConfig(cache_dir=str(tmp_path / "cache"), **options)


def test_embedded_corpus_splits_90_10_contiguously(tmp_path):
    data = prepare_data(config(tmp_path, tokenizer="char"), context_length=32)
    total = len(data.train) + len(data.val)
    assert len(data.val) == int(total * 0.1)
    text = data.tokenizer.decode(data.train.tolist() + data.val.tolist())
    assert text.startswith("the cat sat on the mat.")


@pytest.mark.parametrize("content,message", [
    (None, "not found"),
    (b"", "is empty"),
    (b"   \n\n", "is empty"),
    (b"caf\xe9 \xff\xfe", "is not valid UTF-8"),
])
def test_bad_files_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        prepare_data(config(tmp_path, path=str(path)), context_length=8)
    shards = tmp_path / "cache" / "shards"  # nothing prepared, nothing half-written left
    assert not shards.exists() or not [p for p in shards.iterdir() if p.is_dir()]


def test_a_directory_without_text_files(tmp_path):
    (tmp_path / "notes.py").write_text("print('not training text')")
    with pytest.raises(DataError, match="is a directory with no text files in it"):
        prepare_data(config(tmp_path, path=str(tmp_path)), context_length=8)


def test_validation_split_shorter_than_context(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("hello world, " * 20)
    with pytest.raises(DataError, match=r"validation split has 26 tokens but needs more than "
                                        r"model.context_length=64"):
        prepare_data(config(tmp_path, path=str(path), tokenizer="char"), context_length=64)


def test_second_run_reuses_the_token_cache(tmp_path, monkeypatch):
    cfg = config(tmp_path, tokenizer="bpe", bpe_vocab_size=300)
    first = prepare_data(cfg, context_length=32)

    def fail(*args, **kwargs):
        raise AssertionError("text read or tokenizer trained again despite the prepared shards")

    monkeypatch.setattr(shards_module, "train_tokenizer", fail)
    monkeypatch.setattr(shards_module, "documents", fail)
    second = prepare_data(cfg, context_length=32)
    assert torch.equal(first.train, second.train)
    assert second.tokenizer.to_dict() == first.tokenizer.to_dict()


def test_a_damaged_cache_entry_is_rebuilt(tmp_path):
    cfg = config(tmp_path, tokenizer="char")
    first = prepare_data(cfg, context_length=32).val.clone()  # its file is about to be damaged
    for entry in (tmp_path / "cache" / "shards").glob("*/tokens.bin"):
        entry.write_bytes(b"garbage")  # a size that does not add up: prepared again
    assert torch.equal(prepare_data(cfg, context_length=32).val, first)


def test_batches_are_shifted_windows_and_seeded():
    tokens = torch.arange(1000)
    x, y = get_batch(tokens, 5, 16, torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (5, 16)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    again, _ = get_batch(tokens, 5, 16, torch.Generator().manual_seed(3))
    assert torch.equal(x, again)


def test_epochs_deal_every_window_once_then_a_new_cut_and_resume_exactly():
    T, length = 8, 203
    epochs, one_by_one = Epochs(length, T, torch.Generator().manual_seed(0)), []
    for _ in range(100):  # about four epochs, a window at a time
        start = epochs.draw(1).item()
        if epochs.position == 1:  # a new epoch was dealt
            one_by_one.append((epochs.offset, []))
        one_by_one[-1][1].append(start)
    for offset, starts in one_by_one[:-1]:  # the complete ones: each window of its cut once
        assert sorted(starts) == [offset + k * T for k in range((length - offset - 1) // T)]
        assert starts != sorted(starts)  # in a shuffled order
    assert len({offset for offset, _ in one_by_one}) > 1  # cut anew
    batches = Epochs(length, T, torch.Generator().manual_seed(0))  # batches straddle epochs
    assert torch.cat([batches.draw(5) for _ in range(20)]).tolist() == [
        start for _, starts in one_by_one for start in starts]
    for stop in (0, 3, 24, 25, 26, 60):  # mid-epoch, at an epoch's end, across two epochs
        straight = Epochs(length, T, torch.Generator().manual_seed(1))
        paused = Epochs(length, T, generator := torch.Generator().manual_seed(1))
        straight.draw(stop), paused.draw(stop)
        state, generator_state = paused.state_dict(), generator.get_state()
        resumed = Epochs(length, T, generator := torch.Generator().manual_seed(99))
        resumed.load_state_dict(state)
        generator.set_state(generator_state)
        assert torch.equal(resumed.draw(70), straight.draw(70)), stop


def test_epochs_saved_with_windows_of_another_length_go_on_with_a_new_epoch():
    saved = Epochs(203, 8, torch.Generator().manual_seed(0))
    saved.draw(10)  # then train.seq_len changes on resume: 16
    resumed = Epochs(203, 16, torch.Generator().manual_seed(0))
    resumed.load_state_dict(saved.state_dict())
    starts = resumed.draw(11).tolist()
    assert len(set(starts)) == 11 and {(s - resumed.offset) % 16 for s in starts} == {0}


def test_a_split_barely_longer_than_the_context_still_makes_epochs():
    epochs = Epochs(9, 8, torch.Generator().manual_seed(0))
    assert epochs.draw(3).tolist() == [0, 0, 0]  # one window fits: offset 0 every epoch


def test_tokens_are_stored_compactly_and_batches_are_int64(tmp_path):
    assert [token_dtype(n) for n in (65, 256, 257, 32768, 32769)] == [
        torch.uint8, torch.uint8, torch.uint16, torch.uint16, torch.uint16]
    assert token_dtype(65537) == torch.int32
    cfg = DataConfig(dataset="embedded", tokenizer="char", cache_dir=str(tmp_path))
    for _ in range(2):  # tokenized, then read back from the cache
        data = prepare_data(cfg, context_length=32)
        assert data.train.dtype == data.val.dtype == torch.uint8
    x, y = get_batch(data.train, 4, 32, torch.Generator().manual_seed(0))
    assert x.dtype == y.dtype == torch.int64
    text = data.tokenizer.decode(x[0].tolist())
    assert text in load_corpus()


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_shakespeare_offline_fails_with_one_clear_line(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(data_module.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match=r"could not download Tiny Shakespeare.*--data.path FILE"):
        prepare_data(config(tmp_path, dataset="shakespeare"), context_length=64)
    assert not any((tmp_path / "cache").glob("*.txt"))


def test_shakespeare_download_with_wrong_checksum_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module.urllib.request, "urlopen",
                        lambda *a, **k: FakeResponse(b"not shakespeare"))
    with pytest.raises(DataError, match="expected 86c4e6aa"):
        download_shakespeare(tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not SHARED_SHAKESPEARE.is_file(), reason="no local Tiny Shakespeare copy")
def test_shakespeare_download_verified_and_cached(tmp_path, monkeypatch):
    payload = SHARED_SHAKESPEARE.read_bytes()
    assert hashlib.sha256(payload).hexdigest() == SHAKESPEARE_SHA256
    calls = []

    def serve(*args, **kwargs):
        calls.append(args)
        return FakeResponse(payload)

    monkeypatch.setattr(data_module.urllib.request, "urlopen", serve)
    path = download_shakespeare(tmp_path)
    assert path.read_bytes() == payload
    download_shakespeare(tmp_path)  # second use: from the cache
    assert len(calls) == 1


@pytest.mark.skipif(not SHARED_SHAKESPEARE.is_file(), reason="no local Tiny Shakespeare copy")
def test_shakespeare_from_a_local_path(tmp_path):
    data = prepare_data(config(tmp_path, path=str(SHARED_SHAKESPEARE), tokenizer="char"), 256)
    assert data.tokenizer.vocab_size == 65
    assert len(data.train) + len(data.val) == 1_115_394
