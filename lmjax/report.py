r"""Collect the runs under a directory into tables and plots that a reviewer accepts: seeds, spread, compute, tuning.

  python -m lmjax.report runs/positions [--metric=loss] [--x=model.position] [--out=DIR] \
      [--baseline=position=learned] [--select=eval/loss [--tuned=optim.learning_rate]]

A run is any directory, at any depth, holding metrics.jsonl and config.json (what lmjax.main writes). Runs that
differ only in their seeds (config.seed, config.data.shuffle_seed) are one group, the replicates of one setting
(a sweep with h.seeds or --seeds makes them). Writes, to --out (default: the runs directory):

  report.md / report.html  the tables below (the HTML with the plots inline, one self-contained file)
  report.csv               one row per run: the fields that differ, final and best of every metric, throughput
  groups.csv               one row per group and metric: n, mean, standard deviation, 95% interval
  loss_curves.png          train and eval loss against step: each group's mean, with a 95% band over its seeds
  loss_vs_flops.png        eval --metric against training FLOPs (the model family's count), the same way
  <metric>_vs_<field>.png  the final eval --metric against one swept field, with 95% error bars
  selection.json           with --select: the setting each group chose, for the sweep's h.selected()

The tables: each group's mean +- 95% half-width [n] of every eval split's --metric (Student t over the seeds,
lmjax.stats); with --baseline, each group's difference from that group, paired by seed, with its interval, p and
whether it is within the noise; at matched compute, each group's metric when all have spent the same training
FLOPs (read off its eval curve) next to its final value; the runs themselves; and what every column means.

--select=SPLIT/METRIC picks, among the settings of the --tuned fields (recorded in sweep.json by h.tune), the one
whose mean SPLIT/METRIC is best, separately for every combination of the other fields (an architecture, say);
the tables then show only the chosen settings, with every split, so the test split is reported for a choice made
on validation. A test split is refused as SPLIT: it is never used for a choice.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from absl import app, flags

from lmjax import console, eval_results, report_html, report_plots, stats
from lmjax.cli import describe_command
from lmjax.report_plots import log_scale  # noqa: F401  (part of this module's interface)
from lmjax.report_runs import (  # noqa: F401  (part of this module's interface)
    Group, Run, SEED_FIELDS, _is_number, _label, _sweep_order, _text, differing_fields, eval_splits, final_step,
    find_runs, higher_is_better, is_finished, load_runs, make_groups, matched_budget, metric_names, read_manifest,
    resolve_field, value_at_flops)
from lmjax.report_select import Selection, choose_settings  # noqa: F401  (part of this module's interface)
from lmjax.report_tables import MISSING, Table, _flops, _mean_ci, _number

SELECTION_FILE = "selection.json"


def runs_table(runs: Sequence[Run], fields: Sequence[str], metric: str, *,
               full: bool) -> tuple[list[str], list[dict]]:
  """Columns and raw-valued rows. `full` (the CSV) has final and best of every metric; the markdown keeps the
  final of each and the best of `metric`, so it fits a page."""
  splits = eval_splits(runs)
  with_params = any(r.params is not None for r in runs)
  with_flops = any(r.train_flops is not None for r in runs)
  columns = ["run", *fields, *(["params"] if with_params else []), "steps", *(["train_flops"] if with_flops else [])]
  columns += ["num_steps", "finished", "flops_per_step"] if full else []
  metric_columns = {}  # column -> (split, metric, final or best)
  for split in splits:
    names = metric_names(runs, split)
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
                           "tokens_per_s": r.final("train", "tokens_per_s"), "train_flops": r.train_flops,
                           "flops_per_step": r.flops_per_step}
    for column, (split, m, kind) in metric_columns.items():
      row[column] = r.final(split, m) if kind == "final" else r.best(split, m)
    row.update({c: evals[r.name].get(c) for c in eval_columns})
    rows.append(row)
  return columns, rows


table = runs_table  # the name earlier versions used


def _cell(column: str, value: Any, row: dict) -> str:
  if column == "steps":
    if value is None:
      return MISSING
    return f"{value}" if row["finished"] else f"{value}/{row['num_steps'] or '?'} (unfinished)"
  if value is None:
    return MISSING
  if column in ("params", "tokens_per_s"):
    return f"{value:,.0f}"
  if column in ("train_flops", "flops_per_step"):
    return _flops(value)
  if isinstance(value, float) and "/" in column:
    return f"{value:.4f}"
  if isinstance(value, bool):
    return str(value).lower()
  return str(value)


def markdown(columns: Sequence[str], rows: Sequence[dict]) -> str:
  return Table("", list(columns), [[_cell(c, row.get(c), row) for c in columns] for row in rows]).markdown()


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict]) -> None:
  """Raw values at full precision; a missing value is an empty cell, which spreadsheets and pandas read as NA."""
  with path.open("w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    for row in rows:
      writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])


def groups_table(groups: Sequence[Group], metric: str, splits: Sequence[str], fields: Sequence[str]) -> Table:
  with_params = any(r.params is not None for g in groups for r in g.runs)
  with_flops = any(g.flops_per_step is not None for g in groups)
  columns = ["group", *fields, "n", *(["params"] if with_params else []), "steps",
             *(["train_flops"] if with_flops else []), *(f"{s}/{metric}" for s in splits)]
  rows = []
  for g in groups:
    first = g.runs[0]
    unfinished = sum(not r.finished for r in g.runs)
    steps = first.last_step if unfinished == 0 else f"{first.last_step} ({unfinished} unfinished)"
    row = [g.name, *(_text(g.fields.get(f, first.config.get(f))) for f in fields), str(g.n)]
    row += [f"{first.params:,}" if first.params is not None else MISSING] if with_params else []
    row += [str(steps if steps is not None else MISSING)]
    row += [_flops(first.train_flops)] if with_flops else []
    row += [_mean_ci(g.summary(s, metric), g.deterministic) for s in splits]
    rows.append(row)
  return Table(f"Groups: final {metric}, mean ± 95% CI [n seeds]", columns, rows,
               f"Mean over each group's replicates of its final eval record ({stats.METHOD} interval of the mean, "
               "n - 1 degrees of freedom); no interval for a single run. 'deterministic': a model fitted by counting, "
               "which no seed changes.")


def groups_rows(groups: Sequence[Group], runs: Sequence[Run]) -> tuple[list[str], list[dict]]:
  """groups.csv: one row per group, split and metric, with the raw summary."""
  columns = ["group", "split", "metric", "n", "mean", "std", "ci95_low", "ci95_high", "train_flops", "params"]
  rows = []
  for g in groups:
    for split in eval_splits(g.runs):
      for metric in metric_names(runs, split):
        s = g.summary(split, metric)
        if s is not None:
          rows.append({"group": g.name, "split": split, "metric": metric, "n": s.n, "mean": s.mean, "std": s.std,
                       "ci95_low": s.low, "ci95_high": s.high, "train_flops": g.runs[0].train_flops,
                       "params": g.runs[0].params})
  return columns, rows


def find_group(spec: str, groups: Sequence[Group]) -> Group:
  """--baseline: a group's name, or field=value pairs ('name=gpt', 'model.position=rope') that pick one group."""
  for g in groups:
    if g.name == spec:
      return g
  wanted = [part.split("=", 1) for part in spec.split(",") if "=" in part]
  if not wanted:
    raise ValueError(f"--baseline={spec}: no group has that name; give a name or field=value, one of: "
                     f"{'; '.join(g.name for g in groups)}")

  def matches(g: Group) -> bool:
    for key, value in wanted:
      fields = [f for f in g.fields if f == key or f.endswith(f".{key}")]
      if len(fields) != 1 or _text(g.fields[fields[0]]) != value:
        return False
    return True

  found = [g for g in groups if matches(g)]
  if len(found) != 1:
    raise ValueError(f"--baseline={spec} matches {len(found)} groups; give one of: "
                     f"{'; '.join(g.name for g in groups)}")
  return found[0]


