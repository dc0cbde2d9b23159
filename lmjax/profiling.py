"""train.profile_steps='START:END': a jax.profiler trace of the train calls from step START to step END.

The trace goes to workdir/profile (plugins/profile/<time>/*.xplane.pb, plus a Perfetto trace.json.gz), which
TensorBoard's profile plugin (`pip install tensorboard-plugin-profile; tensorboard --logdir WORKDIR/profile`) and
xprof (`xprof --logdir WORKDIR/profile`) open, and ui.perfetto.dev reads the .json.gz. Compilation is outside the
window when START is past the first call; the last traced call is waited on before the trace stops, so its device
work is in it. Beside the trace, steps.json records the steps it covers, for `lmjax-profile` (profile_summary.py),
which sums the trace's ops into a table per step.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
from absl import logging

from lmjax.config import parse_step_range


class StepProfiler:
  """Starts the trace before the first call at or after START and stops it after the call that reaches END."""

  def __init__(self, steps: str, workdir: Path):
    self.window = parse_step_range(steps)
    self.dir = workdir / "profile"
    self.active = False
    self.done = self.window is None

  def before(self, step: int) -> None:
    """Called before the train call that starts at `step`."""
    if self.done or self.active or not self.window[0] <= step < self.window[1]:
      return
    self.dir.mkdir(parents=True, exist_ok=True)
    jax.profiler.start_trace(str(self.dir), create_perfetto_trace=True)
    self.active, self.first = True, step

  def after(self, step: int, outputs) -> None:
    """Called after a train call that ended at `step`, with its outputs."""
    if self.active and step >= self.window[1]:
      jax.block_until_ready(outputs)
      self.stop(step)

  def stop(self, step: int) -> None:
    if not self.active:
      return
    jax.profiler.stop_trace()
    self.active, self.done = False, True
    # Each trace gets its own timestamped directory; the newest is this one (a resumed run may add another).
    traces = self.dir / "plugins" / "profile"
    runs = sorted((r for r in traces.iterdir() if r.is_dir()), key=lambda r: r.stat().st_mtime) \
        if traces.is_dir() else []
    if runs:
      (runs[-1] / "steps.json").write_text(json.dumps({"first": self.first, "last": step}) + "\n")
    logging.info("Profile of steps %d-%d: %s (python -m lmjax.profile_summary %s for a table of the ops; "
                 "tensorboard --logdir %s, profile tab; or xprof).", self.first, step, self.dir, self.dir, self.dir)
