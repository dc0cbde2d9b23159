"""Where metrics go: metrics.jsonl, TensorBoard events, the progress line, and a loss-curve PNG. Process 0 only."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Mapping

import jax
from absl import logging


class MetricWriter:
  """Appends one JSON object per write to workdir/metrics.jsonl and mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str | os.PathLike, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = Path(workdir) / "metrics.jsonl"
    self._tb = None
    if self.enabled and tensorboard:
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))
      except ImportError:
        logging.warning("tensorboardX is not installed; TensorBoard events are not written.")

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "split": split, "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for key, value in metrics.items():
        self._tb.add_scalar(f"{split}/{key}", float(value), int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  path = Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:  # a line cut short by a killed process
      logging.warning("Skipping a malformed line in %s: %r", path, line[:80])
  return records


def progress_line(step: int, num_steps: int, metrics: Mapping[str, float], seconds_left: float) -> str:
  eta = time.strftime("%H:%M:%S", time.gmtime(seconds_left)) if math.isfinite(seconds_left) else "?"
  extras = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                      if k not in ("loss", "tokens", "tokens_per_s", "steps_per_s", "num_params"))
  return (f"step {step:>6d}/{num_steps} | loss {metrics['loss']:.4f} | {metrics['tokens_per_s']:,.0f} tok/s | "
          f"eta {eta} | {extras}")


def plot_loss_curves(workdir: str | os.PathLike, filename: str = "loss.png") -> Path | None:
  """Train and eval loss against step, from metrics.jsonl; returns the PNG path."""
  records = read_metrics(workdir)
  if jax.process_index() != 0 or not records:
    return None
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for split, style in (("train", "-"), ("eval", "o-")):
    points = [(r["step"], r["loss"]) for r in records if r["split"] == split and "loss" in r]
    if points:
      steps, losses = zip(*sorted(dict(points).items()))
      ax.plot(steps, losses, style, label=split, markersize=4)
  ax.set_xlabel("step")
  ax.set_ylabel("loss (nats/token)")
  ax.set_title(Path(workdir).name)
  ax.grid(alpha=0.3)
  ax.legend()
  path = Path(workdir) / filename
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