def comparison_table(groups: Sequence[Group], baseline: Group, metric: str, splits: Sequence[str]) -> Table:
  higher = higher_is_better(metric)
  rows = []
  for g in groups:
    if g is baseline:
      continue
    for split in splits:
      c = compare(g, baseline, split, metric)
      if c is None:
        continue
      if c.within_noise is None:
        verdict = "no noise estimate"
      elif c.within_noise:
        verdict = "within noise"
      else:
        verdict = "better" if (c.difference > 0) == higher else "worse"
      interval = MISSING if c.low is None else f"[{_number(c.low)}, {_number(c.high)}]"
      p = MISSING if c.p is None else (f"{c.p:.3g}" if c.p >= 1e-4 else "< 1e-4")
      rows.append([g.name, split, _number(c.difference), interval, p, verdict, c.method])
  direction = "higher" if higher else "lower"
  return Table(f"Against {baseline.name}: difference in final {metric} (group - baseline)",
               ["group", "split", "difference", "95% CI", "p", "verdict", "how"], rows,
               f"{metric}: {direction} is better. 'within noise': the 95% interval of the difference contains 0. "
               "Paired by seed where the runs share seeds (the same initialization and data order), Welch's t "
               "otherwise; a deterministic model (fitted by counting) is compared as a constant.")


