"""The markdown tables of lmjax.report and how their cells print numbers and intervals."""

from __future__ import annotations

import dataclasses
import math

from lmjax import stats

MISSING = "-"


@dataclasses.dataclass
class Table:
  title: str
  columns: list[str]
  rows: list[list[str]]
  note: str = ""

  def markdown(self) -> str:
    escape = lambda text: str(text).replace("|", "\\|")
    lines = ["| " + " | ".join(map(escape, self.columns)) + " |", "|" + "|".join("---" for _ in self.columns) + "|"]
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in self.rows]
    return "\n".join(lines) + "\n"


def _number(value: float | None, digits: int | None = None) -> str:
  if value is None or not math.isfinite(value):
    return MISSING
  if digits is None:
    digits = 2 if abs(value) >= 10 else 4
  return f"{value:.{digits}f}"


def _flops(value: float | None) -> str:
  return MISSING if value is None else f"{value:.3g}"


def _mean_ci(s: stats.Summary | None, deterministic: bool = False) -> str:
  if s is None:
    return MISSING
  digits = 2 if abs(s.mean) >= 10 else 4
  if s.half_width is None:
    return f"{s.mean:.{digits}f} [{s.n}{', deterministic' if deterministic else ''}]"
  return f"{s.mean:.{digits}f} ± {s.half_width:.{digits}f} [{s.n}]"
