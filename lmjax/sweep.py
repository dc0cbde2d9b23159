r"""Run every point of a hyperparameter sweep, each in its own workdir and its own process.

  python -m lmjax.sweep --config=configs/sweep_example.py --workdir=runs/positions [--parallel=2] [--dry_run] \
      [--seeds=3 [--vary=both|init|data]]

A config file that defines `get_hyper(h)` next to `get_config(arg)` describes a sweep: `get_hyper` returns a list
of points, each a dict {field: value} of config overrides, built with the helpers on `h`:

  def get_hyper(h):
    return h.product([h.sweep("model.position", ["learned", "rope"]),
                      h.zip([h.sweep("optim.learning_rate", [1e-3, 3e-3]), h.sweep("optim.warmup_steps", [50, 100])])])

Each point runs `python -m lmjax.main --config=FILE --workdir=DIR/<name> --config.<field>=<value> ...` in a fresh
process, so a crash in one point leaves the others running. Rerunning the same command skips finished points and
resumes half-done ones from their latest checkpoint. Every point is checked against the config before anything
is launched.

Replicates: `h.seeds(n)` (or `--seeds=n` for a whole sweep) runs each point under n seeds, which change the
initialization (`seed`) and the order of the training data (`data.shuffle_seed`), or only one of them
(`vary='init'` / `'data'`). The replicates of a point are one group: they run in DIR/<group>/seed=<s>,...
and sweep.json lists them together, for lmjax.report to aggregate. `h.tune(points, learning_rate=[...],
warmup_steps=[...])` sweeps the optimizer settings of each point (an architecture, say) and marks them as tuned:
`lmjax.report DIR --select=eval/loss` picks each group's best setting on that validation metric and writes
DIR/selection.json, which `h.selected(path)` turns back into points (for the final sweep with more seeds).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from lmjax import console
from lmjax.cli import describe_command, fail, parse_flags
from lmjax.config import ConfigError
from lmjax.config_validation import validate
from lmjax.hyper import Hyper, HyperError, Point, flag_value, plain_value, point_name, split_replicate
from lmjax.report_runs import SEED_FIELDS, final_step, is_finished

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file with get_config and get_hyper, "
                                          "e.g. configs/sweep_example.py[:arg].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory holding one sub-workdir per point, and sweep.json.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Points to run at once.", lower_bound=1)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print one shell command per point and run nothing.")
_EVALUATE = flags.DEFINE_string("evaluate", "", "lmjax.evaluate's flags, run on every finished point, e.g. "
                                "'--tasks=lambada_openai --limit=500'; its scores join the report's columns.")
_SEEDS = flags.DEFINE_integer("seeds", 0, "Run every point under this many seeds (as h.seeds(n) would); 0: the "
                              "points as get_hyper gives them.", lower_bound=0)
_VARY = flags.DEFINE_enum("vary", "both", ("both", "init", "data"), "What --seeds varies: the initialization "
                          "(config.seed), the data order (config.data.shuffle_seed), or both.")
flags.mark_flags_as_required(["config", "workdir"])

PREEMPTED_EXIT_CODE = 75  # as lmjax.preemption: stopped by a signal; rerun to resume
_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def load_points(config_arg: str, base: ml_collections.ConfigDict | None = None, seeds: int = 0,
                vary: str = "both", workdir: str | os.PathLike | None = None) -> list[Point]:
  """Calls the file's get_hyper(h) (h.seeds counts from `base`'s seeds), then crosses every point with `seeds`
  replicates if asked (--seeds); HyperError names the file and what to change."""
  return load_sweep(config_arg, base, seeds, vary, workdir)[0]


def load_sweep(config_arg: str, base: ml_collections.ConfigDict | None = None, seeds: int = 0,
               vary: str = "both", workdir: str | os.PathLike | None = None) -> tuple[list[Point], list[str]]:
  """(points, the fields h.tune marked as tuned)."""
  path, _, arg = config_arg.partition(":")
  spec = importlib.util.spec_from_file_location("lmjax_sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  get_hyper = getattr(module, "get_hyper", None)
  if not callable(get_hyper):
    raise HyperError(f"{path} defines no get_hyper(h); add one returning e.g. h.sweep('model.position', "
                     f"['learned', 'rope']), or train a single run with python -m lmjax.main")
  h = Hyper(base, arg, workdir)
  try:
    points = get_hyper(h)
  except (HyperError, AttributeError, TypeError, ValueError) as e:
    raise HyperError(f"{path}: get_hyper: {e}") from None
  if not isinstance(points, list) or not points or not all(
      isinstance(p, dict) and all(isinstance(k, str) for k in p) for p in points):
    raise HyperError(f"{path}: get_hyper must return a non-empty list of {{field: value}} dicts, as h.sweep, "
                     f"h.product and h.zip do; got {type(points).__name__}")
  points = [{k: plain_value(v) for k, v in p.items()} for p in points]
  if seeds:
    seeded = sorted({k for p in points for k in p if k in SEED_FIELDS})
    if seeded:
      raise HyperError(f"--seeds={seeds}: get_hyper in {path} already sets {', '.join(seeded)}; drop --seeds or "
                       f"the seeds in get_hyper (h.seeds)")
    points = h.product([points, h.seeds(seeds, vary)])
  return points, list(h.tuned)


@dataclasses.dataclass(frozen=True)
class SweepPoint:
  """One point, resolved: where it runs, the flags that make it, and the step count that makes it finished."""
  name: str
  overrides: Point
  workdir: Path
  args: tuple[str, ...]  # lmjax.main's arguments
  num_steps: int  # the step of its last eval record once finished
  group: str = ""  # the name of the point without its seed fields: replicates share it

  def command(self, python: str = "python") -> list[str]:
    return [python, "-m", "lmjax.main", *self.args]


def _set_field(config: ml_collections.ConfigDict, field: str, value: Any, where: str) -> None:
  section, *path = field.split(".")
  node, walked = config, []
  for key in [section, *path][:-1]:
    walked.append(key)
    if key not in node or not isinstance(node[key], ml_collections.ConfigDict):
      raise HyperError(f"{where} sets {field}, but config.{'.'.join(walked)} is not a config section; "
                       f"check the spelling against lmjax/config.py")
    node = node[key]
  leaf = field.rsplit(".", 1)[-1]
  prefix = f"config.{field.rsplit('.', 1)[0]}" if "." in field else "config"
  if leaf not in node:
    raise HyperError(f"{where} sets {field}, which is not a config field (a typo?); {prefix} has: "
                     f"{', '.join(sorted(node.keys()))}")
  if isinstance(node[leaf], ml_collections.ConfigDict):
    raise HyperError(f"{where} sets {field}, which is a section; sweep one of its fields: "
                     f"{', '.join(sorted(node[leaf].keys()))}")
  old = node[leaf]
  wrong_type = HyperError(f"{where} sets {field}={value!r}, but {field} takes "
                          f"{_KINDS.get(type(old), type(old).__name__)} (it is {old!r} here)")
  if isinstance(old, bool) != isinstance(value, bool) or not isinstance(value, (str, bool, int, float)):
    raise wrong_type
  try:
    node[leaf] = value
  except TypeError:
    raise wrong_type from None


def plan(config_arg: str, base: ml_collections.ConfigDict, base_overrides: Point, points: list[Point],
         workdir: str | os.PathLike) -> list[SweepPoint]:
  """Names, validates and builds the command of every point, so that a bad one stops the sweep before any runs."""
  path = config_arg.split(":", 1)[0]
  # A flag sets a field for the points that do not sweep it; a flag that no point would see is a mistake.
  unused = sorted(set(base_overrides).intersection(*points))
  if unused:
    raise HyperError(f"--config.{unused[0]} is set by every point of get_hyper in {path}, so the flag would "
                     f"change nothing; drop the flag or the sweep")
  planned: list[SweepPoint] = []
  names: dict[str, Point] = {}
  for point in points:
    name = point_name(point)
    config = base.copy_and_resolve_references()
    for field, value in base_overrides.items():  # already applied by the --config flag; again for other callers
      _set_field(config, field, value, f"--config.{field}")
    for field, value in point.items():
      _set_field(config, field, value, f"{path}: point {name}")
    try:
      validate(config)
    except ConfigError as e:
      raise HyperError(f"{path}: point {name}: {e}") from None
    if name in names:
      if names[name] == point:
        raise HyperError(f"{path}: get_hyper gives the point {point} twice; drop the duplicate")
      raise HyperError(f"{path}: the points {names[name]} and {point} would share the directory {name!r}; "
                       f"sweep fields with different last names, or one field per sweep")
    names[name] = point
    point_dir = Path(workdir) / name
    shared = [f"--config.{k}={flag_value(v)}" for k, v in base_overrides.items() if k not in point]
    args = (f"--config={config_arg}", f"--workdir={point_dir}", *shared,
            *(f"--config.{k}={flag_value(v)}" for k, v in point.items()))
    planned.append(SweepPoint(name, point, point_dir, args, final_step(config.to_dict()),
                              point_name(split_replicate(point)[0])))
  return planned


def groups_of(points: Sequence[SweepPoint]) -> dict[str, list[SweepPoint]]:
  """Points by group, in sweep order: a group's points are the replicates of one setting."""
  out: dict[str, list[SweepPoint]] = {}
  for p in points:
    out.setdefault(p.group or p.name, []).append(p)
  return out


