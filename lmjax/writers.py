"""Where metrics go: metrics.jsonl, the trackers, the progress line, and a loss-curve PNG. Process 0 only.

metrics.jsonl is always written: it is the record lmjax.report and the sweep read. `train.trackers` mirrors every
scalar to more places: 'tensorboard' (the default: TensorBoard events in workdir/tensorboard) and 'wandb'
(Weights & Biases, the `wandb` extra: a run named after the workdir in project train.wandb_project, holding the
config with its provenance; WANDB_MODE=offline keeps it on disk for `wandb sync`).
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np
from absl import logging

from lmjax import provenance


class TensorBoardTracker:
  """Scalars as TensorBoard events in workdir/tensorboard (tensorboardX)."""

  def __init__(self, workdir: Path, run_config: Mapping[str, Any] | None = None):
    del run_config
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self._writer = SummaryWriter(str(workdir / "tensorboard"))

  def scalars(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    for key, value in metrics.items():
      self._writer.add_scalar(f"{split}/{key}", float(value), int(step))

  def close(self) -> None:
    self._writer.close()


class WandbTracker:
  """A Weights & Biases run per workdir: its id is kept in workdir/wandb_run_id, so a resumed run continues the
  same W&B run; its config is the run's config with its provenance (lmjax version, git commit, devices)."""

  ID_FILE = "wandb_run_id"

  def __init__(self, workdir: Path, run_config: Mapping[str, Any] | None = None, project: str = "lmjax"):
    import wandb  # pylint: disable=import-outside-toplevel
    id_path = workdir / self.ID_FILE
    run_id = id_path.read_text().strip() if id_path.exists() else ""
    if not run_id:
      run_id = uuid.uuid4().hex[:12]
      id_path.write_text(run_id + "\n")
    record = dict(run_config or {})
    git = record.get(provenance.KEY, {})
    self._run = wandb.init(project=project, name=workdir.name, id=run_id, resume="allow", dir=str(workdir),
                           config=record, notes=f"git {git.get('git_commit')}" if git else None)

  def scalars(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    self._run.log({f"{split}/{key}": float(value) for key, value in metrics.items()}, step=int(step))

  def close(self) -> None:
    self._run.finish()


TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}  # the choices of config.train.trackers


def trackers_of(train: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The trackers a config's train section asks for; train.tensorboard=False (older configs) drops TensorBoard."""
  names = tuple(n.strip() for n in train.trackers.split(",") if n.strip())
  return tuple(n for n in names if n != "tensorboard" or train.tensorboard)


class MetricWriter:
  """Appends one JSON object per write to workdir/metrics.jsonl and mirrors scalars to the trackers.

  `trackers` names them (TRACKERS); None keeps the older interface: TensorBoard when `tensorboard`. `run_config`
  is what a tracker records as the run's config (the config with its provenance). A tracker whose package is not
  installed is skipped with a warning, so a run never fails over its dashboards.
  """

  def __init__(self, workdir: str | os.PathLike, tensorboard: bool = True, *, trackers: tuple[str, ...] | None = None,
               run_config: Mapping[str, Any] | None = None, wandb_project: str = "lmjax"):
    self.enabled = jax.process_index() == 0
    self.path = Path(workdir) / "metrics.jsonl"
    self._trackers: list[Any] = []
    names = (("tensorboard",) if tensorboard else ()) if trackers is None else trackers
    for name in names if self.enabled else ():
      try:
        kwargs = {"project": wandb_project} if name == "wandb" else {}
        self._trackers.append(TRACKERS[name](Path(workdir), run_config, **kwargs))
      except ImportError as e:
        logging.warning("train.trackers: %s is not available (%s); its records are not written.", name, e)

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "split": split, "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    for tracker in self._trackers:
      tracker.scalars(step, split, metrics)

  def close(self) -> None:
    for tracker in self._trackers:
      tracker.close()


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
