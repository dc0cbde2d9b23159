r"""Collect the runs under a directory into one table and a few plots, for comparing them and for papers.

  python -m lmjax.report runs/positions [--metric=loss] [--x=model.position] [--out=DIR]

A run is any directory, at any depth, holding metrics.jsonl and config.json (what lmjax.main writes). Writes
report.md and report.csv (one row per run: the config fields that differ between runs, final and best eval
metrics, throughput), loss_curves.png, and <metric>_vs_<field>.png when one field is swept or --x names one.
The markdown table is also printed, ready to paste.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from absl import app, flags

from lmjax import console, eval_results
from lmjax.cli import describe_command
from lmjax.config import base_config, flatten
from lmjax.writers import read_metrics

METRICS = ("loss", "perplexity", "bits_per_char", "bits_per_byte", "accuracy")
HIGHER_IS_BETTER = {"accuracy"}
MISSING = "-"
# A run that logged its size in metrics.jsonl wins; otherwise the line lmjax.main logs when the model is built.
PARAM_KEYS = ("num_params", "params", "parameters")
PARAM_LOG = re.compile(r"Model \S+: ([\d,]+) parameters")
LOG_FILES = ("sweep.log", "train.log")


def final_step(config: dict) -> int | None:
  """The step of a finished run's last eval record, from its (nested) config."""
  try:
    if config.get("model", {}).get("name") == "ngram":  # fitted in one pass, recorded as step 1
      return 1
    return int(config["train"]["num_steps"])
  except (AttributeError, KeyError, TypeError, ValueError):
    return None


def _final_step_of(workdir: Path) -> int | None:
  try:
    return final_step(json.loads((workdir / "config.json").read_text()))
  except (OSError, ValueError):
    return None


def is_finished(workdir: str | os.PathLike, num_steps: int | None = None) -> bool:
  """An eval record at the final step, and (for models that keep checkpoints) a checkpoint there.

  `num_steps` is the step the run must reach; the sweep passes the one it would run to, so raising
  train.num_steps makes finished points run on. Default: the final step of the workdir's config.json.
  """
  workdir = Path(workdir)
  num_steps = _final_step_of(workdir) if num_steps is None else num_steps
  if num_steps is None:
    return False
  if not any(r.get("split") == "eval" and r.get("step", -1) >= num_steps for r in read_metrics(workdir)):
    return False
  checkpoints = workdir / "checkpoints"
  if not checkpoints.is_dir():  # count-based models fit in one pass and keep no checkpoints
    return True
  return any(d.name.isdigit() and int(d.name) >= num_steps for d in checkpoints.iterdir())


@dataclasses.dataclass
class Run:
  name: str
  path: Path
  config: dict[str, Any]  # flattened: {"model.position": "rope", ...}
  records: list[dict]
  finished: bool
  num_steps: int | None  # the final step

  @property
  def last_step(self) -> int | None:
    steps = [r["step"] for r in self.records if isinstance(r.get("step"), (int, float))]
    return int(max(steps)) if steps else None

  def series(self, split: str, metric: str) -> list[tuple[int, float]]:
    """(step, value) in step order; a step logged twice (a resumed run) keeps its last record."""
    points = {r["step"]: float(r[metric]) for r in self.records
              if r.get("split") == split and isinstance(r.get(metric), (int, float)) and "step" in r}
    return sorted(points.items())

  def final(self, split: str, metric: str) -> float | None:
    series = self.series(split, metric)
    return series[-1][1] if series else None

  def best(self, split: str, metric: str) -> float | None:
    values = [v for _, v in self.series(split, metric) if math.isfinite(v)]
    if not values:
      return None
    return max(values) if metric in HIGHER_IS_BETTER else min(values)

  @property
  def eval_splits(self) -> list[str]:
    return sorted({r["split"] for r in self.records if r.get("split") not in (None, "train")},
                  key=lambda s: (s != "eval", s))

  @property
  def params(self) -> int | None:
    for r in self.records:
      for key in PARAM_KEYS:
        if isinstance(r.get(key), (int, float)):
          return int(r[key])
    for name in LOG_FILES:
      try:
        found = PARAM_LOG.findall((self.path / name).read_text(errors="replace"))
      except OSError:
        continue
      if found:
        return int(found[-1].replace(",", ""))
    return None


