"""Writing files so that a crash never leaves half of one."""

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def path_problem(path: str | Path) -> str | None:
    """Why no file system can take path, or None: a NUL character, a character with no encoding,
    or a name longer than file systems allow (255 bytes a name, 4,095 the path). The OS calls
    raise ValueError or OSError for such a path, where a missing file would only not exist."""
    text = os.fspath(path)
    if "\0" in text:
        return "it holds a NUL character"
    try:
        names = [os.fsencode(name) for name in Path(text).parts]
    except UnicodeEncodeError:
        return "it holds characters that no file name can have"
    if max(map(len, names), default=0) > 255 or len(os.fsencode(text)) > 4095:
        return "it is longer than file systems allow (255 bytes a name, 4,095 the path)"
    return None


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write path through write(file): into a temporary file beside it, synced, then renamed over
    it, so readers (and a crash) see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace(source: str | Path, target: Path, tries: int = 20, wait: float = 0.05) -> None:
    """os.replace, retried for a second: on Windows a file that another process has open (the app
    reading a checkpoint, a virus scanner) cannot be replaced until it is closed, and the rename
    fails with PermissionError in the meantime. Elsewhere the first try succeeds."""
    for attempt in range(tries):
        try:
            os.replace(source, target)
            return
        except PermissionError:
            if attempt == tries - 1:
                raise
            time.sleep(wait)
