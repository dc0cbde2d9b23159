"""The helpers a sweep file's get_hyper(h) builds its points with, and the directory name of a point.

`h.sweep`, `h.product`, `h.zip`, `h.seeds`, `h.tune` and `h.selected` each return a list of points (dicts of
config overrides), so results nest and concatenate; lmjax.sweep runs them (see its docstring for the file format).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import numbers
import os
import re
from pathlib import Path
from typing import Any, Sequence

import ml_collections

from lmjax.report import SELECTION_FILE
from lmjax.report_runs import SEED_FIELDS

Point = dict[str, Any]

# Short names keep directory names readable; any other field is named by its last component.
SHORT_NAMES = {"learning_rate": "lr", "min_learning_rate": "min_lr", "weight_decay": "wd", "warmup_steps": "warmup",
               "num_layers": "layers", "num_heads": "heads", "num_kv_heads": "kv_heads", "batch_size": "bs",
               "num_steps": "steps"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
_MAX_NAME = 120
# What a replicate changes (SEED_FIELDS: points that differ only in these are one group, aggregated by the report).
VARY = {"both": SEED_FIELDS, "init": ("seed",), "data": ("data.shuffle_seed",)}


class HyperError(ValueError):
  """A sweep that cannot be run as written; the message is one line naming the problem and the fix."""


class Hyper:
  """The `h` that get_hyper receives. Every helper returns a list of points, so results nest and concatenate.

  `h.arg` is the config's argument (FILE.py:ARG), so one file can describe several sweeps (tuning, final).
  """

  def __init__(self, base: ml_collections.ConfigDict | None = None, arg: str = "",
               workdir: str | os.PathLike | None = None):
    self._base = base
    self.arg = arg
    self.workdir = None if workdir is None else Path(workdir)  # the sweep's --workdir
    self.tuned: list[str] = []  # fields h.tune swept, in order; recorded in sweep.json for lmjax.report --select

  def seeds(self, n: int, vary: str = "both") -> list[Point]:
    """n replicates: seed and data.shuffle_seed (vary='both'), or only one ('init' / 'data'), counting up from
    the config's own values, so replicate 0 is the config as written."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
      raise HyperError(f"h.seeds(n) needs a positive number of seeds, got {n!r}")
    if vary not in VARY:
      raise HyperError(f"h.seeds(n, vary={vary!r}): vary is one of {', '.join(VARY)}")
    start = {"seed": 0, "data.shuffle_seed": 0}
    if self._base is not None:
      start = {"seed": int(self._base.seed), "data.shuffle_seed": int(self._base.data.shuffle_seed)}
    return [{field: start[field] + i for field in VARY[vary]} for i in range(n)]

  def tune(self, points: list[Point] | None = None, *, learning_rate: Sequence[float],
           warmup_steps: Sequence[int] | None = None) -> list[Point]:
    """Every point (e.g. one per architecture; None: the config alone) at every learning rate and, if given,
    warmup length: h.product of them, with optim.learning_rate (and optim.warmup_steps) marked as tuned, so that
    lmjax.report --select chooses among them per point on a validation metric."""
    sweeps = [self.sweep("optim.learning_rate", learning_rate)]
    if warmup_steps is not None:
      sweeps.append(self.sweep("optim.warmup_steps", warmup_steps))
    fields = [s for sweep in sweeps for s in _fields(sweep)]
    if points is not None:
      clash = sorted(set(_fields(points)) & set(fields))
      if clash:
        raise HyperError(f"h.tune sweeps {', '.join(clash)} itself; leave it out of the points it tunes")
    self.tuned += [f for f in fields if f not in self.tuned]
    return self.product([points, *sweeps] if points is not None else sweeps)

  def selected(self, path: str | os.PathLike | None = None) -> list[Point]:
    """The points lmjax.report --select chose (its selection.json; a directory means the file in it; default: the
    sweep's --workdir): one per group, with the setting that was best on the validation metric."""
    if path is None and self.workdir is None:
      raise HyperError("h.selected() without a path needs the sweep's --workdir; give the selection.json path")
    path = Path(path) if path is not None else self.workdir
    path = path / SELECTION_FILE if path.is_dir() or not path.suffix else path
    try:
      record = json.loads(path.read_text())
      chosen = [dict(g["chosen"]) for g in record["groups"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise HyperError(f"h.selected: cannot read {path} ({e}); run the tuning sweep, then lmjax.report DIR "
                       f"--select=eval/<metric>, which writes it") from None
    if not chosen:
      raise HyperError(f"h.selected: {path} chose no points; check the tuning sweep's runs")
    return [{k: plain_value(v) for k, v in p.items() if k not in SEED_FIELDS} for p in chosen]

  def sweep(self, field: str, values: Sequence[Any]) -> list[Point]:
    if not isinstance(field, str) or not field or field.startswith("config."):
      raise HyperError(f"h.sweep needs a field name like 'model.position' (without 'config.'), got {field!r}")
    if isinstance(values, (str, bytes, dict)) or not isinstance(values, Sequence) or not values:
      raise HyperError(f"h.sweep({field!r}, values) needs a non-empty list of values, got {values!r}")
    return [{field: plain_value(v)} for v in values]

  def product(self, sweeps: Sequence[list[Point]]) -> list[Point]:
    """Every combination, the last sweep varying fastest (as nested loops would)."""
    _check_disjoint("h.product", sweeps)
    return [_merge(combo) for combo in itertools.product(*sweeps)]

  def zip(self, sweeps: Sequence[list[Point]]) -> list[Point]:
    """Sweeps in lockstep: the i-th point combines the i-th point of each."""
    _check_disjoint("h.zip", sweeps)
    lengths = [len(s) for s in sweeps]
    if len(set(lengths)) > 1:
      described = ", ".join(f"{n} ({', '.join(_fields(s)) or 'no fields'})" for n, s in zip(lengths, sweeps))
      raise HyperError(f"h.zip needs sweeps of equal length, got {described}; use h.product for every combination")
    return [_merge(combo) for combo in zip(*sweeps)]

  def __getattr__(self, name: str) -> Any:
    raise AttributeError(f"h.{name} is not a sweep helper; use h.sweep(field, values), h.product([...]), "
                         f"h.zip([...]), h.seeds(n), h.tune(points, learning_rate=[...]) or h.selected(path)")


def plain_value(value: Any) -> Any:
  """numpy scalars to Python ones, so that values print, compare and hash like the literals a person wrote."""
  if isinstance(value, bool) or value is None or isinstance(value, str):
    return value
  if isinstance(value, numbers.Integral):
    return int(value)
  if isinstance(value, numbers.Real):
    return float(value)
  return value


def _fields(points: Sequence[Point]) -> list[str]:
  return list(dict.fromkeys(f for p in points for f in p))


def _check_disjoint(helper: str, sweeps: Sequence[list[Point]]) -> None:
  if isinstance(sweeps, (str, dict)) or not isinstance(sweeps, Sequence) or not all(
      isinstance(s, list) and all(isinstance(p, dict) for p in s) for s in sweeps):
    raise HyperError(f"{helper} takes a list of sweeps, e.g. {helper}([h.sweep('a.b', [1, 2]), h.sweep('c.d', [3])])")
  seen: set[str] = set()
  for s in sweeps:
    fields = set(_fields(s))
    if fields & seen:
      raise HyperError(f"{helper} combines sweeps that share the field(s) {', '.join(sorted(fields & seen))}; "
                       f"sweep each field once")
    seen |= fields


def _merge(points: Sequence[Point]) -> Point:
  out: Point = {}
  for p in points:
    out.update(p)
  return out


def flag_value(value: Any) -> str:
  """How config_flags reads the value back: str as is, bool as true/false, numbers exactly (repr)."""
  if isinstance(value, bool):
    return "true" if value else "false"
  return value if isinstance(value, str) else repr(value)


def split_replicate(point: Point) -> tuple[Point, Point]:
  """(the point's group fields, its seed fields)."""
  return ({k: v for k, v in point.items() if k not in SEED_FIELDS},
          {k: v for k, v in point.items() if k in SEED_FIELDS})


def point_name(point: Point) -> str:
  """A directory name that depends on the point alone, so reruns and grown sweeps find the same workdirs. A
  replicate (a point setting seed fields) lives in its group's directory: 'position=rope/seed=1,shuffle_seed=1'."""
  group, seeds = split_replicate(point)
  if seeds and group:
    return f"{point_name(group)}/{point_name(seeds)}"
  if not point:
    return "default"
  shorts = {f: SHORT_NAMES.get(f.rsplit(".", 1)[-1], f.rsplit(".", 1)[-1]) for f in point}
  clashes = {s for s in shorts.values() if list(shorts.values()).count(s) > 1}
  parts, lossy = [], False
  for field, value in point.items():
    key = field if shorts[field] in clashes else shorts[field]
    text = flag_value(value)
    safe = _UNSAFE.sub("_", text)
    lossy |= safe != text or not text
    parts.append(f"{key}={safe}")
  name = ",".join(parts)
  if lossy or len(name) > _MAX_NAME:  # two values that sanitize alike must not share a directory
    digest = hashlib.sha1(json.dumps(point, sort_keys=True, default=repr).encode()).hexdigest()[:8]
    name = f"{name[:_MAX_NAME]}-{digest}"
  return name