def find_runs(root: Path) -> list[Path]:
  """Every directory under root holding metrics.jsonl and config.json; a run's own subdirectories are not searched."""
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    if "metrics.jsonl" in filenames and "config.json" in filenames:
      found.append(Path(dirpath))
      dirnames.clear()
    else:
      dirnames.sort()
  return found


def load_runs(root: Path) -> list[Run]:
  defaults = flatten(base_config().to_dict())
  runs = []
  for path in find_runs(root):
    try:
      nested = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
      nested = {}
    saved = flatten(nested) if isinstance(nested, dict) else {}
    # Fields added to lmjax after a run started count as their defaults, so they do not look swept.
    config = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    name = path.relative_to(root).as_posix() if path != root else root.resolve().name
    steps = final_step(nested) if isinstance(nested, dict) else None
    runs.append(Run(name, path, config, read_metrics(path), is_finished(path, steps), steps))
  return sorted(runs, key=lambda r: r.name)


def _sweep_order(root: Path) -> list[str]:
  """Fields in the order the sweep names them (sweep.json), so the table reads like the sweep."""
  try:
    points = json.loads((root / "sweep.json").read_text())["points"]
    return list(dict.fromkeys(f for p in points for f in p["overrides"]))
  except (OSError, ValueError, KeyError, TypeError):
    return []


def differing_fields(runs: Sequence[Run], order: Sequence[str] = ()) -> list[str]:
  keys = {k for r in runs for k in r.config}
  differ = [k for k in keys if len({json.dumps(r.config.get(k), sort_keys=True) for r in runs}) > 1]
  rank = {f: i for i, f in enumerate(order)}
  return sorted(differ, key=lambda f: (rank.get(f, len(rank)), f))


def resolve_field(name: str, runs: Sequence[Run]) -> str:
  """'position' finds model.position, if exactly one field ends that way."""
  keys = sorted({k for r in runs for k in r.config})
  if name in keys:
    return name
  matches = [k for k in keys if k.endswith(f".{name}")]
  if len(matches) == 1:
    return matches[0]
  hint = f"it could be any of {', '.join(matches)}" if matches else "no config field has that name"
  raise ValueError(f"--x={name}: {hint}; give the full name, e.g. --x=model.position")


def _metrics_of(runs: Sequence[Run], split: str) -> list[str]:
  present = {m for r in runs for m in METRICS if r.series(split, m)}
  return [m for m in METRICS if m in present]


def table(runs: Sequence[Run], fields: Sequence[str], metric: str, *, full: bool) -> tuple[list[str], list[dict]]:
  """Columns and raw-valued rows. `full` (the CSV) has final and best of every metric; the markdown keeps the
  final of each and the best of `metric`, so it fits a page."""
  splits = sorted({s for r in runs for s in r.eval_splits}, key=lambda s: (s != "eval", s))
  with_params = any(r.params is not None for r in runs)
  columns = ["run", *fields, *(["params"] if with_params else []), "steps"]
  columns += ["num_steps", "finished"] if full else []
  metric_columns = {}  # column -> (split, metric, final or best)
  for split in splits:
    names = _metrics_of(runs, split)
    metric_columns.update({f"{split}/{m}": (split, m, "final") for m in names})
    metric_columns.update({f"{split}/best_{m}": (split, m, "best") for m in names if full or m == metric})
  # Downstream scores from each run's evals/*.json (lmjax.evaluate): '<task>/<metric>', 'ppl-<source>/<metric>'.
  evals = {r.name: eval_results.columns(r.path) for r in runs}
  eval_columns = sorted({c for values in evals.values() for c in values})
  columns += [*metric_columns, *eval_columns, "tokens_per_s"]
  rows = []
  for r in runs:
    row: dict[str, Any] = {"run": r.name, **{f: r.config.get(f) for f in fields}, "params": r.params,
                           "steps": r.last_step, "num_steps": r.num_steps, "finished": r.finished,
                           "tokens_per_s": r.final("train", "tokens_per_s")}
    for column, (split, m, kind) in metric_columns.items():
      row[column] = r.final(split, m) if kind == "final" else r.best(split, m)
    row.update({c: evals[r.name].get(c) for c in eval_columns})
    rows.append(row)
  return columns, rows


