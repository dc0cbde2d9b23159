r"""Score a run on lm-evaluation-harness tasks and on the perplexity of text: trained, imported or fine-tuned runs.

  python -m lmjax.evaluate --workdir=runs/gpt2 --tasks=lambada_openai,hellaswag --limit=500
  python -m lmjax.evaluate --workdir=runs/default --tasks=my_task --include_path=my_tasks/
  python -m lmjax.evaluate --workdir=runs/gpt2 --perplexity=tfds:wikitext/test --stride=512
  python -m lmjax.evaluate --workdir=runs/default --perplexity=held_out/*.txt --step=2000

Reads the run's config, tokenizer and the latest checkpoint's parameters (or --step's). --tasks runs harness
tasks through lmjax's model class (lmjax/harness.py); --perplexity scores whole texts (each file, or each TFDS
example's --text_key, one document from <bos>) in windows of the model's context slid by --stride, and reports
token perplexity, bits per byte and bits per character. Requests are sorted into a few padded length buckets; the
number of compiled programs is printed. Results go to WORKDIR/evals/NAME.json (NAME from --name, or the tasks and
sources), which lmjax.report shows as columns. Needs the eval extra (pip install 'lmjax[eval]') for --tasks.
"""

from __future__ import annotations

import glob
import os
import sys
import time
from pathlib import Path
from typing import Any

from absl import app, flags

from lmjax import console, eval_results
from lmjax.cli import describe_command, fail, parse_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "A run's directory: config.json, tokenizer/ and checkpoints/.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate; default the latest.")
_TASKS = flags.DEFINE_list("tasks", [], "Harness tasks, groups or tags, e.g. lambada_openai,hellaswag.")
_INCLUDE_PATH = flags.DEFINE_string("include_path", "", "A directory of your own task YAMLs, as the harness's flag.")
_NUM_FEWSHOT = flags.DEFINE_integer("num_fewshot", None, "Few-shot examples per task; default each task's own.")
_LIMIT = flags.DEFINE_float("limit", 0, "Examples per task: a count, or a fraction below 1; 0 for all.")
_PERPLEXITY = flags.DEFINE_list("perplexity", [], "Texts to score: files or globs (each file one document), or "
                                "tfds:NAME/SPLIT (each example one document).")
_STRIDE = flags.DEFINE_integer("stride", 0, "Tokens between the starts of perplexity windows; default half the "
                               "window. Equal to the window: no overlap.")
_WINDOW = flags.DEFINE_integer("window", 0, "Perplexity window in tokens; default the context (--max_length).")
_TEXT_KEY = flags.DEFINE_string("text_key", "text", "The text feature of a tfds: perplexity source.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Where tfds: sources are prepared; default ~/tensorflow_datasets.")
_MAX_LENGTH = flags.DEFINE_integer("max_length", 0, "Longest input in tokens; default the learned position table "
                                   "(model.max_len), else the run's data.seq_len.")
_ADD_BOS = flags.DEFINE_enum("add_bos", "auto", ["auto", "true", "false"], "Start every request with <bos>; auto: "
                             "yes for lmjax's tokenizers, no for an imported GPT-2 vocabulary (as transformers).")
_BATCH_TOKENS = flags.DEFINE_integer("batch_tokens", 8192, "Tokens per batch (rows x bucket length), about.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of sampled generations and of few-shot example choice.")
_NAME = flags.DEFINE_string("name", "", "Results file WORKDIR/evals/NAME.json; default from the tasks and sources.")
_SKIP_EXISTING = flags.DEFINE_bool("skip_existing", False, "Do nothing when NAME.json already holds this step.")
_LOG_SAMPLES = flags.DEFINE_bool("log_samples", False, "Keep every request and response in the results file.")
flags.mark_flag_as_required("workdir")


def check_flags() -> None:
  if not _TASKS.value and not _PERPLEXITY.value:
    fail("give --tasks=NAME,... (harness tasks) and/or --perplexity=FILES|tfds:NAME/SPLIT")
  for flag, low in ((_STRIDE, 0), (_WINDOW, 0), (_MAX_LENGTH, 0), (_BATCH_TOKENS, 1)):
    if flag.value < low:
      fail(f"--{flag.name}={flag.value} must be >= {low}")
  if _LIMIT.value < 0:
    fail(f"--limit={_LIMIT.value} must be >= 0 (0: every example)")
  if _NUM_FEWSHOT.value is not None and _NUM_FEWSHOT.value < 0:
    fail(f"--num_fewshot={_NUM_FEWSHOT.value} must be >= 0")
  if _NAME.value and eval_results.path_of("w", _NAME.value).stem != _NAME.value:
    fail(f"--name={_NAME.value!r} must be a plain file name")
  for source in _PERPLEXITY.value:
    if source.startswith("tfds:") and "/" not in source:
      fail(f"--perplexity={source}: give the split too, e.g. tfds:wikitext/test")


def read_texts(source: str, config: Any) -> list[str]:
  """The documents of one --perplexity source."""
  if source.startswith("tfds:"):
    from lmjax.data.text_files import DataError  # pylint: disable=import-outside-toplevel
    from lmjax.data.sources import open_split  # pylint: disable=import-outside-toplevel
    name, split = source[5:].rsplit("/", 1)
    d = config.data.copy_and_resolve_references()
    d.source, d.tfds_name, d.text_key = "tfds", name, _TEXT_KEY.value
    data_dir = _DATA_DIR.value or os.path.expanduser("~/tensorflow_datasets")
    try:
      docs = open_split(d, split, data_dir)
      return [docs[i] for i in range(len(docs))]
    except DataError as e:
      fail(f"--perplexity={source}: {e}".replace("data.tfds_name", "the dataset").replace("data.text_key",
                                                                                           "--text_key"))
  paths = sorted(glob.glob(source)) or ([source] if Path(source).is_file() else [])
  if not paths:
    fail(f"--perplexity={source}: no such file")
  try:
    return [Path(p).read_text(encoding="utf-8") for p in paths]
  except (OSError, UnicodeDecodeError) as e:
    fail(f"--perplexity={source}: cannot read it ({e.__class__.__name__}: {e})")
  return []


