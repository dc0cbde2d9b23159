"""A run's downstream evaluations: WORKDIR/evals/<name>.json, written by lmjax.evaluate, read by lmjax.report and
lmjax.sweep.

A record holds `metrics` ({task: {metric: value}}, the harness's headline numbers), `perplexity` ({source:
{perplexity, bits_per_byte, bits_per_char, ...}}), the checkpoint `step`, lmjax's settings and compilation count,
and the harness's own output (results, versions, task configs) under `harness`.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

EVALS_DIR = "evals"
PERPLEXITY_METRICS = ("perplexity", "bits_per_byte", "bits_per_char")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def perplexity_label(source: str) -> str:
  """'ppl-wiki.test.raw' for a file, 'ppl-wikitext_test' for tfds:wikitext/test: the name of its columns."""
  return "ppl-" + _UNSAFE.sub("_", source[5:] if source.startswith("tfds:") else Path(source).name).strip("_")


def default_name(tasks: list[str], perplexity: list[str]) -> str:
  """The file name an evaluation gets unless --name says otherwise: its tasks and perplexity sources, so reruns
  and the points of a sweep write the same file."""
  parts = [*tasks, *map(perplexity_label, perplexity)]
  name = _UNSAFE.sub("_", "+".join(parts)).strip("_") or "eval"
  return name[:100]


def path_of(workdir: str | os.PathLike, name: str) -> Path:
  return Path(workdir) / EVALS_DIR / f"{name}.json"


def _plain(value: Any) -> Any:
  """numpy scalars and other objects the harness leaves in its results, as JSON values."""
  if isinstance(value, dict):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, (str, bool)) or value is None:
    return value
  if isinstance(value, int):
    return value
  try:
    number = float(value)
  except (TypeError, ValueError):
    return str(value)
  return number if math.isfinite(number) else str(number)


def write(workdir: str | os.PathLike, name: str, record: dict[str, Any]) -> Path:
  path = path_of(workdir, name)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(f".json.tmp{os.getpid()}")
  tmp.write_text(json.dumps(_plain(record), indent=1) + "\n")
  os.replace(tmp, path)  # a reader sees the old record or the new one, never half of one
  return path


def read(workdir: str | os.PathLike) -> dict[str, dict[str, Any]]:
  """{name: record} of every readable evals/*.json of a run, by name."""
  out = {}
  for path in sorted((Path(workdir) / EVALS_DIR).glob("*.json")):
    try:
      record = json.loads(path.read_text())
    except (OSError, ValueError):
      continue
    if isinstance(record, dict):
      out[path.stem] = record
  return out


def columns(workdir: str | os.PathLike) -> dict[str, float]:
  """{'<task>/<metric>': value, 'ppl-<source>/<metric>': value} over a run's evaluations (a later file name wins
  where two evaluated the same task)."""
  out: dict[str, float] = {}
  for record in read(workdir).values():
    for task, metrics in (record.get("metrics") or {}).items():
      out.update({f"{task}/{m}": v for m, v in metrics.items() if isinstance(v, (int, float))})
    for source, metrics in (record.get("perplexity") or {}).items():
      out.update({f"{source}/{m}": metrics[m] for m in PERPLEXITY_METRICS if isinstance(metrics.get(m), (int, float))})
  return out
