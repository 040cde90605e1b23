"""Prepared token shards: the fast encoders give the reference tokenizers' ids, text is read from
files, directories, globs and JSON lines in blocks without changing a token, the val split keeps
documents whole, the shards are memory-mapped and shared, and bad or interrupted input keeps
nothing half-written."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import minigpt.encoders as encoders
import minigpt.shards as shards
import minigpt.sources as sources
from minigpt.config import DataConfig
from minigpt.corpus import load_corpus
from minigpt.data import prepare_data
from minigpt.errors import DataError, Interrupted
from minigpt.tokenizer import BPETokenizer, CharTokenizer, UnknownCharactersError, WordTokenizer

ROOT = Path(__file__).resolve().parents[1]
MIXED = ("Héllo wörld! It's 2026… 東京タワーは333m。 Ελληνικά, русский, العربية, हिन्दी 😀👍🏽 "
         "½ Ⅻ ²\t\n\n  don't WE'LL they've  ‘quotes’ «guillemets» naïve café—dash 3.14159 "
         "1,000,000 $5 #tag @user e-mail_address x²+y² ≤ z 🧑‍🚀🇫🇷 \r\n")
TEXT = load_corpus()[:40_000] + MIXED


def config(tmp_path, **options) -> DataConfig:
    return DataConfig(cache_dir=str(tmp_path / "cache"), **options)


def folders(tmp_path) -> list[Path]:
    """The prepared shards and leftovers (.tmp folders) in the cache."""
    root = tmp_path / "cache" / "shards"
    return [p for p in root.iterdir() if p.is_dir()] if root.exists() else []


@pytest.fixture(scope="module")
def gpt2_style(tmp_path_factory):
    """A BPE numbered as GPT-2's files number it, with <|endoftext|>, read from those files."""
    pytest.importorskip("transformers")
    from test_gpt2 import write_tokenizer_files

    from minigpt.gpt2 import gpt2_tokenizer

    directory = tmp_path_factory.mktemp("gpt2-files")
    write_tokenizer_files(BPETokenizer.train(TEXT, 330), directory)
    return gpt2_tokenizer(directory)


def test_fast_encoders_give_the_reference_ids(gpt2_style):
    tokenizers = [CharTokenizer.train(TEXT + "Tabs"), WordTokenizer.train(TEXT),
                  BPETokenizer.train(TEXT, 330), gpt2_style]
    for tok in tokenizers:
        encode, how = encoders.encoder(tok)
        for text in (TEXT, MIXED, "  leading spaces\nand\tTabs  ", "😀", ""):
            assert encode([text])[0].tolist() == tok.encode(text), (tok.kind, how, text[:40])
    _, how = encoders.encoder(tokenizers[2])
    if encoders._tiktoken(tokenizers[2]) is not None:
        assert how.startswith("tiktoken")
    with pytest.raises(UnknownCharactersError):
        encoders.encoder(CharTokenizer("abc"))[0](["abd"])


def test_blocks_cut_where_words_end_keep_every_token(tmp_path, monkeypatch, gpt2_style):
    """Read 4 kB at a time, the text tokenizes exactly as it does whole."""
    monkeypatch.setattr(sources, "BLOCK", 4096)
    monkeypatch.setattr(shards, "BLOCK", 4096)
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT * 3, encoding="utf-8")
    whole = (TEXT * 3).replace("\r\n", "\n")
    for kind in ("char", "word", "bpe"):
        data = prepare_data(config(tmp_path, path=str(path), tokenizer=kind, bpe_vocab_size=300),
                            context_length=16)
        ids = torch.cat([data.train, data.val]).tolist()
        assert ids == data.tokenizer.encode(whole), kind
    tokens = shards.prepare(config(tmp_path), [sources.Source(path)], gpt2_style,
                            tmp_path / "cache").tokens
    assert tokens.tolist() == gpt2_style.encode(whole) + [gpt2_style.special["<|endoftext|>"]]


