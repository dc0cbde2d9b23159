"""What a command prints to the terminal: plain lines by default, absl's full log format with --verbose.

By default lmjax's own messages appear as they are written (`step    100/2500 | loss ...`, `eval step 500 | ...`,
generated samples), warnings as `warning: ...` and errors as `error: ...`, and other libraries' INFO messages are
dropped. `--verbose` gives absl's format, `I1201 08:05:41.952633 140092861385600 train.py:301] step ...` (level,
date, time, thread, file:line), for every message that absl's `--verbosity` lets through. Either way the routine
chatter of Orbax, grain, TFDS and JAX's backend probing stays out (their warnings and errors still show).
"""

from __future__ import annotations

import logging as logging_std
import os

from absl import flags, logging

VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Log in absl's full format (level, date, time, thread, file:line) instead of plain lines.")

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_PREFIXES = ((logging_std.CRITICAL, "fatal: "), (logging_std.ERROR, "error: "), (logging_std.WARNING, "warning: "))


class PlainFormatter(logging_std.Formatter):
  """The message alone, after `warning: `, `error: ` or `fatal: ` for those levels (tracebacks still follow)."""

  def __init__(self):
    super().__init__("%(message)s")

  def format(self, record: logging_std.LogRecord) -> str:
    prefix = next((p for level, p in _PREFIXES if record.levelno >= level), "")
    return prefix + super().format(record)


class _OnlyLmjaxInfo(logging_std.Filter):
  """INFO and below only from lmjax's own modules; other libraries' (matplotlib's font cache, ...) are dropped."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    return record.levelno >= logging_std.WARNING or os.path.abspath(record.pathname).startswith(_PACKAGE_DIR)


class _DropLibraryInfo(logging_std.Filter):
  """Orbax and grain log every checkpoint step at INFO; keep their warnings, drop the chatter."""
  _NOISY = (f"{os.sep}orbax{os.sep}", f"{os.sep}grain{os.sep}")

  def filter(self, record: logging_std.LogRecord) -> bool:
    if f"{os.sep}tensorflow_datasets{os.sep}" in record.pathname:
      return record.levelno >= logging_std.ERROR  # its warnings are about custom configs, expected here
    if f"{os.sep}jax{os.sep}_src{os.sep}xla_bridge" in record.pathname:
      return record.levelno >= logging_std.WARNING  # "Unable to initialize backend 'tpu'" on every CPU run
    return record.levelno >= logging_std.WARNING or not any(part in record.pathname for part in self._NOISY)


# One instance each, so that calling setup() again (tests, a second command in one process) adds nothing twice.
_LIBRARY_FILTER = _DropLibraryInfo()
_PLAIN_FILTER = _OnlyLmjaxInfo()


def quiet_library_logs(uses_tfds: bool = True) -> None:
  """Drops the libraries' routine INFO messages, whatever the format, and (uses_tfds) TFDS's progress bars."""
  if uses_tfds:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    tfds.disable_progress_bar()
  for handler in logging_std.getLogger().handlers + [logging.get_absl_handler()]:
    handler.addFilter(_LIBRARY_FILTER)


def setup(verbose: bool | None = None, *, uses_tfds: bool = True) -> None:
  """Sets up the console for a command; call it first in its main(), after flag parsing. `verbose` defaults to
  the --verbose flag; a command that reads no dataset passes uses_tfds=False and does not import TFDS."""
  quiet_library_logs(uses_tfds)
  handler = logging.get_absl_handler()
  if VERBOSE.value if verbose is None else verbose:
    handler.setFormatter(logging.PythonFormatter())
    handler.removeFilter(_PLAIN_FILTER)
  else:
    handler.setFormatter(PlainFormatter())
    handler.addFilter(_PLAIN_FILTER)
