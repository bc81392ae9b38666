"""Exclusive locks on a workdir, a sweep root or a dataset being prepared, for processes that
start at the same moment.

A lock is `fcntl.flock` on a file: the kernel grants it to one process at a time and releases it
when its holder exits, killed or not, so a lock never outlives its holder. The lock file holds
the holder's pid and host for the message of whoever is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path


class LockError(RuntimeError):
    """Another process holds the lock; the message names it and what to do."""


@contextlib.contextmanager
def exclusive(path: str | Path, what: str, *, wait_s: float = 0.0) -> Iterator[None]:
    """Holds an exclusive lock on `path` (created if missing) while the block runs.

    Args:
      path: the lock file; its folder must exist.
      what: what the lock guards, for the error ("workdir runs/x").
      wait_s: how long to wait for another holder to let go (0: refuse at once).

    Raises:
      LockError: another process holds it after `wait_s`.
    """
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _holder(path)
                    raise LockError(
                        f"{what} is in use by {holder}; wait for it to finish, or stop it (SIGTERM saves a "
                        "checkpoint) and run again"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(path: Path, wait_s: float = 1.0) -> str:
    # The holder writes its pid just after it takes the lock, so a process refused at that
    # moment reads an empty file: it looks again for a moment before naming no one.
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pid, host = path.read_text().split()[:2]
            return f"process {pid} on {host}"
        except (OSError, ValueError):
            if time.monotonic() >= deadline:
                return "another process"
            time.sleep(0.05)