def write_manifest(config_arg: str, base_overrides: Point, points: list[SweepPoint], workdir: Path,
                   outcomes: dict[str, str] | None = None, tuned: Sequence[str] = ()) -> None:
  """DIR/sweep.json: what the sweep is, for people, cluster scripts and lmjax.report.

  A sweep run again into the same DIR (a final sweep after a tuning one) adds its points to those recorded, so
  the file describes every run in DIR; `tuned` is kept from the first sweep that set it.
  """
  outcomes = outcomes or {}
  path = workdir / "sweep.json"
  previous: dict[str, Any] = {}
  try:
    previous = json.loads(path.read_text())
  except (OSError, ValueError):
    pass
  names = {p.name for p in points}
  kept = [q for q in previous.get("points", []) if isinstance(q, dict) and q.get("name") not in names]
  entries = kept + [{"name": p.name, "group": p.group or p.name, "workdir": str(p.workdir),
                     "overrides": p.overrides, "command": shlex.join(p.command()),
                     **({"outcome": outcomes[p.name]} if p.name in outcomes else {})} for p in points]
  grouped: dict[str, dict[str, Any]] = {}
  for entry in entries:
    group = grouped.setdefault(entry.get("group", entry["name"]), {
        "name": entry.get("group", entry["name"]), "points": [],
        "overrides": split_replicate(entry.get("overrides", {}))[0]})
    group["points"].append(entry["name"])
  record = {"config": config_arg, "overrides": base_overrides,
            "tuned": list(previous.get("tuned") or tuned), "groups": list(grouped.values()), "points": entries}
  workdir.mkdir(parents=True, exist_ok=True)
  tmp = workdir / "sweep.json.tmp"
  tmp.write_text(json.dumps(record, indent=2) + "\n")
  os.replace(tmp, workdir / "sweep.json")


