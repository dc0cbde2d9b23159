"""Turning SIGTERM/SIGINT into a clean stop: finish the step, save a checkpoint, exit with a distinct status.

Cloud TPU and most cluster schedulers send SIGTERM some seconds before they reclaim a machine. The handler only
sets a flag; the training loop checks it after every compiled call, so a step is never cut in half. A second
Ctrl-C falls back to Python's default and interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later", which is what the launcher does


class Preempted(Exception):
  """Raised by the training loop after it saved a checkpoint in answer to a stop signal."""

  def __init__(self, step: int, signal_name: str):
    super().__init__(f"stopped by {signal_name} at step {step}; a checkpoint was saved there: rerun the same "
                     f"command to resume.")
    self.step = step


class StopSignals:
  """Context manager: while active, SIGTERM and SIGINT request a stop instead of killing the process."""

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    self.signals = signals
    self.received: str | None = None
    self._previous = {}

  @property
  def requested(self) -> bool:
    return self.received is not None

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    del frame
    self.received = signal.Signals(signum).name
    if signum == signal.SIGINT:  # a second Ctrl-C interrupts at once
      signal.signal(signal.SIGINT, signal.default_int_handler)

  def __enter__(self) -> "StopSignals":
    if threading.current_thread() is threading.main_thread():  # signal handlers live on the main thread only
      for sig in self.signals:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