def compare(g: Group, baseline: Group, split: str, metric: str) -> stats.Comparison | None:
  mine = {r.seeds: r.final(split, metric) for r in g.runs}
  theirs = {r.seeds: r.final(split, metric) for r in baseline.runs}
  mine = {k: v for k, v in mine.items() if v is not None}
  theirs = {k: v for k, v in theirs.items() if v is not None}
  if not mine or not theirs:
    return None
  if g.deterministic and len(mine) == 1:
    constant = next(iter(mine.values()))
    c = stats.paired([constant] * len(theirs), list(theirs.values()))
    return dataclasses.replace(c, method="one-sample t: the group is deterministic, against the baseline's "
                               f"{len(theirs)} seeds")
  shared = sorted(set(mine) & set(theirs), key=str)
  if len(shared) >= 2 or (shared and (len(mine) == 1 or len(theirs) == 1)):
    return stats.paired([mine[k] for k in shared], [theirs[k] for k in shared])
  return stats.welch(list(mine.values()), list(theirs.values()))


def compute_table(groups: Sequence[Group], metric: str, splits: Sequence[str], budget: float) -> Table:
  rows = []
  for g in groups:
    fps = g.flops_per_step
    if fps is None:
      rows.append([g.name, MISSING, MISSING, *(MISSING for _ in splits),
                   *(_mean_ci(g.summary(s, metric), g.deterministic) for s in splits)])
      continue
    rows.append([g.name, _flops(fps), f"{budget / fps:,.0f}",
                 *(_mean_ci(g.summary(s, metric, at_flops=budget)) for s in splits),
                 *(_mean_ci(g.summary(s, metric)) for s in splits)])
  columns = ["group", "FLOPs per step", "step at the budget", *(f"{s}/{metric} at {_flops(budget)} FLOPs" for s in
                                                                  splits), *(f"{s}/{metric} final" for s in splits)]
  return Table(f"At matched compute: {metric} after {_flops(budget)} training FLOPs", columns, rows,
               "The budget is the smallest final training-FLOPs count of any group. Each run's value there is read "
               "off its eval curve (linear in log FLOPs between the two eval records around it); '-' when the "
               "run's first eval came later. FLOPs are each model family's own count (6 N plus attention for the "
               "Transformer; 6 N for the feed-forward LM and the LSTM); a model without one (the n-gram, counted "
               "in one pass) shows only its final value.")


# --- what every column means ----------------------------------------------------------------------------------------