def evaluate(workdir: Path, step: int | None) -> tuple[dict[str, Any], Path]:
  from lmjax.harness import HarnessError, LmjaxLM, check_scores_text, headline_metrics, load_tasks, output_types
  from lmjax.harness import run_tasks, task_manager
  from lmjax.saved_run import RunError, open_run
  from lmjax.scoring import ScoringError, perplexity

  try:
    run = open_run(workdir)
    model = run.model()
    check_scores_text(run.config, model)
    tasks = {}
    if _TASKS.value:
      tasks = load_tasks(task_manager(_INCLUDE_PATH.value, _TASKS.value), _TASKS.value)
      check_scores_text(run.config, model, generates="generate_until" in output_types(tasks))
    name = _NAME.value or eval_results.default_name(_TASKS.value, _PERPLEXITY.value)
    texts = {eval_results.perplexity_label(s): read_texts(s, run.config) for s in _PERPLEXITY.value}
    params, step = run.load_params(step)
  except (RunError, HarnessError) as e:
    fail(str(e).replace("no checkpoint at step", "--step: no checkpoint at step"))

  path = eval_results.path_of(workdir, name)
  if _SKIP_EXISTING.value and eval_results.read(workdir).get(name, {}).get("step") == step:
    print(f"{path} already holds step {step}; nothing to do (--skip_existing)", file=sys.stderr)
    sys.exit(0)
  add_bos = None if _ADD_BOS.value == "auto" else _ADD_BOS.value == "true"
  start = time.perf_counter()
  try:
    lm = LmjaxLM(model, params, run.tokenizer, run.config, step=step, max_length=_MAX_LENGTH.value,
                 add_bos_token=add_bos, batch_tokens=_BATCH_TOKENS.value, seed=_SEED.value)
    record: dict[str, Any] = {"name": name, "workdir": os.path.abspath(workdir), "step": step, "metrics": {},
                              "perplexity": {}}
    window = _WINDOW.value or lm.max_length
    if window > lm.max_length:
      fail(f"--window={window} exceeds the context of {lm.max_length} tokens (--max_length)")
    stride = _STRIDE.value or max(1, window // 2)
    for label, docs in texts.items():
      record["perplexity"][label] = perplexity(lm.scorer, docs, lambda t: lm.tok_encode(t, add_special_tokens=False),
                                               window=window, stride=stride)
    if tasks:
      results = run_tasks(lm, tasks, num_fewshot=_NUM_FEWSHOT.value, limit=_LIMIT.value or None, seed=_SEED.value,
                          log_samples=_LOG_SAMPLES.value)
      record["metrics"] = headline_metrics(results)
      record["harness"] = {k: results.get(k) for k in ("results", "groups", "group_subtasks", "versions", "n-shot",
                                                       "higher_is_better", "n-samples", "configs", "lm_eval_version",
                                                       "samples") if k in results}
  except (HarnessError, ScoringError) as e:
    fail(str(e))
  seconds = time.perf_counter() - start
  record["lmjax"] = {"compilations": lm.compilations, "shapes": [list(s) for s in lm.scorer.shapes],
                     "seconds": seconds, "requests": lm.requests, "max_length": lm.max_length,
                     "add_bos_token": lm.add_bos, "batch_tokens": _BATCH_TOKENS.value, "seed": _SEED.value,
                     "num_fewshot": _NUM_FEWSHOT.value, "limit": _LIMIT.value or None,
                     "window": window if texts else None, "stride": stride if texts else None,
                     "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
  return record, eval_results.write(workdir, name, record)


def summary_lines(record: dict[str, Any]) -> list[str]:
  lines = []
  for task, metrics in record["metrics"].items():
    lines.append(f"{task} | " + " | ".join(f"{m} {v:.4f}" for m, v in metrics.items()))
  for label, m in record["perplexity"].items():
    lines.append(f"{label} | perplexity {m['perplexity']:.4f} | bits_per_byte {m['bits_per_byte']:.4f} | "
                 f"bits_per_char {m['bits_per_char']:.4f} | {m['tokens']:.0f} tokens in {m['windows']:.0f} windows "
                 f"(window {m['window']:.0f}, stride {m['stride']:.0f})")
  return lines


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  console.setup(uses_tfds=any(s.startswith("tfds:") for s in _PERPLEXITY.value))
  check_flags()
  record, path = evaluate(Path(_WORKDIR.value), _STEP.value)
  print("\n".join(summary_lines(record)))
  shapes = ", ".join(f"{s[0]} {s[1]}x{s[2]}" for s in record["lmjax"]["shapes"])
  print(f"checkpoint step {record['step']}: {record['lmjax']['compilations']} programs compiled (rows x length: "
        f"{shapes}) in {record['lmjax']['seconds']:.1f} s, compilation included; wrote {path}", file=sys.stderr)


def run() -> None:
  """The `lmjax-evaluate` command."""
  describe_command(__name__)
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
