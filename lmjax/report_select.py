"""lmjax.report --select: each setting's best tuned values on a validation metric, never the test split."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Sequence

from lmjax import stats
from lmjax.report_runs import Group, _is_number, _label, _text, higher_is_better
from lmjax.report_tables import Table, _mean_ci


@dataclasses.dataclass
class Selection:
  metric: str  # 'split/metric'
  tuned: list[str]
  chosen: list[Group]
  record: dict[str, Any]  # what selection.json holds
  table: "Table"


def choose_settings(groups: Sequence[Group], spec: str, tuned: Sequence[str]) -> Selection:
  """For each combination of the non-tuned fields, the group whose mean spec (split/metric) is best."""
  split, metric = _split_metric(spec, "--select")
  if split == "test" or split.startswith("test"):
    raise ValueError(f"--select={spec}: the test split is never used for a choice; choose on a validation split, "
                     f"e.g. --select=eval/{metric}, and the test split is reported for the chosen settings")
  if not tuned:
    raise ValueError(f"--select={spec} needs the fields that were tuned: a sweep with h.tune records them in "
                     f"sweep.json, or give --tuned=optim.learning_rate[,optim.warmup_steps]")
  higher = higher_is_better(metric)
  families: dict[str, list[Group]] = {}
  for g in groups:
    rest = {f: v for f, v in g.fields.items() if f not in tuned}
    families.setdefault(json.dumps(rest, sort_keys=True, default=str), []).append(g)
  chosen, entries, rows = [], [], []
  for key, candidates in families.items():
    scored = _on_shared_seeds(candidates, split, metric)
    valid = [(g, s) for g, s in scored if s is not None]
    if not valid:
      continue
    best, best_summary = (max if higher else min)(valid, key=lambda gs: gs[1].mean)
    edges = []
    for field in tuned:
      values = sorted({g.fields[field] for g in candidates if _is_number(g.fields.get(field))})
      if len(values) >= 3 and best.fields.get(field) in (values[0], values[-1]):
        edges.append(field)
    chosen.append(best)
    family_name = _label(json.loads(key))
    entries.append({"name": family_name, "chosen_group": best.name,
                    "chosen": best.overrides if best.overrides is not None else best.fields,
                    "at_grid_edge": edges,
                    "candidates": [{"group": g.name, "n": None if s is None else s.n,
                                    "mean": None if s is None else s.mean} for g, s in scored]})
    varied = [f for f in tuned if len({_text(g.fields.get(f)) for g in candidates}) > 1]
    for g, s in scored:
      tuned_values = ", ".join(f"{f.rsplit('.', 1)[-1]}={_text(g.fields.get(f))}" for f in varied)
      mark = "**chosen**" + (f" (at the edge of the grid in {', '.join(edges)})" if edges else "") \
          if g is best else ""
      rows.append([family_name, tuned_values or "(one setting: not tuned)", _mean_ci(s, g.deterministic), mark])
  record = {"metric": spec, "higher_is_better": higher, "tuned": list(tuned), "groups": entries}
  table = Table(f"Settings chosen on {spec}", ["setting", "tuned values", f"{spec} mean ± 95% CI [n]", "choice"],
                rows, f"Each setting's {'highest' if higher else 'lowest'} mean {spec} is chosen, over the seeds "
                "that every candidate of the setting has (the tuning seeds: seeds added to the chosen one later "
                "do not change the choice); no other split is read for the choice.")
  return Selection(spec, list(tuned), chosen, record, table)


def _on_shared_seeds(candidates: Sequence[Group], split: str, metric: str) -> list[tuple[Group, stats.Summary | None]]:
  """Each candidate's summary over the seeds all scored candidates share. Scored on all of its own seeds, a choice
  would flip once the final sweep adds seeds to the winner: its new mean regresses towards the truth, while the
  losers keep their lucky or unlucky single runs."""
  finals = []
  for g in candidates:
    values = {r.seeds: r.final(split, metric) for r in g.runs}
    finals.append({seeds: v for seeds, v in values.items() if v is not None and math.isfinite(v)})
  present = [set(f) for f in finals if f]
  shared = set.intersection(*present) if present else set()
  return [(g, stats.summarize([v for seeds, v in f.items() if seeds in shared] if shared else list(f.values())))
          for g, f in zip(candidates, finals)]


def _split_metric(spec: str, flag: str) -> tuple[str, str]:
  if "/" not in spec:
    raise ValueError(f"{flag}={spec}: give SPLIT/METRIC, e.g. {flag}=eval/loss")
  split, metric = spec.rsplit("/", 1)
  return split, metric