METRIC_MEANINGS = {
    "loss": "the task's training objective on that split, a mean in the unit below",
    "perplexity": "exp(mean cross-entropy in nats per predicted token)",
    "bits_per_char": "cross-entropy in bits per character of text (tokenizers compare on it)",
    "bits_per_byte": "cross-entropy in bits per UTF-8 byte of text",
    "accuracy": "fraction of predictions (tokens, words or examples) whose top-1 choice is right",
    "nll": "unsmoothed cross-entropy, nats per target token",
    "rouge1": "ROUGE-1 F-measure x100 (unigram overlap; rouge-score tokenizer, no stemming), mean over decoded pairs",
    "rouge2": "ROUGE-2 F-measure x100 (bigram overlap), mean over decoded pairs",
    "rougeL": "ROUGE-L F-measure x100 (longest common subsequence), mean over decoded pairs",
    "bleu": "SacreBLEU corpus BLEU, 0-100",
    "chrf": "SacreBLEU chrF (character 6-gram F-score, beta 2), 0-100",
    "exact_match": "fraction of questions whose best span equals a gold answer (SQuAD normalization)",
    "f1": "F1 as a fraction: SQuAD token overlap per question, or binary F1 of class 1",
    "f1_macro": "F1 averaged over the classes, as a fraction",
    "mcc": "Matthews correlation coefficient, -1 to 1",
    "pearson": "Pearson correlation of predicted and gold scores", "spearman": "Spearman rank correlation",
    "window_start_end_match": "fraction of QA windows whose start and end argmaxes both hit the gold positions",
    "mlm_loss": "masked-LM cross-entropy, nats per masked token", "mlm_accuracy": "masked-token top-1 accuracy",
    "mlm_perplexity": "exp(mlm_loss)", "nsp_loss": "next-sentence cross-entropy, nats per pair",
    "nsp_accuracy": "next-sentence accuracy", "teacher_kl": "KL from the teacher at temperature 1, nats per token",
}
COLUMN_MEANINGS = {
    "run": "the run's directory under the report's root",
    "group": "runs that differ only in seed and data.shuffle_seed; named as the sweep named the point",
    "n": "runs in the group (seeds)", "params": "trained parameters, every array of the model",
    "steps": "the last step the run recorded (its final eval is there)",
    "train_flops": "training FLOPs to the last step: steps x the model family's count per step (forward and "
                   "backward; 6 N + attention for a Transformer, 6 N for the FFNN and LSTM)",
    "tokens_per_s": "training throughput of the last logging interval on the machine that ran it (not a benchmark)",
}


def describe_split(split: str) -> str:
  if split == "eval":
    return "the validation split (data.eval_split, or seq2seq.eval_paths)"
  if split == "test":
    return "the test split (data.test_split or seq2seq.test_paths): reported, never used for a choice"
  if split.startswith("eval_len"):
    return f"the validation text in windows of {split[len('eval_len'):]} tokens (length extrapolation)"
  if split.startswith("eval/"):
    return f"the validation text of source {split[len('eval/'):]!r}"
  return "an eval split the task recorded"


def glossary(runs: Sequence[Run], columns: Sequence[str], metric: str) -> Table:
  rows = []
  for column in columns:
    if column in COLUMN_MEANINGS:
      rows.append([column, COLUMN_MEANINGS[column]])
  for split in eval_splits(runs):
    rows.append([f"{split}/...", describe_split(split)])
  names = list(dict.fromkeys(m for s in eval_splits(runs) for m in metric_names(runs, s)))
  for m in names:
    better = "higher is better" if higher_is_better(m) else "lower is better"
    rows.append([m, f"{METRIC_MEANINGS.get(m, 'as the task records it')} ({better})"])
  units = sorted({(r.task, r.loss_unit) for r in runs})
  for task, unit in units:
    rows.append([f"loss (task={task})", unit])
  rows.append(["best_<metric>", "the best value over the run's eval records, not only the last"])
  rows.append(["± 95% CI [n]", f"{stats.METHOD} interval of the mean over n seeds (lmjax.stats)"])
  return Table("What the columns mean", ["column", "meaning"], rows)


# --- the report -----------------------------------------------------------------------------------------------------

