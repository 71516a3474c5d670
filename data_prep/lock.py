"""One writer per output folder: a lock file naming its owner, which a second writer is refused by.

The lock is an flock on the file, so the kernel releases it when its owner ends in any way (killed included): a lock
file left by a dead process is taken over, with a note naming the process it came from. Shared by `python -m
data_prep` (the lock sits beside --out, which is replaced as a whole) and `python -m benchmark` (inside --out).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from .errors import DataPrepError


def beside(out: str | os.PathLike) -> Path:
    """The lock of a folder that is replaced as a whole: a hidden file next to it."""
    out = Path(out)
    return out.parent / f".{out.name}.lock"


def owner() -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return f"pid {os.getpid()} on host {socket.gethostname()}, started {started}"


@contextlib.contextmanager
def exclusive(lock: str | os.PathLike, option: str, folder: str | os.PathLike) -> Iterator[None]:
    """Hold `lock` for the block; refused (DataPrepError naming `option` `folder`, the lock file and its owner)
    while another process holds it."""
    lock = Path(lock)
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # e.g. a path component is a file, or a read-only parent
            raise DataPrepError(f"{option} {folder}: cannot create the lock file {lock} ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd) or "another process"
            os.close(fd)
            raise DataPrepError(f"{option} {folder} is in use by {holder} (lock file {lock}); wait for it to end, or "
                                f"use another {option}") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder removed the file between our open and our lock: lock the file there now
    previous = _read(fd)
    if previous:  # a holder that ends normally removes its file
        print(f"note: {lock} was left by {previous}, which is no longer running; taken over", file=sys.stderr)
    os.ftruncate(fd, 0)
    os.pwrite(fd, (owner() + "\n").encode(), 0)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # still locked here, so no other process holds a lock on the removed file
        os.close(fd)


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode(errors="replace").strip()
