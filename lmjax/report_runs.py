"""The runs under a directory, read back and grouped for lmjax.report: each run's config, records, size and
training FLOPs; replicate groups (runs that differ only in their seeds); choosing each group's setting on
validation; values at matched compute. No tables or files here: lmjax/report.py writes those.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

from lmjax import provenance, stats
from lmjax.config import base_config, flatten
from lmjax.registry import MODELS, TASKS
from lmjax.writers import read_metrics

# Known metrics first, in this order; any other number an eval record holds is a metric too, after them.
METRICS = ("loss", "perplexity", "bits_per_char", "bits_per_byte", "accuracy")
# Numbers in records that count or describe rather than measure.
BOOKKEEPING = {"step", "time", "tokens", "windows", "examples", "words", "decoded", "num_params", "flops_per_step",
               "skipped_steps", "steps_per_s", "tokens_per_s", "learning_rate", "grad_norm"}
_HIGHER = re.compile(r"accuracy|f1|bleu|chrf|rouge|exact_match|mcc|pearson|spearman|precision|recall|match")
# The fields a replicate changes (lmjax.sweep's h.seeds): runs that differ only in these form one group.
SEED_FIELDS = ("seed", "data.shuffle_seed")
# A run that logged its size in metrics.jsonl wins; otherwise the line lmjax.main logs when the model is built.
PARAM_KEYS = ("num_params", "params", "parameters")
PARAM_LOG = re.compile(r"Model \S+: ([\d,]+) parameters")
LOG_FILES = ("sweep.log", "train.log")


def higher_is_better(metric: str) -> bool:
  return bool(_HIGHER.search(metric)) and "loss" not in metric


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
              if r.get("split") == split and _is_number(r.get(metric)) and "step" in r}
    return sorted(points.items())

  def final(self, split: str, metric: str) -> float | None:
    series = self.series(split, metric)
    return series[-1][1] if series else None

  def best(self, split: str, metric: str) -> float | None:
    values = [v for _, v in self.series(split, metric) if math.isfinite(v)]
    if not values:
      return None
    return max(values) if higher_is_better(metric) else min(values)

  @property
  def eval_splits(self) -> list[str]:
    return _split_order({r["split"] for r in self.records if r.get("split") not in (None, "train")})

  @property
  def seeds(self) -> tuple[Any, ...]:
    return tuple(self.config.get(f) for f in SEED_FIELDS)

  @property
  def task(self) -> str:
    return str(self.config.get("task", "causal_lm"))

  @property
  def loss_unit(self) -> str:
    return TASKS.get(self.task).loss_unit if self.task in TASKS else "the task's own unit"

  @property
  def deterministic(self) -> bool:
    """Fitted by counting (the n-gram): no seed changes it, so one run is its exact value."""
    name = self.config.get("model.name")
    return name in MODELS and MODELS.get(name).fit_only

  @property
  def flops_per_step(self) -> float | None:
    """Training FLOPs of one step, as the model family counts them (recorded with the first train record)."""
    for r in self.records:
      if _is_number(r.get("flops_per_step")):
        return float(r["flops_per_step"])
    return None

  @property
  def train_flops(self) -> float | None:
    fps, step = self.flops_per_step, self.last_step
    return None if fps is None or step is None else fps * step

  @property
  def params(self) -> int | None:
    for r in self.records:
      for key in PARAM_KEYS:
        if _is_number(r.get(key)):
          return int(r[key])
    for name in LOG_FILES:
      try:
        found = PARAM_LOG.findall((self.path / name).read_text(errors="replace"))
      except OSError:
        continue
      if found:
        return int(found[-1].replace(",", ""))
    return None


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _split_order(splits) -> list[str]:
  """'eval' first, then its variants (eval_len512, eval/<source>), then the rest (test) alphabetically."""
  return sorted(splits, key=lambda s: (s != "eval", not s.startswith("eval"), s))


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
    saved = flatten(provenance.config_fields(nested)) if isinstance(nested, dict) else {}
    # Fields added to lmjax after a run started count as their defaults, so they do not look swept.
    config = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    name = path.relative_to(root).as_posix() if path != root else root.resolve().name
    steps = final_step(nested) if isinstance(nested, dict) else None
    runs.append(Run(name, path, config, read_metrics(path), is_finished(path, steps), steps))
  return sorted(runs, key=lambda r: r.name)


def read_manifest(root: Path) -> dict[str, Any]:
  """sweep.json of the directory (lmjax.sweep), or {} for runs that no sweep made."""
  try:
    manifest = json.loads((root / "sweep.json").read_text())
    return manifest if isinstance(manifest, dict) else {}
  except (OSError, ValueError):
    return {}


def _sweep_order(root: Path) -> list[str]:
  """Fields in the order the sweep names them (sweep.json), so the table reads like the sweep."""
  try:
    points = read_manifest(root)["points"]
    return list(dict.fromkeys(f for p in points for f in p["overrides"]))
  except (KeyError, TypeError):
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


def metric_names(runs: Sequence[Run], split: str) -> list[str]:
  """Every metric some run recorded for `split`: the known ones in their order, then the others by name."""
  present = {k for r in runs for rec in r.records if rec.get("split") == split
             for k, v in rec.items() if _is_number(v) and k not in BOOKKEEPING}
  return [m for m in METRICS if m in present] + sorted(present - set(METRICS))


def eval_splits(runs: Sequence[Run]) -> list[str]:
  return _split_order({s for r in runs for s in r.eval_splits})


# --- groups of replicates -----------------------------------------------------------------------------------------

@dataclasses.dataclass
class Group:
  """The runs of one setting: they differ only in their seeds."""
  name: str
  fields: dict[str, Any]  # the differing, non-seed fields and their values
  runs: list[Run]
  overrides: dict[str, Any] | None = None  # the sweep point that made it (sweep.json), in the sweep's field order

  def values(self, split: str, metric: str, at_flops: float | None = None) -> list[float]:
    out = []
    for r in self.runs:
      v = r.final(split, metric) if at_flops is None else value_at_flops(r, split, metric, at_flops)
      if v is not None and math.isfinite(v):
        out.append(v)
    return out

  def summary(self, split: str, metric: str, at_flops: float | None = None) -> stats.Summary | None:
    return stats.summarize(self.values(split, metric, at_flops))

  @property
  def n(self) -> int:
    return len(self.runs)

  @property
  def flops_per_step(self) -> float | None:
    values = [r.flops_per_step for r in self.runs]
    return None if not values or any(v is None for v in values) else values[0]

  @property
  def deterministic(self) -> bool:
    return all(r.deterministic for r in self.runs)


def _label(fields: dict[str, Any]) -> str:
  if not fields:
    return "default"
  short = {f: f.rsplit(".", 1)[-1] for f in fields}
  clash = {s for s in short.values() if list(short.values()).count(s) > 1}
  return ",".join(f"{f if short[f] in clash else short[f]}={_text(v)}" for f, v in fields.items())


def _text(value: Any) -> str:
  return str(value).lower() if isinstance(value, bool) else str(value)


def make_groups(runs: Sequence[Run], fields: Sequence[str], manifest: dict[str, Any]) -> list[Group]:
  """Runs grouped by their non-seed differing fields, named as the sweep named them where it did."""
  keys = [f for f in fields if f not in SEED_FIELDS]
  # sweep.json names each point by its path under the sweep's directory, which is the report's root here.
  point_group = {p.get("name"): p.get("group") for p in manifest.get("points", []) if isinstance(p, dict)}
  overrides = {g.get("name"): g.get("overrides") for g in manifest.get("groups", []) if isinstance(g, dict)}
  by_key: dict[str, Group] = {}
  for r in runs:
    values = {f: r.config.get(f) for f in keys}
    key = json.dumps(values, sort_keys=True, default=str)
    if key not in by_key:
      by_key[key] = Group(_label(values), values, [])
    by_key[key].runs.append(r)
  for g in by_key.values():  # the sweep's name for the group, when every run says the same
    names = {point_group.get(r.name) for r in g.runs}
    if len(names) == 1 and None not in names:
      g.name = names.pop()
      g.overrides = overrides.get(g.name)
    elif g.n == 1 and not g.fields:
      g.name = g.runs[0].name
  return list(by_key.values())


# --- compute ------------------------------------------------------------------------------------------------------

def value_at_flops(run: Run, split: str, metric: str, flops: float) -> float | None:
  """The run's eval metric when it had spent `flops` training FLOPs: linear in log(FLOPs) between its two eval
  records around that point; None before its first eval record, or past its last, or without a FLOPs count."""
  fps = run.flops_per_step
  series = run.series(split, metric)
  if fps is None or not series or flops <= 0:
    return None
  points = [(step * fps, v) for step, v in series if step > 0]
  for (f0, v0), (f1, v1) in zip(points, points[1:]):
    if f0 <= flops <= f1:
      w = 0.0 if f1 == f0 else (math.log(flops) - math.log(f0)) / (math.log(f1) - math.log(f0))
      return v0 + w * (v1 - v0)
  if points and math.isclose(points[-1][0], flops, rel_tol=1e-9):
    return points[-1][1]
  return None


def matched_budget(groups: Sequence[Group]) -> float | None:
  """The most training FLOPs every group with a count has spent: the smallest final count of a finished run (of
  any run while none has finished)."""
  counted = [r for g in groups if g.flops_per_step is not None for r in g.runs if r.train_flops is not None]
  finals = [r.train_flops for r in counted if r.finished] or [r.train_flops for r in counted]
  return min(finals) if len({id(g) for g in groups if g.flops_per_step is not None}) >= 2 and finals else None