class SubprocessRunner:
  """Runs a point as `python -m lmjax.main` with its output in sweep.log; `stop` passes a signal on to all."""

  def __init__(self, python: str = sys.executable):
    self.python = python
    self.stopping = False
    self._procs: dict[str, subprocess.Popen] = {}
    self._lock = threading.Lock()

  def __call__(self, point: SweepPoint) -> int | None:
    with self._lock:
      if self.stopping:
        return None
      point.workdir.mkdir(parents=True, exist_ok=True)
      log = (point.workdir / "sweep.log").open("a")
      log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(point.command(self.python))}\n")
      log.flush()
      proc = subprocess.Popen(point.command(self.python), stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)
      self._procs[point.name] = proc
    try:
      status = proc.wait()
      # A point the sweep stopped before its training loop could save has nothing to lose: resume, not failure.
      return PREEMPTED_EXIT_CODE if self.stopping and status < 0 else status
    finally:
      with self._lock:
        del self._procs[point.name]
      log.close()

  def stop(self, sig: int) -> None:
    with self._lock:
      self.stopping = True
      for proc in self._procs.values():
        proc.send_signal(sig)


def describe(status: int | None) -> str:
  if status is None:
    return "not started (the sweep was stopped)"
  if status == 0:
    return "finished"
  if status == PREEMPTED_EXIT_CODE:
    return f"stopped (exit status {status}); rerun the sweep to resume"
  if status < 0:
    return f"failed (killed by {signal.Signals(-status).name})"
  return f"failed (exit status {status})"


def run_points(points: list[SweepPoint], run_one: Callable[[SweepPoint], int | None], parallel: int = 1,
               log: Callable[[str], None] = print, stop: threading.Event | None = None) -> dict[str, int | None]:
  """Runs the unfinished points, `parallel` at a time; returns each one's exit status (None: not started).

  `run_one` is the only thing that touches processes, so tests inject a function in its place. Once `stop` is set,
  no further point starts.
  """
  stop = stop or threading.Event()
  todo = [p for p in points if not is_finished(p.workdir, p.num_steps)]
  statuses: dict[str, int | None] = {}
  lock = threading.Lock()
  unsafe_log = log

  def log(line: str) -> None:  # one whole line at a time: print from two threads can interleave its pieces
    with lock:
      unsafe_log(line)

  def one(point: SweepPoint) -> None:
    if stop.is_set():
      statuses[point.name] = None
      return
    start = time.monotonic()
    log(f"{point.name}: starting; output in {point.workdir / 'sweep.log'}")
    try:
      status = run_one(point)
    except Exception as e:  # a launcher problem (e.g. no python) fails the point, not the sweep
      log(f"{point.name}: could not run: {e}")
      status = 1
    statuses[point.name] = status
    if status is not None:
      log(f"{point.name} ({time.monotonic() - start:.0f} s): {describe(status)}")

  log(f"{len(todo)} of {len(points)} points to run ({len(points) - len(todo)} already finished), "
      f"{parallel} at a time")
  with ThreadPoolExecutor(max_workers=parallel) as pool:
    for future in [pool.submit(one, p) for p in todo]:
      future.result()
  return statuses


