"""One run per directory: the training process holds a lock on `run.lock` in its run directory.

    lock = RunLock.take(run_dir)     # RunInUseError naming the holder if another process has it
    ...
    lock.release()

The lock is the operating system's own (flock on Linux and macOS, msvcrt.locking on Windows), held
through an open file, so it ends with its process however that ends: a run killed with kill -9
leaves at most a `run.lock` that no one holds, which the next start takes over. Two starts at the
same moment cannot both take it. The file holds the holder's pid, host and start time, which a
second start names in its error.
"""

import errno
import os
import socket
import time
import warnings
from datetime import datetime
from pathlib import Path

from minigpt.errors import RunInUseError, TrainingError
from minigpt.files import disk_full, is_disk_full

LOCK_NAME = "run.lock"
WINDOWS_OFFSET = 2**30  # Windows locks a byte range, which others then cannot read: lock one far
# beyond the holder's line, so that a second start can still read who holds it
UNSUPPORTED = {"ENOLCK", "EOPNOTSUPP", "ENOTSUP", "ENOSYS"}  # file systems without locks


def _lock(fd: int) -> bool:
    """Try to take the OS lock on fd without waiting; False when another open file holds it."""
    if os.name == "nt":
        import msvcrt

        os.lseek(fd, WINDOWS_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except PermissionError:
            return False
        finally:
            os.lseek(fd, 0, os.SEEK_SET)
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unlock(fd: int) -> None:
    if os.name == "nt":
        import msvcrt

        os.lseek(fd, WINDOWS_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)


def _same_file(fd: int, path: Path) -> bool:
    """Whether path still names the file open as fd: a holder that released the lock removed
    the file, and a lock on the removed file would guard nothing."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def holder(path: Path) -> str:
    """Who holds the lock at path, as its file says ("process 123 on host h since ...")."""
    for _ in range(20):  # the holder writes its line just after taking the lock
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            text = ""
        if text:
            fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
            return (f"process {fields.get('pid', '?')} on host {fields.get('host', '?')} "
                    f"(since {fields.get('since', '?').replace('T', ' ')})")
        time.sleep(0.05)
    return "another process"


class RunLock:
    """The lock of one run directory, held by this process until release()."""

    def __init__(self, path: Path, fd: int | None):
        self.path, self.fd = path, fd

    @classmethod
    def take(cls, run_dir: str | Path) -> "RunLock":
        path = Path(run_dir) / LOCK_NAME
        try:
            return cls._take(path)
        except OSError as err:
            if is_disk_full(err):
                raise disk_full(path) from None
            if errno.errorcode.get(err.errno or 0) in UNSUPPORTED:
                warnings.warn(f"the file system of {run_dir} has no file locks, so nothing stops "
                              f"a second run from training in it at the same time", stacklevel=2)
                return cls(path, None)
            raise TrainingError(f"cannot write the run directory {path.parent}: "
                                f"{err.strerror or err}; choose a writable --train.out_dir") from None

    @classmethod
    def _take(cls, path: Path) -> "RunLock":
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                taken = _lock(fd)
                if taken and _same_file(fd, path):
                    line = (f"pid={os.getpid()} host={socket.gethostname()} "
                            f"since={datetime.now():%Y-%m-%dT%H:%M:%S}\n").encode()
                    os.ftruncate(fd, 0)
                    os.write(fd, line)
                    return cls(path, fd)
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
            if not taken:
                raise RunInUseError(
                    f"run directory {path.parent} is in use by {holder(path)}: one run trains in "
                    f"a directory at a time; wait for it to end (or stop it), or choose another "
                    f"--train.run_name")

    def release(self) -> None:
        """Give the lock up and remove its file (once; later calls do nothing)."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        if os.name != "nt":
            try:
                self.path.unlink(missing_ok=True)  # before unlocking: see _same_file
            except OSError:
                pass
        try:
            _unlock(fd)
        except OSError:
            pass
        os.close(fd)
        if os.name == "nt":
            try:  # Windows removes no file that another process has open: then it stays
                self.path.unlink(missing_ok=True)
            except OSError:
                pass
