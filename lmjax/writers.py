"""Where metrics go: metrics.jsonl, TensorBoard events, the progress line, and a loss-curve PNG. Process 0 only."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np
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


# Entries of a train step's metrics that TrainLog reports itself; any others are the task's own (e.g. mlm_loss).
_STEP_BOOKKEEPING = ("loss", "tokens", "grad_norm", "skipped")


class TrainLog:
  """The train record of each logging interval, from the metrics of the train calls in it.

  Means are over the steps that were not skipped (a non-finite step changed nothing, so its loss says nothing about
  the model). Throughput counts training only: the first call (which compiles) and the seconds passed to `exclude`
  (evaluating, checkpointing) are left out. The first record also carries the model's parameter count and, when
  the model family counts them, its training FLOPs per step (`flops_per_step`; step s has cost s times that).
  """

  def __init__(self, *, tokens_per_step: int, learning_rate: Callable[[int], Any], num_params: int,
               flops_per_step: float | None = None):
    self.tokens_per_step, self.learning_rate, self.num_params = tokens_per_step, learning_rate, num_params
    self.flops_per_step = flops_per_step
    self._first_row = True
    self._start_interval()

  def _start_interval(self) -> None:
    self._pending: list[dict[str, Any]] = []
    self._start, self._steps, self._excluded = time.perf_counter(), 0, 0.0

  def add(self, step_metrics: dict[str, Any], steps: int, *, compiled_in: float | None = None) -> None:
    """One train call's metrics ([steps] each, still on device). `compiled_in`: the call compiled, and took this
    many seconds."""
    self._pending.append(step_metrics)
    if compiled_in is None:
      self._steps += steps
    else:
      self._excluded += compiled_in

  def exclude(self, seconds: float) -> None:
    self._excluded += seconds

  @property
  def seconds_per_step(self) -> float:
    train_s = time.perf_counter() - self._start - self._excluded
    return train_s / self._steps if self._steps else float("nan")

  def row(self, step: int) -> dict[str, float]:
    """The interval's record (fetching its metrics from the devices), and a fresh interval."""
    fetched = jax.device_get(self._pending)
    gather = lambda key: np.concatenate([np.atleast_1d(m[key]) for m in fetched])
    ok = gather("skipped") == 0
    mean_ok = lambda key: float(np.mean(gather(key)[ok])) if ok.any() else float("nan")
    seconds_per_step = self.seconds_per_step
    row = {"num_params": self.num_params} if self._first_row else {}
    if self._first_row and self.flops_per_step is not None:
      row["flops_per_step"] = float(self.flops_per_step)
    self._first_row = False
    row |= {"loss": mean_ok("loss")}
    row |= {key: mean_ok(key) for key in sorted(fetched[0]) if key not in _STEP_BOOKKEEPING}  # the task's metrics
    row |= {"grad_norm": mean_ok("grad_norm"), "learning_rate": float(self.learning_rate(step - 1)),
            "skipped_steps": float((~ok).sum()), "steps_per_s": 1.0 / seconds_per_step,
            "tokens_per_s": self.tokens_per_step / seconds_per_step}
    self._start_interval()
    return row


def eval_line(split: str, step: int, metrics: Mapping[str, float]) -> str:
  return f"{split} step {step} | " + " | ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "tokens")


def progress_line(step: int, num_steps: int, metrics: Mapping[str, float], seconds_left: float) -> str:
  eta = time.strftime("%H:%M:%S", time.gmtime(seconds_left)) if math.isfinite(seconds_left) else "?"
  extras = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                      if k not in ("loss", "tokens", "tokens_per_s", "steps_per_s", "num_params", "flops_per_step"))
  return (f"step {step:>6d}/{num_steps} | loss {metrics['loss']:.4f} | {metrics['tokens_per_s']:,.0f} tok/s | "
          f"eta {eta} | {extras}")


def plot_loss_curves(workdir: str | os.PathLike, filename: str = "loss.png",
                     loss_unit: str = "nats per token") -> Path | None:
  """Train and eval loss against step, from metrics.jsonl; returns the PNG path. `loss_unit` is what the task's
  loss is a mean of (Task.loss_unit), for the y axis."""
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
  ax.set_xlabel("training step")
  ax.set_ylabel(f"loss ({loss_unit})")
  ax.set_title(Path(workdir).name)
  ax.grid(alpha=0.3)
  ax.legend()
  path = Path(workdir) / filename
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
