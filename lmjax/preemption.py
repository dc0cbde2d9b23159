"""Turning SIGTERM/SIGINT into a clean stop: finish the step, save a checkpoint, exit with a distinct status.

Cloud TPU and most cluster schedulers send SIGTERM some seconds before they reclaim a machine. The handler only
sets a flag; the training loop checks it after every compiled call, so a step is never cut in half. A second
Ctrl-C falls back to Python's default and interrupts at once.

Outside the training loop (importing, preparing data, compiling, restoring; the final evaluation) there is no step
to finish and nothing to save, so `stop_outside_the_loop` makes SIGTERM and SIGINT raise `Interrupted` at once:
the entry point answers it with one line and the same status 75, and a scheduler requeues the job either way.
`Interrupted` derives from BaseException, like KeyboardInterrupt, so that no `except Exception` on the way (a
checkpoint restore that falls back past damaged steps, say) mistakes the stop for a failure of its own.
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


class Interrupted(BaseException):
  """A stop signal outside the training loop: nothing to finish, nothing new to save."""

  def __init__(self, signal_name: str):
    super().__init__(f"stopped by {signal_name} outside the training loop (while starting or finishing); nothing "
                     f"was lost: rerun the same command to resume from the latest checkpoint.")
    self.signal_name = signal_name


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
  del frame
  raise Interrupted(signal.Signals(signum).name)


def stop_outside_the_loop(signals=(signal.SIGTERM, signal.SIGINT)) -> None:
  """From now on, these signals raise Interrupted, except while a StopSignals block (the training loop) runs."""
  if threading.current_thread() is threading.main_thread():
    for sig in signals:
      signal.signal(sig, _raise_interrupted)


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
