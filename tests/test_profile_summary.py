"""lmjax-profile: a trace's ops summed by kind, checked against a per-microsecond count, and its one-line errors."""

import gzip
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from lmjax import profile_summary

OP_THREADS = {1: "tf_XLAEigen/1", 2: "tf_XLAEigen/2", 3: "tf_XLAEigen/3"}


def nested_ops(rng, start, end, depth, prefix):
  """Properly nested op intervals (integer microseconds) inside [start, end)."""
  out, at = [], start
  while at < end - 2:
    s = int(rng.integers(at, end - 1)); e = int(rng.integers(s + 1, min(end, s + 40) + 1))
    out.append((s, e, f"{rng.choice(['dot', 'fusion', 'while'])}.{rng.integers(100)}"))
    if depth and e - s > 4 and rng.random() < 0.5:
      out += nested_ops(rng, s + 1, e - 1, depth - 1, prefix)
    at = e + int(rng.integers(0, 5))
  return out


def trace_events(ops_by_thread):
  events = [{"ph": "M", "name": "thread_name", "pid": 7, "tid": t, "args": {"name": n}} for t, n in OP_THREADS.items()]
  events.append({"ph": "M", "name": "thread_name", "pid": 7, "tid": 9, "args": {"name": "python"}})
  for tid, ops in ops_by_thread.items():
    for s, e, name in ops:
      events.append({"ph": "X", "name": name, "pid": 7, "tid": tid, "ts": s, "dur": e - s})
    lo, hi = min(s for s, _, _ in ops), max(e for _, e, _ in ops)
    # Runtime scopes and end markers on the op threads, and Python's events elsewhere, are not ops.
    events.append({"ph": "X", "name": "ThunkExecutor::Execute", "pid": 7, "tid": tid, "ts": lo, "dur": hi - lo})
    events.append({"ph": "X", "name": "end: dot.1", "pid": 7, "tid": tid, "ts": lo, "dur": 1})
  events.append({"ph": "X", "name": "dot.99", "pid": 7, "tid": 9, "ts": 0, "dur": 10_000})
  return events


def per_microsecond(ops_by_thread):
  """Each microsecond charged to the innermost op running on its thread; 'others busy' when another op thread
  runs any op in that microsecond."""
  end = max(e for ops in ops_by_thread.values() for _, e, _ in ops)
  innermost = {}
  for tid, ops in ops_by_thread.items():
    owner = [None] * end
    for s, e, name in sorted(ops, key=lambda o: (o[0], -o[1])):  # later starts are nested deeper
      for t in range(s, e):
        owner[t] = name.split(".")[0]
    innermost[tid] = owner
  self_us, others_us = {}, {}
  for tid, owner in innermost.items():
    for t, kind in enumerate(owner):
      if kind is None:
        continue
      self_us[kind] = self_us.get(kind, 0) + 1
      if any(o[t] is not None for other, o in innermost.items() if other != tid):
        others_us[kind] = others_us.get(kind, 0) + 1
  busy = {OP_THREADS[tid]: sum(k is not None for k in owner) for tid, owner in innermost.items()}
  return self_us, others_us, busy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_own_time_and_overlap_equal_a_per_microsecond_count(seed):
  rng = np.random.default_rng(seed)
  ops = {tid: nested_ops(rng, int(rng.integers(0, 30)), 600, 2, str(tid)) for tid in OP_THREADS}
  summary = profile_summary.summarize(trace_events(ops), steps=4)
  self_us, others_us, busy = per_microsecond(ops)

  assert {r.kind: r.self_us for r in summary.rows} == pytest.approx(self_us)
  assert {r.kind: r.others_busy_us for r in summary.rows} == pytest.approx({k: others_us.get(k, 0) for k in self_us})
  assert {r.kind: r.count for r in summary.rows} == {
      k: sum(name.split(".")[0] == k for o in ops.values() for _, _, name in o) for k in self_us}
  assert summary.busy_us == pytest.approx(busy)
  first = min(s for o in ops.values() for s, _, _ in o)
  assert summary.span_us == max(e for o in ops.values() for _, e, _ in o) - first
  table = profile_summary.format_summary(summary, top=2)
  top = summary.rows[0]
  assert f"| `{top.kind}` | {top.self_us / 4 / 1000:.2f} | {top.count / 4:.1f} |" in table
  assert f"| {len(summary.rows) - 2} other kinds |" in table


