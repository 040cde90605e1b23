"""Where training text comes from, read in bounded memory: the embedded corpus (text in memory), a
file, a directory of text and JSON-lines files, or a glob.

    sources = find_sources("data/")                       # [Source(path=...), ...], path order
    for doc in documents(sources, "text", bar, hasher):   # each document, as blocks of its text
        for block in cut_where_words_end(doc): ...

A plain text file is one document, read BLOCK bytes at a time as UTF-8 ("\\r\\n" read as "\\n"); a
.jsonl file is one document a line, its text in a named field. Every problem (not found, no text
files, a NUL byte, bad UTF-8, a line that is not JSON or lacks the field) is a one-line DataError.
"""

import codecs
import glob
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from minigpt.errors import DataError
from minigpt.files import path_problem

BLOCK = 4 << 20  # bytes of text read at a time
TEXT_SUFFIXES, JSONL_SUFFIXES = (".txt", ".text", ".md"), (".jsonl", ".ndjson")
# Where text can be cut into blocks without changing its tokens, for word and GPT-2 style BPE
# splits alike (fuzzed against whole-text splits): after a non-space character followed by a space
# and another non-space (the space starts the next piece), or after a newline that follows a
# non-space and comes before a non-space or one more newline.
_CUT = re.compile(r"\S(?= \S)|\S\n(?=\n?\S)")
CARRY_LIMIT = 4 * BLOCK  # characters with nowhere to cut, held at most: then cut anyway


@dataclass
class Source:
    """A file to read (path), or text already in memory (the embedded corpus)."""

    path: Path | None = None
    text: str = ""
    jsonl: bool = False

    @property
    def size(self) -> int:
        return self.stat().st_size if self.path is not None else len(self.text.encode())

    def stat(self) -> os.stat_result:
        try:
            return self.path.stat()
        except OSError as err:
            raise DataError(f"data file {self.path} cannot be read: {err.strerror or err}") from None



def find_sources(path: str) -> list[Source]:
    """The files data.path names: a file, a directory's text and JSON-lines files, or a glob."""
    problem = path_problem(path)
    if problem:
        raise DataError(f"data path {path!r} cannot name a file: {problem}")
    if glob.has_magic(path):
        files = _glob(path)
        if not files:
            raise DataError(f"no file matches data path {path}; check --data.path")
    elif Path(path).is_dir():
        files = sorted(p for p in Path(path).rglob("*") if p.is_file()
                       and p.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise DataError(f"data path {path} is a directory with no text files in it "
                            f"({', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES)}); pass a text file, or "
                            "a directory or glob of them")
    else:
        file = Path(path)
        if not file.exists():
            raise DataError(f"data file {file} not found; check --data.path")
        if not file.is_file():
            raise DataError(f"data path {file} is not a regular file; pass a UTF-8 text file")
        files = [file]
    return [Source(p, jsonl=p.suffix.lower() in JSONL_SUFFIXES) for p in files]


def _glob(pattern: str) -> list[Path]:
    """The files a glob matches, each once (by its real path), in path order, hidden ones skipped
    as a shell skips them. pathlib's ** does not follow symbolic links into folders, so a link
    loop cannot make it run forever."""
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    root = Path(*parts[:first]) if first else Path(".")
    found: dict[Path, Path] = {}
    for match in root.glob(str(Path(*parts[first:]))):
        hidden = any(part.startswith(".") for part in match.relative_to(root).parts)
        if match.is_file() and not hidden:
            found.setdefault(match.resolve(), match)
    return sorted(found.values())


def read_text_file(path: Path, bar, hasher) -> Iterator[str]:
    """A UTF-8 file's text in blocks, "\\r\\n" read as "\\n"; a DataError for anything else."""
    decoder, offset, carry = codecs.getincrementaldecoder("utf-8")(), 0, ""
    try:
        with open(path, "rb") as f:
            while True:
                block = f.read(BLOCK)
                if b"\0" in block:
                    raise DataError(f"data file {path} holds NUL bytes, so it is not text (a "
                                    "binary file?); pass a UTF-8 text file")
                pending = len(decoder.getstate()[0])  # bytes of a character cut by the last block
                try:
                    text = carry + decoder.decode(block, final=not block)
                except UnicodeDecodeError as err:
                    raise DataError(f"data file {path} is not valid UTF-8 text (byte "
                                    f"{offset - pending + err.start}); convert it to UTF-8 "
                                    "first") from None
                hasher.update(block)
                bar.update(len(block))
                offset += len(block)
                carry = "\r" if text.endswith("\r") and block else ""
                text = text[:-1] if carry else text
                if text:
                    yield text.replace("\r\n", "\n")
                if not block:
                    return
    except OSError as err:
        raise DataError(f"data file {path} cannot be read: {err.strerror or err}") from None


def _read_jsonl(path: Path, text_field: str, bar, hasher) -> Iterator[str]:
    """Each line's text field: one document a line; blank lines are skipped."""
    try:
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                hasher.update(line)
                bar.update(len(line))
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except (ValueError, UnicodeDecodeError) as err:
                    raise DataError(f"{path} line {number} is not valid JSON ({err}); each line of "
                                    "a .jsonl file must be one JSON object") from None
                if not isinstance(record, dict) or text_field not in record:
                    has = (f" (its fields: {', '.join(list(record)[:8])})"
                           if isinstance(record, dict) else "")
                    raise DataError(f"{path} line {number} has no {text_field!r} field{has}; "
                                    "name the field holding the text with --data.text_field")
                text = record[text_field]
                if not isinstance(text, str):
                    raise DataError(f"{path} line {number}: field {text_field!r} is "
                                    f"{type(text).__name__}, not text")
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise DataError(f"{path} line {number}: field {text_field!r} holds a lone "
                                    "surrogate escape (\\ud800-\\udfff), which is no character; "
                                    "fix that line") from None
                yield text.replace("\r\n", "\n")
    except OSError as err:
        raise DataError(f"data file {path} cannot be read: {err.strerror or err}") from None


def documents(sources: list[Source], text_field: str, bar, hasher) -> Iterator[Iterator[str]]:
    """Every document of the sources, each as an iterator of its text's blocks."""
    for source in sources:
        if source.path is None:
            hasher.update(source.text.encode())
            bar.update(len(source.text.encode()))
            yield iter([source.text])
        elif source.jsonl:
            yield from (iter([text]) for text in _read_jsonl(source.path, text_field, bar, hasher))
        else:
            yield read_text_file(source.path, bar, hasher)


def cut_where_words_end(blocks: Iterator[str]) -> Iterator[str]:
    """The blocks of one document, re-cut where a word ends, so that encoding them one at a time
    gives the tokens of the whole (a block with nowhere to cut is joined to the next)."""
    carry = ""
    for block in blocks:
        text = carry + block
        tail = text[-65536:]
        last = next(reversed(list(_CUT.finditer(tail))), None)
        cut = len(text) - len(tail) + last.end() if last else 0
        if not cut and len(text) > CARRY_LIMIT:  # 16 M characters without a space or newline:
            cut = len(text)  # bounded memory over one token boundary that may differ
        if cut:
            yield text[:cut]
        carry = text[cut:]
    if carry:
        yield carry
