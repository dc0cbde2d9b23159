"""One run per workdir: an exclusive lock on WORKDIR/run.lock, held for the life of the process.

The lock is `flock` on an open file: the kernel releases it when the process ends, however it ends (SIGKILL, OOM,
a crash), so a dead run never leaves it stuck, and there is no stale-lock timeout to guess. Linux NFS clients carry
flock to the server as a whole-file POSIX lock, so hosts sharing a workdir over NFS exclude each other too (after
a host dies, the server frees its locks when the host's lease expires, about a minute and a half on NFSv4).

The file holds the holder's pid, host and start time, for the one-line error a second run gets. The lock file is
never read or reopened by the process that holds it (closing any descriptor of a file drops a POSIX lock).

A multi-host run takes the lock on process 0 only, and its other processes learn the outcome from it (lmjax.main),
so the processes of one run never compete with each other for their own workdir.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from absl import logging

LOCK_FILE = "run.lock"
# Filesystems that cannot lock at all answer with one of these; the run then goes ahead unlocked, with a warning.
_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


class WorkdirLocked(RuntimeError):
  """Another run holds the workdir's lock; the message names its pid and host."""


def holder(path: str | os.PathLike) -> str:
  """'pid 123 on host a (since 2025-01-01 12:00:00)', from a lock file, or what is known."""
  try:
    info = json.loads(Path(path).read_text())
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
    return f"pid {info['pid']} on host {info['host']} (since {since})"
  except (OSError, ValueError, KeyError, TypeError):
    return "a run that is just starting (its pid and host are not written yet)"


class WorkdirLock:
  """Exclusive, non-blocking: `acquire` raises WorkdirLocked when another run holds it."""

  def __init__(self, workdir: str | os.PathLike):
    self.workdir = Path(workdir)
    self.path = self.workdir / LOCK_FILE
    self._fd: int | None = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self) -> bool:
    """Takes the lock; False when the filesystem has no locks (the run then goes ahead unlocked)."""
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
          raise WorkdirLocked(
              f"--workdir={self.workdir} is in use by another run: {holder(self.path)}; wait for it to finish or "
              f"stop it, or give another --workdir") from None
        if e.errno in _NO_LOCKS:
          logging.warning("The filesystem of %s cannot lock files (%s); going on without the lock, so make sure no "
                          "other run uses this workdir.", self.workdir, e.strerror)
          return False
        raise
      # The file may have been removed and created anew between our open and our lock (a failed first start
      # cleans up after itself): then this lock guards nothing, so try again on the file that is there now.
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
    os.ftruncate(fd, 0)
    os.pwrite(fd, info.encode() + b"\n", 0)
    self._fd = fd
    return True

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # closing drops the lock
      self._fd = None