def test_threads_of_the_same_name_are_kept_apart():
  events = trace_events({1: [(0, 10, "dot.1")], 2: [(0, 4, "dot.2")]})
  for e in events:
    if e.get("ph") == "M" and e["tid"] in (1, 2):
      e["args"]["name"] = "tf_XLAEigen"
  assert profile_summary.summarize(events, 1).busy_us == {"tf_XLAEigen (tid 1)": 10, "tf_XLAEigen (tid 2)": 4}


def write_trace(directory, events, steps=None):
  directory.mkdir(parents=True)
  with gzip.open(directory / profile_summary.TRACE_NAME, "wt") as f:
    json.dump({"traceEvents": events}, f)
  if steps:
    (directory / profile_summary.STEPS_FILE).write_text(json.dumps({"first": steps[0], "last": steps[1]}))
  return directory / profile_summary.TRACE_NAME


def run_command(*args):
  return subprocess.run([sys.executable, "-m", "lmjax.profile_summary", *map(str, args)], capture_output=True,
                        text=True, check=False)


def test_the_command_reads_the_newest_trace_and_its_recorded_steps(tmp_path):
  ops = {1: [(0, 4000, "ynn_fusion.3"), (4000, 5000, "copy.1")], 2: [(1000, 3000, "copy.2")]}
  write_trace(tmp_path / "profile" / "plugins" / "profile" / "old", trace_events({1: [(0, 10, "stale.1")]}), (0, 1))
  trace = write_trace(tmp_path / "profile" / "plugins" / "profile" / "new", trace_events(ops), (200, 202))
  done = run_command(tmp_path)
  assert done.returncode == 0, done.stderr
  assert f"trace: {trace}" in done.stdout
  assert "2 steps, 2.50 ms/step" in done.stdout
  assert "| `ynn_fusion` | 2.00 | 0.5 | 80% | 50% |" in done.stdout  # copy.2 ran during half of it
  assert "| `copy` | 1.50 | 1.0 | 60% | 67% |" in done.stdout
  assert "stale" not in done.stdout


@pytest.mark.parametrize("make, steps, threads, expected", [
    (lambda d: None, None, "XLAEigen", "no such file or directory; give a workdir that ran with --config.train.profile"),
    (lambda d: d.mkdir(), None, "XLAEigen", "no perfetto_trace.json.gz under it; train with --config.train.profile"),
    (lambda d: write_trace(d, trace_events({1: [(0, 5, "dot.1")]})), None, "XLAEigen", "pass --steps=N"),
    (lambda d: write_trace(d, trace_events({1: [(0, 5, "dot.1")]})), 1, "Stream",
     "no op events on threads matching --threads='Stream'; the trace's threads are: python, tf_XLAEigen/1"),
    (lambda d: write_trace(d, trace_events({1: [(0, 5, "dot.1")]})), 1, "(", "--threads='(': not a regular expression"),
    (lambda d: write_trace(d, trace_events({1: [(0, 5, "dot.1")]})), -2, "XLAEigen", "--steps=-2: must be a positive"),
    (lambda d: (d.mkdir(), (d / profile_summary.TRACE_NAME).write_text("plain text")), None, "XLAEigen",
     "not a gzipped JSON trace"),
    (lambda d: (d.mkdir(), gzip.open(d / profile_summary.TRACE_NAME, "wt").write("{}")), None, "XLAEigen",
     "no traceEvents list in it"),
])
def test_bad_input_is_named_with_its_fix(tmp_path, make, steps, threads, expected):
  make(tmp_path / "run")
  with pytest.raises(ValueError, match=re.escape(expected)) as caught:
    profile_summary.summary_of(tmp_path / "run", steps, threads)
  assert "\n" not in str(caught.value)


def test_the_command_reports_bad_input_in_one_line(tmp_path):
  done = run_command(tmp_path / "missing")
  assert done.returncode == 2
  assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"error: {tmp_path / 'missing'}: no such file")
