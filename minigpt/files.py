"""Writing files so that a crash never leaves half of one."""

import errno
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from minigpt.errors import DiskFullError

# What a write onto a full file system (or a full quota, or past the largest file it takes) fails
# with; EDQUOT does not exist on Windows.
FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


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


WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL",
                    *(f"{port}{i}" for port in ("COM", "LPT") for i in range(1, 10))}


def portable_name(name: str) -> bool:
    """Whether name can be a directory's name on Linux, macOS and Windows alike: no separators,
    none of the characters Windows forbids, no trailing dot or space, no reserved device name."""
    return (name not in (".", "..") and not any(c in '<>:"/\\|?*' or ord(c) < 32 for c in name)
            and not name.endswith((".", " "))
            and name.split(".")[0].upper() not in WINDOWS_RESERVED)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write path through write(file): into a temporary file beside it, synced, then renamed over
    it, so readers (and a crash) see the old file or the new one, never half of one. A full file
    system raises DiskFullError naming path and the space it needs; the old file stays."""
    path, tmp, recorder = Path(path), None, None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            recorder = _Recorder(f)
            write(recorder)
            f.flush()
            os.fsync(f.fileno())
        replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        # torch.save's zip writer reports a write cut short as RuntimeError("unexpected pos ..."),
        # not as the OSError behind it: the recorder kept that one.
        if is_disk_full(err) or is_disk_full(getattr(recorder, "error", None)):
            raise disk_full(path, _needed(write)) from None
        raise


def write_directory(directory: Path, files: dict[str, bytes]) -> None:
    """Write files (name -> contents) as the new directory `directory`, whole or not at all: into
    a temporary directory beside it, renamed to `directory` once complete. An empty directory
    already there is replaced. A failure leaves nothing (a kill, at most a .NAME.*.tmp folder)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.",
                                    suffix=".tmp"))
    except OSError as err:
        raise (disk_full(directory) if is_disk_full(err) else err) from None
    try:
        for name, blob in files.items():
            atomic_write(tmp / name, lambda f, blob=blob: f.write(blob))
        if directory.is_dir():
            directory.rmdir()  # empty, or this fails: never more than that is replaced
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_disk_full(err: BaseException | None) -> bool:
    """Whether err is an OSError saying the file system (or the user's quota) is full."""
    return isinstance(err, OSError) and err.errno in FULL


def disk_full(path: Path, needed: int | None = None) -> DiskFullError:
    """The error of a write of path (needed bytes, where known) that found its file system full."""
    free = free_space(path)
    room = (f"it needs {size_text(needed)} of free space and" if needed is not None
            else "it needs more room than the")
    return DiskFullError(f"cannot write {path}: its file system is full ({room} "
                         f"{size_text(free)} {'are ' if needed is not None else ''}free there); "
                         f"free some space or write elsewhere (the previous {path.name}, if any, "
                         f"is unchanged)")


def free_space(path: Path) -> int:
    """Bytes free on the file system holding path (or its nearest existing parent)."""
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return 0


def size_text(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"  # not reached


def _needed(write: Callable[[BinaryIO], object]) -> int | None:
    """The size of what write(file) writes, measured by writing it again into nothing."""
    counter = _Counter()
    try:
        write(counter)
    except Exception:
        return None
    return counter.size


class _Recorder:
    """The file a writer writes to: every call passed on, the first OSError of a write kept."""

    def __init__(self, file: BinaryIO):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str):
        return getattr(self.file, name)


class _Counter:
    """A file that keeps only the number of bytes written to it."""

    def __init__(self):
        self.size = 0

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        self.size += n
        return n

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass


class DiskGuard:
    """A writer whose method calls raise DiskFullError naming path (a TensorBoard event file)
    when its file system is full, instead of OSError; used for TensorBoard's SummaryWriter, whose
    writes happen in a thread and surface at the next call."""

    def __init__(self, target, path: Callable[[], Path]):
        self._target, self._path = target, path
        _quiet_full_disk_threads()

    def __getattr__(self, name: str):
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def guarded(*args, **kwargs):
            try:
                return attribute(*args, **kwargs)
            except OSError as err:
                if not is_disk_full(err):
                    raise
                raise disk_full(self._path()) from None
        return guarded


def _quiet_full_disk_threads() -> None:
    """A writer thread that dies of a full disk (TensorBoard's) is reported by the next call
    on its writer (DiskGuard), as one line: threading's hook would print its traceback first."""
    hook = threading.excepthook
    if getattr(hook, "quiet_full_disk", False):
        return

    def quiet(args):
        if not is_disk_full(args.exc_value):
            hook(args)
    quiet.quiet_full_disk = True
    threading.excepthook = quiet


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