def report(root: str | os.PathLike, metric: str = "loss", x: str = "", out: str | os.PathLike | None = None, *,
           baseline: str = "", select: str = "", tuned: Sequence[str] = ()) -> tuple[str, list[Path]]:
  """Writes the tables, CSVs, plots and HTML; returns report.md's text and the files. ValueError for bad input."""
  root = Path(root)
  if not root.is_dir():
    raise ValueError(f"{root} is not a directory; give the directory that holds the runs (e.g. a sweep's --workdir)")
  runs = load_runs(root)
  if not runs:
    raise ValueError(f"no runs under {root}: a run is a directory holding metrics.jsonl and config.json")
  available = sorted({m for s in eval_splits(runs) for m in metric_names(runs, s)})
  if metric not in available:
    raise ValueError(f"--metric={metric} is not in the eval records; choose one of "
                     f"{', '.join(available) or '(none yet: no run has evaluated)'}")
  manifest = read_manifest(root)
  fields = differing_fields(runs, _sweep_order(root))
  field = resolve_field(x, runs) if x else ""
  out = Path(out) if out else root
  out.mkdir(parents=True, exist_ok=True)

  groups = make_groups(runs, fields, manifest)
  sections: list[Table] = []
  selection = None
  if select:
    selection = choose_settings(groups, select, list(tuned) or list(manifest.get("tuned") or []))
    sections.append(selection.table)
    groups = selection.chosen
    (out / SELECTION_FILE).write_text(json.dumps(selection.record, indent=2) + "\n")
  shown = [r for g in groups for r in g.runs]
  splits = eval_splits(shown)
  group_fields = [f for f in differing_fields(shown, _sweep_order(root)) if f not in SEED_FIELDS]
  if not field and len(group_fields) == 1:
    field = group_fields[0]
  replicated = any(g.n > 1 for g in groups)
  if replicated or selection or baseline:
    sections.append(groups_table(groups, metric, splits, [] if selection else group_fields))
  if baseline:
    sections.append(comparison_table(groups, find_group(baseline, groups), metric, splits))
  budget = matched_budget(groups)
  if budget is not None:
    sections.append(compute_table(groups, metric, splits, budget))

  columns, rows = runs_table(runs, fields, metric, full=False)
  runs_section = Table("Runs", columns, [[_cell(c, row.get(c), row) for c in columns] for row in rows],
                       "Every run under the directory, with its final eval records"
                       + (" (all candidates, chosen or not)" if selection else "") + ".")
  sections.append(runs_section)
  sections.append(glossary(runs, [*columns, *(["group", "n"] if replicated else [])], metric))

  write_csv(out / "report.csv", *runs_table(runs, fields, metric, full=True))
  written = [out / "report.md", out / "report.csv"]
  if replicated or selection:
    write_csv(out / "groups.csv", *groups_rows(groups, shown))
    written.append(out / "groups.csv")
  plots = [report_plots.loss_curves(groups, out / "loss_curves.png"),
           report_plots.metric_vs_flops(groups, metric, splits, out / "loss_vs_flops.png")]
  if field:
    others = [f for f in group_fields if f != field]
    plots.append(report_plots.metric_vs_field(groups, field, others, metric, splits,
                                              out / f"{metric}_vs_{field}.png"))
  elif len(groups) > 1:
    plots.append(report_plots.metric_vs_field(groups, "", [], metric, splits, out / f"{metric}_by_group.png"))
  plots = [p for p in plots if p]
  title = f"Report: {root.resolve().name}"
  intro = (f"{len(runs)} runs in {len(make_groups(runs, fields, manifest))} groups under `{root}`"
           + (f"; settings chosen on {selection.metric} (the test split is reported, never used to choose)"
              if selection else "") + f". Intervals: {stats.METHOD} over seeds.")
  text = report_html.markdown_document(title, intro, sections, plots)
  (out / "report.md").write_text(text)
  report_html.write_html(out / "report.html", title, intro, sections, plots)
  written += [out / "report.html", *plots]
  if selection:
    written.append(out / SELECTION_FILE)
  return text, written


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    print("error: give one directory: python -m lmjax.report DIR [--metric=loss] [--x=FIELD] [--out=DIR] "
          "[--baseline=GROUP] [--select=SPLIT/METRIC]", file=sys.stderr)
    sys.exit(2)
  console.setup(uses_tfds=False)
  f = flags.FLAGS
  try:
    text, written = report(argv[1], f.metric, f.x, f.out or None, baseline=f.baseline, select=f.select,
                           tuned=[t.strip() for t in f.tuned.split(",") if t.strip()])
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(text, end="", flush=True)  # stdout is report.md, ready to paste
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
  flags.DEFINE_string("metric", "loss", "Eval metric of the tables' mean columns, the comparison and the plots.")
  flags.DEFINE_string("x", "", "Config field for the metric plot, e.g. model.position (or just position); "
                      "default: the one field that differs between groups, if there is exactly one.")
  flags.DEFINE_string("out", "", "Where the files go; default: the runs directory.")
  flags.DEFINE_string("baseline", "", "Compare every group with this one: its name, or field=value pairs that pick "
                      "it (e.g. position=learned, name=gpt).")
  flags.DEFINE_string("select", "", "SPLIT/METRIC (e.g. eval/loss): choose each setting's best value of the tuned "
                      "fields on it; writes selection.json. Never a test split.")
  flags.DEFINE_string("tuned", "", "The tuned fields, comma-separated; default: those h.tune recorded in sweep.json.")
  describe_command(__name__)
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