def write_folder(folder: Path) -> None:
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("the cat sat on the mat. " * 200)
    (folder / "sub" / "b.md").write_text("the dog ran to the park. " * 100)
    records = [{"id": i, "text": f"a story number {i}. " * 40} for i in range(3)]
    (folder / "c.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    (folder / ".hidden.txt").write_text("never read " * 50)
    (folder / "notes.py").write_text("print('not text to train on')")


def test_a_directory_of_text_and_json_lines_is_one_document_a_file_or_line(tmp_path, gpt2_style):
    write_folder(tmp_path / "data")
    found = sources.find_sources(str(tmp_path / "data"))
    assert [s.path.name for s in found] == ["a.txt", "c.jsonl", "b.md"]  # path order
    prepared = shards.prepare(config(tmp_path), found, gpt2_style, tmp_path / "cache")
    assert len(prepared.ends) == 5  # a.txt, 3 lines of c.jsonl, b.md
    eot = gpt2_style.special["<|endoftext|>"]
    tokens = prepared.tokens.tolist()
    assert [i + 1 for i, t in enumerate(tokens) if t == eot] == prepared.ends.tolist()
    for fraction in (0.3, 0.5):  # a document's end within twice the share: the split is there
        train, val = prepared.split(fraction)
        assert len(train) in prepared.ends.tolist() and len(val) > 0
    train, val = prepared.split(0.05)  # the last document is over twice 5%: cut inside it
    assert len(val) == int(len(tokens) * 0.05)
    glob = shards.prepare(config(tmp_path), sources.find_sources(str(tmp_path / "data" / "*.txt")),
                          gpt2_style, tmp_path / "cache")
    assert len(glob.ends) == 1


@pytest.mark.parametrize("files,message", [
    ({"c.jsonl": '{"body": "some text"}\n'}, r"line 1 has no 'text' field \(its fields: body\); "
                                             r"name the field holding the text with --data.text_field"),
    ({"c.jsonl": '{"text": "fine"}\nnot json\n'}, "line 2 is not valid JSON"),
    ({"c.jsonl": '{"text": 42}\n'}, "field 'text' is int, not text"),
    ({"a.txt": "good text " * 50, "b.txt": b"caf\xe9 au lait"},
     r"b.txt is not valid UTF-8 text \(byte 3\)"),
    ({"a.txt": b"text\x00\x01\x02binary"}, "holds NUL bytes, so it is not text"),
    ({"a.txt": "   \n\n  "}, "is empty"),
    ({"notes.py": "x = 1"}, "is a directory with no text files in it"),
])
def test_bad_data_is_one_line_and_leaves_nothing(tmp_path, files, message):
    folder = tmp_path / "data"
    folder.mkdir()
    for name, content in files.items():
        target = folder / name
        target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    with pytest.raises(DataError, match=message):
        prepare_data(config(tmp_path, path=str(folder), tokenizer="char"), context_length=8)
    assert folders(tmp_path) == []


def test_an_interrupted_preparation_keeps_nothing_and_the_next_one_prepares(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "BLOCK", 4096)
    path = tmp_path / "corpus.txt"
    path.write_text(load_corpus())
    asked = []

    def interrupted() -> bool:
        asked.append(1)
        return len(asked) > 5

    cfg = config(tmp_path, path=str(path), tokenizer="word")
    with pytest.raises(Interrupted, match="nothing half-written was kept"):
        prepare_data(cfg, 16, interrupted=interrupted)
    assert folders(tmp_path) == []
    data = prepare_data(cfg, 16)
    assert len(data.train) + len(data.val) == len(data.tokenizer.encode(load_corpus()))


def mapped_files() -> str:
    return Path("/proc/self/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
def test_prepared_tokens_are_memory_mapped_and_two_runs_share_them(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(load_corpus())
    first = prepare_data(config(tmp_path, path=str(path), tokenizer="char"), 16)
    second = prepare_data(config(tmp_path, path=str(path), tokenizer="char"), 16)
    [folder] = folders(tmp_path)
    assert str(folder / "tokens.bin") in mapped_files()  # not read into memory
    assert first.train.data_ptr() != second.train.data_ptr()  # two maps of one file
    assert torch.equal(first.val, second.val)


def test_two_processes_preparing_the_same_data_prepare_it_once(tmp_path, monkeypatch):
    path = tmp_path / "corpus.txt"
    path.write_text(load_corpus())
    trained = []
    real = shards.train_tokenizer
    monkeypatch.setattr(shards, "train_tokenizer", lambda *a: trained.append(1) or real(*a))
    results = []
    cfg = config(tmp_path, path=str(path), tokenizer="word")
    threads = [threading.Thread(target=lambda: results.append(prepare_data(cfg, 16)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(trained) == 1 and len(folders(tmp_path)) == 1
    assert torch.equal(results[0].train, results[1].train)


@pytest.mark.slow
def test_a_preparation_killed_with_sigkill_is_redone_and_its_leftovers_removed(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text(load_corpus() * 60)  # about 18 MB: a few seconds to prepare with words
    cache = tmp_path / "cache"
    command = [sys.executable, str(ROOT / "train.py"), "--prepare-only", "--quiet",
               "--data.path", str(path), "--data.tokenizer", "word",
               "--data.cache_dir", str(cache)]
    process = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not list((cache / "shards").glob(".*.tmp/tokens.bin")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert [p.name.endswith(".tmp") for p in folders(tmp_path)] == [True]  # only the leftover
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [p.name.endswith(".tmp") for p in folders(tmp_path)] == [False]
    index = json.loads(next(f for f in folders(tmp_path)).joinpath("index.json").read_text())
    assert index["documents"] == 1 and index["tokens"] > 1_000_000
    assert os.path.getsize(next(folders(tmp_path)[0].glob("tokens.bin"))) == index["tokens"]


@pytest.mark.slow
def test_ctrl_c_while_preparing_is_one_line_and_exit_130(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text(load_corpus() * 60)
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "--data.path", str(path), "--quiet",
         "--data.tokenizer", "word", "--data.cache_dir", str(tmp_path / "cache"),
         "--train.out_dir", str(tmp_path / "runs")], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list((tmp_path / "cache" / "shards").glob(".*.tmp/tokens.bin")) \
            and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err.strip().splitlines()[-1] == ("interrupted: preparing the data stopped; nothing "
                                            "half-written was kept, and the next run prepares it "
                                            "again")
    assert folders(tmp_path) == []
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def rss_file_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("RssFile:")[1].split()[0]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc/self/status")
def test_batches_unmap_what_they_read_so_memory_stays_flat(tmp_path):
    """The kernel maps 64 kB to 2 MB of a file around every read: 300 windows of a 32 MB token file
    would leave much of it resident; released as they are read, almost none stays."""
    from minigpt.data import get_batch

    path = tmp_path / "corpus.txt"
    path.write_bytes(np.random.default_rng(0).integers(97, 123, 32 << 20, dtype=np.uint8))
    data = prepare_data(config(tmp_path, path=str(path), tokenizer="char"), 16)
    generator = torch.Generator().manual_seed(0)
    before = rss_file_mb()
    for _ in range(25):
        get_batch(data.train, 12, 64, generator, data.release)
    assert rss_file_mb() - before < 8
    for _ in range(25):
        get_batch(data.train, 12, 64, generator)
    assert rss_file_mb() - before > 8  # what the release saves


def test_the_val_split_stays_near_its_share_when_documents_are_uneven(tmp_path):
    """An 11-token document before a 44,000-token one: no document end leaves val near 10%, so
    the split cuts inside the last document; an empty last document leaves val its tokens."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.txt").write_text("short text.")
    (folder / "b.txt").write_text("the cat sat on the mat. " * 1834)
    (folder / "c.txt").write_text("")
    data = prepare_data(config(tmp_path, path=str(folder), tokenizer="char"), 16)
    total = len(data.train) + len(data.val)
    assert abs(len(data.val) - total * 0.1) <= 1


def test_text_without_english_words_is_still_cut_into_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "BLOCK", 4096)
    monkeypatch.setattr(shards, "BLOCK", 4096)
    text = ("Съешь же ещё этих мягких французских булок, да выпей чаю.\n\n東京タワーは333m。"
            "\n") * 400
    blocks = list(sources.cut_where_words_end(iter([text[i:i + 4096]
                                                    for i in range(0, len(text), 4096)])))
    assert len(blocks) > 5 and max(map(len, blocks)) < 3 * 4096
    path = tmp_path / "ru.txt"
    path.write_text(text)
    for kind in ("word", "bpe"):
        data = prepare_data(config(tmp_path, path=str(path), tokenizer=kind, bpe_vocab_size=300), 16)
        assert torch.cat([data.train, data.val]).tolist() == data.tokenizer.encode(text), kind


def test_a_glob_through_a_link_loop_reads_each_file_once(tmp_path):
    (tmp_path / "h" / "sub").mkdir(parents=True)
    (tmp_path / "h" / "a.txt").write_text("x")
    (tmp_path / "h" / "sub" / "b.txt").write_text("y")
    (tmp_path / "h" / "self").symlink_to(tmp_path / "h")
    (tmp_path / "h" / "sub" / "up").symlink_to(tmp_path / "h")
    found = sources.find_sources(str(tmp_path / "h" / "**" / "*.txt"))
    assert [s.path.name for s in found] == ["a.txt", "b.txt"]


def test_a_json_line_with_a_lone_surrogate_is_one_line(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"text": "fine"}\n{"text": "bad \\ud83d here"}\n')
    with pytest.raises(DataError, match=r"line 2: field 'text' holds a lone surrogate"):
        prepare_data(config(tmp_path, path=str(tmp_path / "c.jsonl"), tokenizer="char"), 2)


def test_a_resumed_run_uses_the_shards_its_first_start_prepared(tmp_path, monkeypatch):
    path = tmp_path / "corpus.txt"
    path.write_text(load_corpus())
    cfg = config(tmp_path, path=str(path), tokenizer="bpe", bpe_vocab_size=300)
    first = prepare_data(cfg, 16)
    monkeypatch.setattr(shards, "documents", lambda *a: pytest.fail("prepared again"))
    again = prepare_data(cfg, 16, tokenizer=first.tokenizer)  # as --resume passes the run's own
    assert torch.equal(again.val, first.val) and len(folders(tmp_path)) == 1


def test_an_unusable_cache_is_a_warning_and_the_tokens_are_in_memory(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    cfg = DataConfig(cache_dir=str(tmp_path / "file" / "cache"), tokenizer="char")
    with pytest.warns(UserWarning, match="cannot prepare token shards in .*: Not a directory; "
                                         "the tokens are kept in memory this time"):
        data = prepare_data(cfg, 16)
    assert len(data.train) > 0