def _cell(column: str, value: Any, row: dict) -> str:
  if column == "steps":
    if value is None:
      return MISSING
    return f"{value}" if row["finished"] else f"{value}/{row['num_steps'] or '?'} (unfinished)"
  if value is None:
    return MISSING
  if column in ("params", "tokens_per_s"):
    return f"{value:,.0f}"
  if isinstance(value, float) and "/" in column:
    return f"{value:.4f}"
  if isinstance(value, bool):
    return str(value).lower()
  return str(value)


def markdown(columns: Sequence[str], rows: Sequence[dict]) -> str:
  escape = lambda text: text.replace("|", "\\|")
  lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
  for row in rows:
    lines.append("| " + " | ".join(escape(_cell(c, row.get(c), row)) for c in columns) + " |")
  return "\n".join(lines) + "\n"


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict]) -> None:
  """Raw values at full precision; a missing value is an empty cell, which spreadsheets and pandas read as NA."""
  with path.open("w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    for row in rows:
      writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_loss_curves(runs: Sequence[Run], path: Path) -> Path | None:
  """Train loss as lines, eval loss as dashed lines with markers, one colour per run."""
  if not any(r.series("train", "loss") or r.series("eval", "loss") for r in runs):
    return None
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(8, 5))
  colors = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20").colors
  for i, r in enumerate(runs):
    color = colors[i % len(colors)]
    label = r.name if r.finished else f"{r.name} (unfinished)"
    train = r.series("train", "loss")
    if train:
      ax.plot(*zip(*train), "-", color=color, label=label, linewidth=1.2, marker="." if len(train) == 1 else None)
    evals = r.series("eval", "loss")
    if evals:
      ax.plot(*zip(*evals), "o--", color=color, markersize=4, label=None if train else label)
  ax.set_xlabel("step")
  ax.set_ylabel("loss (nats/token)")
  ax.set_title("train loss (solid) and eval loss (dashed, markers)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small", loc="upper right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def log_scale(values: Sequence[float]) -> bool:
  """Learning rates and the like are swept over decades; on a linear axis the small ones would pile up."""
  return min(values) > 0 and max(values) / min(values) > 10


def plot_metric_vs(runs: Sequence[Run], field: str, others: Sequence[str], metric: str, path: Path) -> Path | None:
  """The final eval metric against one field; one series per eval split (such as eval_len256, the same text at
  another context length) and combination of the other differing fields."""
  splits = sorted({s for r in runs for s in r.eval_splits}, key=lambda s: (s != "eval", s))
  points = [(r, s, r.final(s, metric)) for r in runs for s in splits]
  points = [(r, s, v) for r, s, v in points if v is not None]
  if not points:
    return None
  plt = _pyplot()
  groups: dict[str, list[tuple[Any, float]]] = {}
  for r, split, v in points:
    parts = [split] if len(splits) > 1 else []
    label = ", ".join(parts + [f"{o.rsplit('.', 1)[-1]}={r.config.get(o)}" for o in others])
    groups.setdefault(label, []).append((r.config.get(field), v))
  fig, ax = plt.subplots(figsize=(7, 4.5))
  xs = [x for series in groups.values() for x, _ in series]
  if all(_is_number(x) for x in xs):
    for label, series in groups.items():
      ax.plot(*zip(*sorted(series)), "o-", label=label or None)
    if log_scale(xs):
      ax.set_xscale("log")
  else:
    categories = list(dict.fromkeys(str(x) for x in xs))
    width = 0.8 / len(groups)
    for i, (label, series) in enumerate(groups.items()):
      by_category = {str(x): v for x, v in series}
      positions = [c + (i - (len(groups) - 1) / 2) * width for c in range(len(categories))]
      heights = [by_category.get(c, math.nan) for c in categories]
      bars = ax.bar(positions, heights, width, label=label or None)
      ax.bar_label(bars, fmt="%.4f", fontsize="small")
    ax.set_xticks(range(len(categories)), categories)
    values = [v for _, _, v in points if math.isfinite(v)]
    if values:  # differences between runs are small next to the metric itself; start the axis near them
      low, high = min(values), max(values)
      pad = (high - low) * 0.5 or abs(high) * 0.05 or 1.0
      ax.set_ylim(max(0.0, low - pad) if low >= 0 else low - pad, high + pad)
  ax.set_xlabel(field)
  ax.set_ylabel(f"final eval {metric}")
  unfinished = len({id(r) for r, _, _ in points if not r.finished})
  ax.set_title(f"eval {metric} vs {field}" + (f" ({unfinished} run(s) unfinished)" if unfinished else ""))
  ax.grid(alpha=0.3)
  if any(groups):
    ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def report(root: str | os.PathLike, metric: str = "loss", x: str = "",
           out: str | os.PathLike | None = None) -> tuple[str, list[Path]]:
  """Writes the table, CSV and plots; returns the markdown table and the files. ValueError for bad input."""
  root = Path(root)
  if not root.is_dir():
    raise ValueError(f"{root} is not a directory; give the directory that holds the runs (e.g. a sweep's --workdir)")
  runs = load_runs(root)
  if not runs:
    raise ValueError(f"no runs under {root}: a run is a directory holding metrics.jsonl and config.json")
  available = sorted({m for r in runs for s in r.eval_splits for m in METRICS if r.series(s, m)})
  if metric not in available:
    raise ValueError(f"--metric={metric} is not in the eval records; choose one of "
                     f"{', '.join(available) or '(none yet: no run has evaluated)'}")
  fields = differing_fields(runs, _sweep_order(root))
  field = resolve_field(x, runs) if x else (fields[0] if len(fields) == 1 else "")
  out = Path(out) if out else root
  out.mkdir(parents=True, exist_ok=True)

  columns, rows = table(runs, fields, metric, full=False)
  text = markdown(columns, rows)
  (out / "report.md").write_text(text)
  write_csv(out / "report.csv", *table(runs, fields, metric, full=True))
  written = [out / "report.md", out / "report.csv", plot_loss_curves(runs, out / "loss_curves.png")]
  if field:
    others = [f for f in fields if f != field]
    written.append(plot_metric_vs(runs, field, others, metric, out / f"{metric}_vs_{field}.png"))
  return text, [p for p in written if p]


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    print("error: give one directory: python -m lmjax.report DIR [--metric=loss] [--x=FIELD] [--out=DIR]",
          file=sys.stderr)
    sys.exit(2)
  console.setup(uses_tfds=False)
  try:
    text, written = report(argv[1], flags.FLAGS.metric, flags.FLAGS.x, flags.FLAGS.out or None)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(text, end="", flush=True)  # stdout is the table alone, ready to paste
  print(f"wrote {', '.join(map(str, written))}", file=sys.stderr)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but a bad flag is one line, not a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: bad flag: {e}", file=sys.stderr)
    sys.exit(2)


def run() -> None:
  """The `lmjax-report` command."""
  # Defined here, not at import, so that lmjax.sweep (which imports is_finished) does not grow these flags.
  flags.DEFINE_string("metric", "loss", "Eval metric for the 'best' column and the metric plot.")
  flags.DEFINE_string("x", "", "Config field for the metric plot, e.g. model.position (or just position); "
                      "default: the one field that differs between runs, if there is exactly one.")
  flags.DEFINE_string("out", "", "Where report.md, report.csv and the plots go; default: the runs directory.")
  describe_command(__name__)
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
