"""Where the time of a profiled run went, as a table: XLA's ops summed by kind, per step (lmjax-profile).

    python -m lmjax.profile_summary WORKDIR [--top=25] [--steps=N] [--threads=REGEX]

WORKDIR is a run that had `train.profile_steps=START:END` (or its profile directory, or one trace file). The
newest Perfetto trace under it is read; each op's own time (a nested op's time counted once, in the innermost op
running) is summed by kind, the HLO name without its numeric suffix (`ynn_fusion.57` -> `ynn_fusion`), and divided by
the profiled steps (from the steps.json the run wrote beside its trace, or --steps).

"Others busy" is the share of a kind's time during which some other op thread was running an op too: on a CPU,
a low share for the matrix products says they ran on one core while the rest of the pool waited. The default
threads are XLA:CPU's intra-op pool; --threads picks others (a regular expression on the trace's thread names).
"""

from __future__ import annotations

import bisect
import dataclasses
import gzip
import json
import re
from collections import defaultdict
from pathlib import Path

from absl import app, flags

from lmjax import console
from lmjax.cli import describe_command, fail, parse_flags

TRACE_NAME = "perfetto_trace.json.gz"
STEPS_FILE = "steps.json"
CPU_OP_THREADS = r"XLAEigen"
_SUFFIX = re.compile(r"(\.\d+)+$")


@dataclasses.dataclass(frozen=True)
class Row:
  kind: str
  self_us: float  # summed own time, children excluded
  count: int
  others_busy_us: float  # of self_us, the part during which another op thread ran an op


@dataclasses.dataclass(frozen=True)
class Summary:
  steps: int
  span_us: float  # first op start to last op end
  busy_us: dict[str, float]  # per op thread: time running at least one op
  rows: list[Row]  # the most self time first


def find_trace(path: str | Path) -> Path:
  """The trace file itself, or the newest one under a workdir or profile directory."""
  path = Path(path)
  if path.is_file():
    return path
  if not path.is_dir():
    raise ValueError(f"{path}: no such file or directory; give a workdir that ran with "
                     f"--config.train.profile_steps=START:END, or its trace file")
  traces = sorted(path.rglob(TRACE_NAME), key=lambda p: p.stat().st_mtime)
  if not traces:
    raise ValueError(f"{path}: no {TRACE_NAME} under it; train with --config.train.profile_steps=START:END "
                     f"(e.g. 100:110) to record one")
  return traces[-1]


def recorded_steps(trace: Path) -> int | None:
  """How many train steps the trace covers, as the run recorded beside it; None for a trace from elsewhere."""
  record = trace.parent / STEPS_FILE
  if not record.is_file():
    return None
  steps = json.loads(record.read_text())
  return int(steps["last"]) - int(steps["first"])


def read_events(trace: Path) -> list[dict]:
  try:
    with gzip.open(trace, "rt") as f:
      data = json.load(f)
  except (OSError, EOFError, json.JSONDecodeError) as e:
    raise ValueError(f"{trace}: not a gzipped JSON trace ({e}); give the {TRACE_NAME} a profile wrote") from None
  events = data.get("traceEvents") if isinstance(data, dict) else data
  if not isinstance(events, list):
    raise ValueError(f"{trace}: no traceEvents list in it; give the {TRACE_NAME} a profile wrote")
  return events


def _is_op(name: str) -> bool:
  # The runtime's own scopes (ThunkExecutor::Execute, ThreadpoolListener::...) carry C++ names, and each op's
  # end marker starts with "end: "; HLO op names have neither.
  return "::" not in name and not name.startswith(("end: ", "$"))


def _union(intervals: list[tuple[float, float]]) -> list[list[float]]:
  merged: list[list[float]] = []
  for start, end in sorted(intervals):
    if merged and start <= merged[-1][1]:
      merged[-1][1] = max(merged[-1][1], end)
    else:
      merged.append([start, end])
  return merged


def _overlap(merged: list[list[float]], starts: list[float], start: float, end: float) -> float:
  i, total = max(bisect.bisect_right(starts, start) - 1, 0), 0.0
  while i < len(merged) and merged[i][0] < end:
    total += max(0.0, min(merged[i][1], end) - max(merged[i][0], start))
    i += 1
  return total


