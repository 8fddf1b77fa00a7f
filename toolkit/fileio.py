"""Writing output files so that a crash or a kill never leaves a half-written one (developers' guide:
"no half-written output file"): write to a temporary name in the same folder, then rename."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(dst):
    """Yield a temporary path beside ``dst``; on a clean exit it is renamed to ``dst`` (atomic on POSIX),
    on an error it is removed and ``dst`` is left as it was."""
    dst = Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent if str(dst.parent) else ".")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class OutputBusyError(OSError):
    """Another process holds the output's lock."""


class OutputLock:
    """An exclusive lock on an output path, held by one process at a time: ``flock`` on ``DST.lock`` beside
    it (the kernel releases it when the process dies, so a kill never leaves a stale lock; the file itself is
    removed on release). A second tightcert process writing the same report or checkpoint folder refuses
    instead of deleting or overwriting what the first is writing (issue 15)."""

    def __init__(self, dst):
        self.path = Path(str(dst) + ".lock")
        self.fd = None

    def acquire(self) -> "OutputLock":
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputBusyError(f"{self.path.name[:-5]} is in use by another tightcert process "
                                      f"(it holds {self.path}); wait for it to finish or choose another output")
            try:  # the holder before us may have removed the file after we opened it: lock the current one
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    self.fd = fd
                    return self
            except FileNotFoundError:
                pass
            os.close(fd)

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while still holding it: nobody can lock a file we then remove
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        self.release()


def check_not_busy(dst) -> None:
    """Raise ``OutputBusyError`` when another process holds ``dst``'s lock (takes and drops it at once)."""
    if Path(str(dst) + ".lock").exists():
        with OutputLock(dst):
            pass
