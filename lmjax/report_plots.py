"""The plots of lmjax.report: each group's mean with a 95% band (curves) or 95% error bars (final values).

A band or a bar is the Student-t interval of the mean over the group's seeds (lmjax.stats), drawn where every
replicate has a value (the steps they all logged); a group of one run is a plain line. Every axis names its unit.
The groups and runs are lmjax.report's Group and Run (this module only reads them).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from lmjax import stats

Group = Run = Any  # lmjax.report.Group / Run, which import this module


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def log_scale(values: Sequence[float]) -> bool:
  """Learning rates and the like are swept over decades; on a linear axis the small ones would pile up."""
  return min(values) > 0 and max(values) / min(values) > 10


def _colors(plt, n: int):
  return plt.get_cmap("tab10" if n <= 10 else "tab20").colors


def mean_curve(runs: Sequence[Run], split: str, metric: str,
               x_of=None) -> tuple[list[float], list[float], list[float | None], list[float | None]]:
  """(x, mean, low, high) at the steps every run logged; x is the step, or x_of(run, step)."""
  series = [dict(r.series(split, metric)) for r in runs]
  if not series or not all(series):
    return [], [], [], []
  steps = sorted(set.intersection(*(set(s) for s in series)))
  xs, means, lows, highs = [], [], [], []
  for step in steps:
    summary = stats.summarize([s[step] for s in series])
    if summary is None:
      continue
    xs.append(step if x_of is None else x_of(runs[0], step))
    means.append(summary.mean)
    lows.append(summary.low)
    highs.append(summary.high)
  return xs, means, lows, highs


def _band(ax, xs, lows, highs, color) -> None:
  pairs = [(x, lo, hi) for x, lo, hi in zip(xs, lows, highs) if lo is not None]
  if len(pairs) >= 1:
    ax.fill_between([p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs], color=color, alpha=0.2,
                    linewidth=0)


def _label(g: Group) -> str:
  unfinished = sum(not r.finished for r in g.runs)
  return f"{g.name} (n={g.n}{f', {unfinished} unfinished' if unfinished else ''})"


def loss_unit(groups: Sequence[Group]) -> str:
  units = sorted({r.loss_unit for g in groups for r in g.runs})
  return units[0] if len(units) == 1 else "units differ by task: " + "; ".join(units)


def loss_curves(groups: Sequence[Group], path: Path) -> Path | None:
  """Train loss (solid) and eval loss (dashed, markers) against step: each group's mean, with its 95% band."""
  if not any(r.series("train", "loss") or r.series("eval", "loss") for g in groups for r in g.runs):
    return None
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(8, 5))
  colors = _colors(plt, len(groups))
  for i, g in enumerate(groups):
    color = colors[i % len(colors)]
    label = _label(g)
    xs, mean, lo, hi = mean_curve(g.runs, "train", "loss")
    if xs:
      ax.plot(xs, mean, "-", color=color, label=label, linewidth=1.2, marker="." if len(xs) == 1 else None)
      _band(ax, xs, lo, hi, color)
    exs, emean, elo, ehi = mean_curve(g.runs, "eval", "loss")
    if exs:
      ax.plot(exs, emean, "o--", color=color, markersize=4, label=None if xs else label)
      _band(ax, exs, elo, ehi, color)
  ax.set_xlabel("training step")
  ax.set_ylabel(f"loss ({loss_unit(groups)})")
  ax.set_title("train loss (solid) and eval loss (dashed): mean over seeds, 95% band")
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small", loc="upper right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def metric_vs_flops(groups: Sequence[Group], metric: str, splits: Sequence[str], path: Path) -> Path | None:
  """Eval `metric` (the main eval split) against training FLOPs: each counted group's mean with its 95% band;
  a group without a FLOPs count (the n-gram) is a horizontal dotted line at its final value."""
  split = "eval" if "eval" in splits else (splits[0] if splits else "eval")
  counted = [g for g in groups if g.flops_per_step is not None and any(r.series(split, metric) for r in g.runs)]
  if not counted:
    return None
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(8, 5))
  colors = _colors(plt, len(groups))
  for i, g in enumerate(groups):
    color = colors[i % len(colors)]
    if g.flops_per_step is None:
      summary = g.summary(split, metric)
      if summary is not None:
        ax.axhline(summary.mean, color=color, linestyle=":", linewidth=1.2, label=f"{_label(g)}: no training FLOPs")
      continue
    xs, mean, lo, hi = mean_curve(g.runs, split, metric, x_of=lambda r, step: step * r.flops_per_step)
    if xs:
      ax.plot(xs, mean, "o-", color=color, markersize=3, label=_label(g))
      _band(ax, xs, lo, hi, color)
  ax.set_xscale("log")
  ax.set_xlabel("training FLOPs (forward + backward, the model family's count)")
  unit = f" ({loss_unit(groups)})" if metric == "loss" else ""
  ax.set_ylabel(f"{split} {metric}{unit}")
  ax.set_title(f"{split} {metric} against training compute: mean over seeds, 95% band")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def metric_vs_field(groups: Sequence[Group], field: str, others: Sequence[str], metric: str,
                    splits: Sequence[str], path: Path) -> Path | None:
  """The final eval metric against one field (or, for field='', one bar per group), with 95% error bars; one
  series per eval split (such as eval_len256, the same text at another context length) and combination of the
  other differing fields."""
  points: dict[str, list[tuple[Any, stats.Summary]]] = {}
  for g in groups:
    x = g.fields.get(field, g.runs[0].config.get(field)) if field else g.name
    for split in splits:
      summary = g.summary(split, metric)
      if summary is None:
        continue
      parts = [split] if len(splits) > 1 else []
      label = ", ".join(parts + [f"{o.rsplit('.', 1)[-1]}={g.fields.get(o)}" for o in others])
      points.setdefault(label, []).append((x, summary))
  if not points:
    return None
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  err = lambda s: 0.0 if s.half_width is None else s.half_width
  xs = [x for series in points.values() for x, _ in series]
  if all(_is_number(x) for x in xs):
    for label, series in points.items():
      series = sorted(series, key=lambda p: p[0])
      ax.errorbar([x for x, _ in series], [s.mean for _, s in series], yerr=[err(s) for _, s in series], fmt="o-",
                  capsize=3, label=label or None)
    if log_scale(xs):
      ax.set_xscale("log")
  else:
    categories = list(dict.fromkeys(str(x) for x in xs))
    width = 0.8 / len(points)
    for i, (label, series) in enumerate(points.items()):
      by_category = {str(x): s for x, s in series}
      positions = [c + (i - (len(points) - 1) / 2) * width for c in range(len(categories))]
      heights = [by_category[c].mean if c in by_category else math.nan for c in categories]
      errors = [err(by_category[c]) if c in by_category else 0.0 for c in categories]
      bars = ax.bar(positions, heights, width, yerr=errors, capsize=3, label=label or None)
      ax.bar_label(bars, fmt="%.4g", fontsize="x-small", padding=2)
    long_names = len(categories) > 6 or max(len(c) for c in categories) > 12
    ax.set_xticks(range(len(categories)), categories, rotation=25 if long_names else 0,
                  ha="right" if long_names else "center", fontsize="small" if long_names else None)
    values = [s.mean for series in points.values() for _, s in series]
    spans = [err(s) for series in points.values() for _, s in series]
    if values:  # differences between groups are small next to the metric itself; start the axis near them
      low, high = min(values) - max(spans), max(values) + max(spans)
      pad = (high - low) * 0.3 or abs(high) * 0.05 or 1.0
      ax.set_ylim(max(0.0, low - pad) if low >= 0 else low - pad, high + pad)
  ax.set_xlabel(field or "group")
  unit = f" ({loss_unit(groups)})" if metric == "loss" else ""
  ax.set_ylabel(f"final {metric}{unit}")
  unfinished = sum(not r.finished for g in groups for r in g.runs)
  ax.set_title(f"final {metric}{f' vs {field}' if field else ' by group'}: mean over seeds, 95% CI"
               + (f" ({unfinished} run(s) unfinished)" if unfinished else ""))
  ax.grid(alpha=0.3)
  if any(points):
    ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path