def outcomes(points: list[SweepPoint], statuses: dict[str, int | None]) -> dict[str, str]:
  """What happened to each point, in words; a point with no status was finished before the sweep started."""
  out = {}
  for p in points:
    text = describe(statuses[p.name]) if p.name in statuses else "skipped (already finished)"
    out[p.name] = f"{text}; see {p.workdir / 'sweep.log'}" if text.startswith("failed") else text
  return out


def evaluation_command(point: SweepPoint, evaluate_args: str, python: str = sys.executable) -> list[str]:
  """lmjax.evaluate on a point's workdir; --skip_existing leaves a point alone that already holds its scores."""
  return [python, "-m", "lmjax.evaluate", f"--workdir={point.workdir}", *shlex.split(evaluate_args),
          "--skip_existing"]


def evaluate_points(points: list[SweepPoint], evaluate_args: str, run_command: Callable[[list[str], Path], int],
                    log: Callable[[str], None] = print) -> dict[str, int]:
  """Runs lmjax.evaluate on every finished point, one after another; returns each one's exit status."""
  statuses = {}
  for point in points:
    if is_finished(point.workdir, point.num_steps):
      statuses[point.name] = run_command(evaluation_command(point, evaluate_args), point.workdir)
      log(f"{point.name}: evaluation {'done' if statuses[point.name] == 0 else describe(statuses[point.name])}; "
          f"output in {point.workdir / 'sweep.log'}")
  return statuses


def run_logged(command: list[str], workdir: Path) -> int:
  with (workdir / "sweep.log").open("a") as log:
    log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n")
    log.flush()
    return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                          check=False).returncode


def exit_code(statuses: dict[str, int | None]) -> int:
  """1 if any point failed, 75 (rerun to resume) if the sweep was stopped early, else 0."""
  codes = set(statuses.values()) - {0}
  if codes - {None, PREEMPTED_EXIT_CODE}:
    return 1
  return PREEMPTED_EXIT_CODE if codes else 0


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}; pass fields as --config.section.field=value")
  console.setup(uses_tfds=False)
  config_arg = config_flags.get_config_filename(flags.FLAGS["config"])
  base_overrides = {k: plain_value(v) for k, v in config_flags.get_override_values(flags.FLAGS["config"]).items()}
  workdir = Path(_WORKDIR.value)
  try:
    hyper_points, tuned = load_sweep(config_arg, _CONFIG.value, _SEEDS.value, _VARY.value, workdir)
    points = plan(config_arg, _CONFIG.value, base_overrides, hyper_points, workdir)
  except HyperError as e:
    fail(str(e))

  if _DRY_RUN.value:
    for p in points:
      print(shlex.join(p.command()))
      if _EVALUATE.value:
        print(shlex.join(evaluation_command(p, _EVALUATE.value, "python")))
    return

  write_manifest(config_arg, base_overrides, points, workdir, tuned=tuned)
  runner, stopping = SubprocessRunner(), threading.Event()

  def stop(signum: int, frame: Any) -> None:
    del frame
    # First signal: each point saves a checkpoint and exits 75 (lmjax.main's preemption path); a second kills.
    again = stopping.is_set()
    stopping.set()
    print(f"{signal.Signals(signum).name}: stopping the sweep{' now' if again else ' after checkpoints'}",
          file=sys.stderr, flush=True)
    runner.stop(signal.SIGKILL if again else signal.SIGTERM)

  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, stop)
  statuses = run_points(points, runner, _PARALLEL.value, log=lambda line: print(line, flush=True), stop=stopping)
  evaluated = {}
  if _EVALUATE.value and not stopping.is_set():
    evaluated = evaluate_points(points, _EVALUATE.value, run_logged, log=lambda line: print(line, flush=True))
  described = outcomes(points, statuses)
  write_manifest(config_arg, base_overrides, points, workdir, described, tuned=tuned)
  width = max(len(name) for name in described)
  print(f"\nsweep {workdir}: {len(points)} points")
  print("\n".join(f"{name:<{width}}  {text}" for name, text in described.items()), flush=True)
  failed_evaluations = any(status != 0 for status in evaluated.values())
  sys.exit(exit_code(statuses) or (1 if failed_evaluations else 0))


def run() -> None:
  """The `lmjax-sweep` command."""
  describe_command(__name__)
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