def summarize(events: list[dict], steps: int, threads: str = CPU_OP_THREADS) -> Summary:
  """Own time per op kind on the threads whose names match `threads`, per step."""
  if steps <= 0:
    raise ValueError(f"--steps={steps}: must be a positive number of profiled steps")
  names = {(e.get("pid"), e.get("tid")): e.get("args", {}).get("name", "") for e in events
           if e.get("ph") == "M" and e.get("name") == "thread_name"}
  try:
    pattern = re.compile(threads)
  except re.error as e:
    raise ValueError(f"--threads={threads!r}: not a regular expression ({e})") from None
  ops: dict[tuple, list[tuple[float, float, str]]] = defaultdict(list)
  for e in events:
    thread = (e.get("pid"), e.get("tid"))
    if e.get("ph") == "X" and pattern.search(names.get(thread, "")) and _is_op(e.get("name", "")):
      ops[thread].append((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)), e["name"]))
  if not ops:
    found = sorted({n for n in names.values() if n})
    raise ValueError(f"no op events on threads matching --threads={threads!r}; the trace's threads are: "
                     f"{', '.join(found[:12]) or 'none'}")

  busy = {thread: _union([(s, t) for s, t, _ in evs]) for thread, evs in ops.items()}
  others = {}
  for thread in ops:
    merged = _union([tuple(iv) for other, ivs in busy.items() if other != thread for iv in ivs])
    others[thread] = (merged, [iv[0] for iv in merged])

  self_us: dict[str, float] = defaultdict(float)
  counts: dict[str, int] = defaultdict(int)
  others_us: dict[str, float] = defaultdict(float)
  for thread, evs in ops.items():
    merged, starts = others[thread]
    # Own time: an op's span less the spans of the ops nested in it on the same thread.
    stack: list[tuple[float, float, str, list]] = []  # (start, end, kind, children's spans)
    def close(start, end, kind, children):
      pieces, at = [], start
      for child_start, child_end in children:  # a child that outlives its parent is clipped to it
        pieces.append((at, max(at, min(child_start, end))))
        at = max(at, min(child_end, end))
      pieces.append((at, end))
      self_us[kind] += sum(b - a for a, b in pieces)
      others_us[kind] += sum(_overlap(merged, starts, a, b) for a, b in pieces if b > a)
      if stack:
        stack[-1][3].append((start, end))
    for start, end, name in sorted(evs, key=lambda x: (x[0], -x[1])):
      while stack and stack[-1][1] <= start:
        close(*stack.pop())
      kind = _SUFFIX.sub("", name)
      counts[kind] += 1
      stack.append((start, end, kind, []))
    while stack:
      close(*stack.pop())

  first = min(ivs[0][0] for ivs in busy.values())
  last = max(ivs[-1][1] for ivs in busy.values())
  rows = sorted((Row(k, self_us[k], counts[k], others_us[k]) for k in self_us), key=lambda r: -r.self_us)
  labels = [names.get(t, "") for t in busy]
  # Two threads of the same name stay two rows: the thread id tells them apart.
  labels = [f"{n} (tid {t[1]})" if labels.count(n) > 1 else n for n, t in zip(labels, busy)]
  return Summary(steps, last - first,
                 {label: sum(e - s for s, e in ivs) for label, ivs in zip(labels, busy.values())}, rows)


def summary_of(path: str | Path, steps: int | None = None, threads: str = CPU_OP_THREADS) -> tuple[Path, Summary]:
  """The newest trace under `path` and its summary; ValueError, in one line, for anything the user must fix."""
  trace = find_trace(path)
  events = read_events(trace)
  steps = steps or recorded_steps(trace)
  if steps is None:
    raise ValueError(f"{trace}: no {STEPS_FILE} beside it says how many steps it covers; pass --steps=N")
  return trace, summarize(events, steps, threads)


def format_summary(summary: Summary, top: int = 25) -> str:
  per_step = lambda us: us / summary.steps / 1000
  step_ms = per_step(summary.span_us)
  lines = [f"{summary.steps} steps, {step_ms:.2f} ms/step from the first op to the last",
           *(f"  {name}: busy {per_step(us):.2f} ms/step ({us / summary.span_us:.0%})"
             for name, us in sorted(summary.busy_us.items())),
           "", "| op kind | ms/step | ops/step | share of the step | others busy |", "|---|---|---|---|---|"]
  for row in summary.rows[:top]:
    lines.append(f"| `{row.kind}` | {per_step(row.self_us):.2f} | {row.count / summary.steps:.1f} | "
                 f"{row.self_us / summary.span_us:.0%} | {row.others_busy_us / max(row.self_us, 1e-9):.0%} |")
  rest = summary.rows[top:]
  if rest:
    lines.append(f"| {len(rest)} other kinds | {per_step(sum(r.self_us for r in rest)):.2f} | "
                 f"{sum(r.count for r in rest) / summary.steps:.1f} | | |")
  return "\n".join(lines) + "\n"


_TOP = flags.DEFINE_integer("top", 25, "Rows of the table: the op kinds with the most time.")
_STEPS = flags.DEFINE_integer("steps", 0, "Steps the trace covers; default: what the run recorded beside it.")
_THREADS = flags.DEFINE_string("threads", CPU_OP_THREADS, "Regular expression on the trace's thread names: the "
                               "threads whose events are ops (default: XLA:CPU's intra-op pool).")


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    fail("give one workdir, profile directory or trace file: python -m lmjax.profile_summary WORKDIR "
         "[--top=25] [--steps=N] [--threads=REGEX]")
  console.setup(uses_tfds=False)
  try:
    trace, summary = summary_of(argv[1], _STEPS.value or None, _THREADS.value)
  except ValueError as e:
    fail(str(e))
  print(f"trace: {trace}")
  print(format_summary(summary, _TOP.value), end="", flush=True)


def run() -> None:
  """The `lmjax-profile` command."""
  describe_command(__name__)
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
