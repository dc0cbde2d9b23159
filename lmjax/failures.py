"""Recognizing the failures of the machine rather than of lmjax: a full disk, a path that cannot be written.

Python raises them as OSError with an errno; TensorStore (the array files of a checkpoint) as ValueError whose text
carries the OS error code, e.g. `RESOURCE_EXHAUSTED: Error writing local file "PATH": ... No space left on device
[os_error_code='28']`. Either way the exception, or one of its causes, says which; these helpers find it, so the
entry point can answer in one line with the path and the free space instead of a page of traceback.
"""

from __future__ import annotations

import errno
import os
import re
import shutil

_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_QUOTED_PATH = re.compile(r'(?:local file|Failed writing:|file) "([^"]+)"')


class DiskFullError(OSError):
  """Writing failed because the filesystem is full (or the quota is used up); the message names path and space."""


def _chain(error: BaseException | None):
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def os_error_code(error: BaseException) -> int | None:
  """The errno of the first OSError in the exception's chain, or the OS error code a TensorStore error reports."""
  for e in _chain(error):
    if isinstance(e, OSError) and e.errno is not None:
      return e.errno
    if (m := _OS_ERROR_CODE.search(str(e))) is not None:
      return int(m[1])
  return None


def is_out_of_space(error: BaseException) -> bool:
  if isinstance(error, DiskFullError):
    return True
  code = os_error_code(error)
  return code in _OUT_OF_SPACE or any("No space left on device" in str(e) for e in _chain(error))


def is_not_writable(error: BaseException) -> bool:
  return os_error_code(error) in _NOT_WRITABLE


def failed_path(error: BaseException) -> str | None:
  """The file the failing write was for, when the error says."""
  for e in _chain(error):
    if isinstance(e, OSError) and e.filename:
      return os.fspath(e.filename)
    if (m := _QUOTED_PATH.search(str(e))) is not None:
      return m[1]
  return None


def _existing(path: str) -> str:
  path = os.path.abspath(path)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return path


def _size(n: float) -> str:
  for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
    if n < 1024 or unit == "TiB":
      return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
    n /= 1024
  raise AssertionError


def free_space(path: str | os.PathLike) -> str:
  """'1.2 MiB free of 20.0 GiB' for the filesystem holding path (or its nearest existing parent)."""
  try:
    usage = shutil.disk_usage(_existing(os.fspath(path)))
  except OSError:
    return "free space unknown"
  return f"{_size(usage.free)} free of {_size(usage.total)}"


def disk_full_message(error: BaseException, where: str | os.PathLike, doing: str) -> str:
  """One line: what was being written, where, and how much room the filesystem has now."""
  path = failed_path(error)
  what = f"writing {path} failed" if path else f"a write under {os.fspath(where)} failed"
  return (f"out of disk space {doing}: {what} ({free_space(path or where)} on that filesystem); free space, then "
          f"rerun the same command")
