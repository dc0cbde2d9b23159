"""lm-evaluation-harness tasks on lmjax models: the harness's `LM` interface implemented over lmjax.scoring.

`LmjaxLM` is registered with the harness as model "lmjax" once this module is imported, so the harness's Python
API takes a run by name (`lm_eval.simple_evaluate(model="lmjax", model_args="workdir=runs/x,step=1000", ...)`);
lmjax.evaluate and the trainer (train.eval_tasks) build it from a run. It implements

  * `loglikelihood` (through the harness's TemplateLM, which splits each request into context and continuation
    tokens as its transformers backend does) and `loglikelihood_rolling` (the harness's rolling windows): the
    log-probabilities come from one forward pass of the model per padded batch;
  * `generate_until`: lmjax.decode over a key/value cache, greedy or sampled (do_sample, temperature, top_k,
    top_p), at most max_gen_toks tokens, stopping at <eos> or at a token that holds a stop sequence, then cut at
    the first stop sequence.

Every request type is batched and bucketed by lmjax.scoring, so a whole evaluation compiles a few programs;
`compilations` counts them.

<bos>: lmjax documents start with <bos>, so requests do too (add_bos_token=True) for lmjax's own tokenizers. An
imported GPT-2 vocabulary follows its transformers tokenizer, which adds nothing (add_bos_token=False), so its
scores match the harness's transformers backend. An imported checkpoint's softmax runs over its own vocabulary
only: the special-token rows that lmjax adds to it (lmjax/hf/vocab.py) take no probability.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from lmjax.data.tokenizers import BOS_ID, EOS_ID, NUM_SPECIAL
from lmjax.hf.tokenizers import HfBpeTokenizer, HfWordPieceTokenizer
from lmjax.scoring import Row, Scorer, ScoringError

# Tokenizer kinds whose original tokenizer adds no <bos> to the text it encodes.
NO_BOS_KINDS = ("hf_bpe",)
DEFAULT_MAX_GEN_TOKS = 256


class HarnessError(ValueError):
  """A task or model the harness cannot run as asked; the message is one line naming the fix."""


def scored_rows(tokenizer: Any) -> np.ndarray | None:
  """bool [V]: the vocabulary rows that take probability, or None for all of them. An imported vocabulary scores
  over its own tokens only, as the checkpoint did; the rows lmjax adds for missing special roles are left out."""
  if isinstance(tokenizer, (HfBpeTokenizer, HfWordPieceTokenizer)):
    return tokenizer.vocab_map.hf_of_lmjax >= 0
  return None


def context_length(config: Any, model: Any, requested: int = 0) -> int:
  """The longest input scored at once: `requested`, else a learned-position model's max_len, else the context the
  run trained at (data.seq_len). More than a learned position table holds is one line."""
  limit = model.cfg.context_limit()
  if requested:
    if limit is not None and requested > limit:
      raise HarnessError(f"max_length={requested} exceeds model.max_len={limit}, the size of the learned position "
                         f"table (model.position={config.model.position!r}); use at most {limit}")
    return requested
  return limit if limit is not None else int(config.data.seq_len)


def check_scores_text(config: Any, model: Any, *, generates: bool = False) -> None:
  """One line for a model that cannot score next tokens (an encoder such as BERT), or cannot generate when a task
  needs generation."""
  name, interface = config.model.name, model.cfg.interface
  what = "generate text" if generates else "score continuations or perplexity"
  if interface == "encoder":
    raise HarnessError(f"model.name={name!r} is an encoder-only model: it predicts no next token, so it cannot "
                       f"{what}; evaluate a decoder run (task='causal_lm')")
  if interface != "next_token":
    raise HarnessError(f"model.name={name!r} is an encoder-decoder model; lmjax.evaluate scores and generates with "
                       f"decoder-only runs (task='causal_lm'), so it cannot {what} here")
  if config.model.name == "ngram":
    raise HarnessError("model.name='ngram' is fitted in one pass and keeps no parameters to evaluate; its "
                       "metrics are in its metrics.jsonl")
  if generates and not model.cfg.decodes:
    raise HarnessError(f"model.name={name!r} cannot decode over a key/value cache, so it cannot run generate_until "
                       f"tasks; choose log-likelihood tasks")


@register_model("lmjax")
class LmjaxLM(TemplateLM):
  """A run's model behind the harness's LM interface."""

  def __init__(self, model: Any = None, params: Any = None, tokenizer: Any = None, config: Any = None, *,
               workdir: str | None = None, step: int | None = None, max_length: int = 0,
               add_bos_token: bool | None = None, batch_tokens: int = 8192, max_rows: int = 64, seed: int = 0,
               place: Callable | None = None, activate: Callable | None = None, **unused: Any):
    super().__init__()
    del unused  # the harness's batch_size, device, ...: batches are sized in tokens and placed by JAX
    if workdir is not None:  # lm_eval --model lmjax --model_args workdir=...
      from lmjax.saved_run import open_run  # pylint: disable=import-outside-toplevel
      run = open_run(workdir)
      config, tokenizer, model = run.config, run.tokenizer, run.model()
      params, step = run.load_params(None if step in (None, "") else int(step))
    if model is None or params is None or tokenizer is None or config is None:
      raise HarnessError("LmjaxLM needs a run: workdir=DIR (and step=N), or model, params, tokenizer and config")
    check_scores_text(config, model)
    self.model, self.tokenizer_, self.config, self.step = model, tokenizer, config, step
    self.add_bos = (tokenizer.kind not in NO_BOS_KINDS) if add_bos_token in (None, "") else _bool(add_bos_token)
    self._max_length = context_length(config, model, int(max_length or 0))
    self.seed = int(seed)
    self.scorer = Scorer(model, params, max_length=self._max_length, batch_tokens=int(batch_tokens),
                         max_rows=int(max_rows), scored_V=scored_rows(tokenizer), place=place, activate=activate)
    self.requests = {"loglikelihood": 0, "loglikelihood_rolling": 0, "generate_until": 0}
    self._stop_tables: dict[tuple[str, ...], np.ndarray] = {}

  # --- what the harness asks of a model ---------------------------------------------------------------------------

  @property
  def eot_token_id(self) -> int:
    return EOS_ID

  @property
  def prefix_token_id(self) -> int:
    return BOS_ID

  @property
  def max_length(self) -> int:
    return self._max_length

  @property
  def tokenizer_name(self) -> str:
    return f"lmjax-{self.tokenizer_.kind}-{self.tokenizer_.fingerprint()}"

  @property
  def compilations(self) -> int:
    return self.scorer.compilations

  def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
    del kwargs
    bos = self.add_bos if add_special_tokens is None else add_special_tokens
    return [BOS_ID] * bos + self.tokenizer_.encode(string).tolist()

  def tok_decode(self, tokens: Sequence[int]) -> str:
    return self.tokenizer_.decode(np.asarray(tokens, np.int32))

  def _loglikelihood_tokens(self, requests: Sequence[tuple[Any, list[int], list[int]]],
                            disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
    del disable_tqdm, kwargs
    rows = []
    for _, context, continuation in requests:
      if not continuation:
        raise HarnessError("a request has an empty continuation; the task's doc_to_target/choices give no text")
      if len(continuation) > self.max_length:
        raise HarnessError(f"a continuation of {len(continuation)} tokens exceeds the context of "
                           f"{self.max_length} tokens (max_length)")
      # As the harness's transformers backend: the newest max_length + 1 tokens, the context cut from the left.
      rows.append(Row(tuple((context + continuation)[-(self.max_length + 1):]), len(continuation)))
    self.requests["loglikelihood"] += len(rows)
    return self.scorer.score(rows)

  def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[float]:
    del disable_tqdm
    rows, owner = [], []
    for n, request in enumerate(requests):
      (text,) = request.args
      for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
          token_list=self.tok_encode(text, add_special_tokens=False), prefix_token=self.prefix_token_id,
          max_seq_len=self.max_length, context_len=1)):
        rows.append(Row(tuple(context + continuation), len(continuation)))
        owner.append(n)
    totals = [0.0] * len(requests)
    for n, (logp, _) in zip(owner, self.scorer.score(rows)):
      totals[n] += logp
    self.requests["loglikelihood_rolling"] += len(requests)
    for request, total in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
    return totals

  def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
    del disable_tqdm
    check_scores_text(self.config, self.model, generates=True)
    groups: dict[str, list[int]] = {}
    for n, request in enumerate(requests):
      groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(n)
    out: list[str] = [""] * len(requests)
    for indices in groups.values():
      kwargs = normalize_gen_kwargs(dict(requests[indices[0]].args[1]), DEFAULT_MAX_GEN_TOKS)
      until = kwargs.pop("until", None)
      until = [s for s in ([until] if isinstance(until, str) else list(until or [])) if s]
      sampled = bool(kwargs.get("do_sample", False)) and float(kwargs.get("temperature", 1.0) or 0.0) > 0
      prompts = [self.tok_encode(requests[n].args[0]) for n in indices]
      try:
        new = self.scorer.generate(
            prompts, max_new_tokens=int(kwargs["max_gen_toks"]),
            temperature=float(kwargs.get("temperature", 1.0)) if sampled else 0.0,
            top_k=int(kwargs.get("top_k") or 0) if sampled else 0,
            top_p=float(kwargs.get("top_p") or 1.0) if sampled else 1.0,
            stop_V=self._stop_table(tuple(until)), seed=self.seed)
      except ScoringError as e:
        raise HarnessError(str(e)) from None
      for n, tokens in zip(indices, new):
        text = self.tok_decode(tokens)
        for stop in until:
          text = text.split(stop)[0]
        out[n] = text
        self.cache_hook.add_partial("generate_until", requests[n].args, text)
    self.requests["generate_until"] += len(requests)
    return out

  def _stop_table(self, until: tuple[str, ...]) -> np.ndarray:
    """bool [V]: the tokens whose text holds a stop sequence, so a row ends on them instead of running to
    max_gen_toks (a stop sequence across two tokens is still cut afterwards)."""
    if until not in self._stop_tables:
      table = np.zeros(self.model.cfg.vocab_size, bool)
      for i in range(NUM_SPECIAL, min(self.tokenizer_.vocab_size, table.size)):
        piece = self.tok_decode([i])
        table[i] = any(stop in piece for stop in until)
      self._stop_tables[until] = table
    return self._stop_tables[until]


def _bool(value: Any) -> bool:
  return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")


# --- tasks ----------------------------------------------------------------------------------------------------

OFFLINE_HINT = ("on a machine with network, fill the datasets cache with `python -c \"import datasets; "
                "datasets.load_dataset({args})\"` and copy HF_HOME (~/.cache/huggingface) here, then set "
                "HF_DATASETS_OFFLINE=1; or save the data as JSONL and point a task YAML at it with --include_path "
                "(docs/evaluation.md)")


def task_manager(include_path: str | Sequence[str] = "", names: Sequence[str] = ()) -> Any:
  """The harness's task index: the user's own YAMLs alone when they hold every name asked for (indexing the
  harness's thousands of task files takes many seconds), else the built-in tasks and the user's."""
  from lm_eval.tasks import TaskManager  # pylint: disable=import-outside-toplevel
  paths = [include_path] if isinstance(include_path, str) else list(include_path)
  paths = [os.path.abspath(p) for p in paths if p]  # the harness keeps them as given; tasks load from elsewhere
  for p in paths:
    if not Path(p).is_dir():
      raise HarnessError(f"--include_path={p}: no such directory; give the directory holding your task YAMLs")
  if paths and names:
    own = TaskManager(include_path=paths, include_defaults=False)
    if set(names) <= set(own.all_tasks):
      return own
  return TaskManager(include_path=paths or None)


def check_task_names(manager: Any, names: Sequence[str]) -> None:
  known = set(manager.all_tasks)
  for name in names:
    if name not in known and not (name.endswith((".yaml", ".yml")) and Path(name).is_file()):
      close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
      hint = f"did you mean {', '.join(close)}?" if close else "list them with `lm_eval ls tasks`"
      raise HarnessError(f"--tasks: {name!r} is not a harness task, group or tag ({len(known)} known); {hint}")


LOCAL_BUILDERS = ("json", "csv", "text", "parquet", "arrow")


def _hub_dataset(manager: Any, name: str) -> str | None:
  """The load_dataset arguments of a task whose data comes from the hub, or None for local data."""
  entry = manager.task_index.get(name)
  cfg = (entry.cfg or {}) if entry is not None else {}
  path, subset = cfg.get("dataset_path"), cfg.get("dataset_name")
  if not isinstance(path, str) or path in LOCAL_BUILDERS or os.path.exists(path):
    return None
  return repr(path) + (f", {subset!r}" if subset else "")


def load_tasks(manager: Any, names: Sequence[str]) -> dict[str, Any]:
  """{task name: Task} of the named tasks, groups and tags, their data loaded. A task of the user's own
  (include_path) reads relative data_files from its YAML's directory. A task whose data cannot be fetched is one
  line saying how to prepare it offline."""
  check_task_names(manager, names)
  tasks: dict[str, Any] = {}
  for name in names:
    entry = manager.task_index.get(name)
    directory = entry.yaml_path.parent if entry is not None and entry.yaml_path is not None else None
    previous = os.getcwd()
    try:
      if directory is not None:
        os.chdir(directory)
      tasks.update(manager.load([name])["tasks"])
    except HarnessError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # datasets and the hub raise many kinds
      reason = " ".join(str(e).split())[:200]
      hub = _hub_dataset(manager, name)
      if hub is None:
        raise HarnessError(f"task {name!r}: its data could not be loaded ({e.__class__.__name__}: {reason})") from None
      raise HarnessError(f"task {name!r} reads its data ({hub}) from the Hugging Face hub, which could not be "
                         f"reached ({e.__class__.__name__}); " + OFFLINE_HINT.format(args=hub)) from None
    finally:
      os.chdir(previous)
  return tasks


def output_types(tasks: dict[str, Any]) -> set[str]:
  return {task.OUTPUT_TYPE for task in tasks.values()}


def run_tasks(lm: LmjaxLM, tasks: dict[str, Any], *, num_fewshot: int | None = None, limit: float | None = None,
              seed: int = 0, log_samples: bool = False) -> dict[str, Any]:
  """The harness's evaluation of `lm` on loaded tasks: its results dict (results, versions, configs, n-shot...)."""
  import lm_eval  # pylint: disable=import-outside-toplevel
  if "generate_until" in output_types(tasks):
    check_scores_text(lm.config, lm.model, generates=True)
  if num_fewshot is not None:
    for task in tasks.values():
      task.set_config(key="num_fewshot", value=num_fewshot)
  # An empty task manager: the tasks are loaded already, and the harness would index all of its own again.
  from lm_eval.tasks import TaskManager  # pylint: disable=import-outside-toplevel
  results = lm_eval.simple_evaluate(model=lm, tasks=list(tasks.values()), limit=limit, bootstrap_iters=0,
                                    task_manager=TaskManager(include_defaults=False),
                                    log_samples=log_samples, random_seed=seed, numpy_random_seed=seed,
                                    torch_random_seed=seed, fewshot_random_seed=seed)
  if results is None:
    raise HarnessError("the harness returned no results")
  return results


def headline_metrics(results: dict[str, Any]) -> dict[str, dict[str, float]]:
  """{task: {metric: value}}: the numeric metrics of each task, without standard errors, and without the harness's
  ',none' filter suffix (other filters keep theirs: 'exact_match,strict-match')."""
  out: dict[str, dict[str, float]] = {}
  for task, metrics in results.get("results", {}).items():
    row = {}
    for key, value in metrics.items():
      metric, _, filt = key.partition(",")
      if not filt or "_stderr" in metric or isinstance(value, (str, bool)) or value is None:
        continue
      try:
        row[metric if filt == "none" else f"{metric},{filt}"] = float(value)
      except (TypeError, ValueError):
        continue
    if row:
      out[task] = row
  return out


# --- in-training evaluation (train.eval_tasks) ------------------------------------------------------------------

class TrainingTasks:
  """Harness tasks the trainer runs at chosen steps (train.eval_tasks); built before anything compiles, so a bad
  task name or missing data stops the run at once."""

  def __init__(self, config: Any, model: Any, tokenizer: Any, mesh: Any, rules: Any):
    from lmjax import sharding  # pylint: disable=import-outside-toplevel
    t = config.train
    check_scores_text(config, model)
    self.config, self.model, self.tokenizer = config, model, tokenizer
    self.every = t.eval_tasks_every or t.eval_every
    self.limit = t.eval_tasks_limit or None
    self.names = [n.strip() for n in t.eval_tasks.split(",") if n.strip()]
    self.tasks = load_tasks(task_manager(t.eval_tasks_include_path, self.names), self.names)
    if "generate_until" in output_types(self.tasks):
      check_scores_text(config, model, generates=True)
    # As the trainer's sampler: replicated inputs, parameters as the mesh holds them.
    self._place = lambda x: sharding.replicated(x, mesh)
    self._activate = lambda: sharding.activate(mesh, sharding.without_batch_sharding(rules))

    self.lm: LmjaxLM | None = None

  def due(self, step: int) -> bool:
    return step % self.every == 0 or step == self.config.train.num_steps

  def __call__(self, params: Any, step: int) -> dict[str, dict[str, float]]:
    """{split name 'harness/<task>': metrics} at this step."""
    if self.lm is None:
      self.lm = LmjaxLM(self.model, params, self.tokenizer, self.config, step=step, seed=self.config.seed,
                        place=self._place, activate=self._activate)
    self.lm.scorer.params, self.lm.step = params, step  # one model class for the run: compiled once
    results = run_tasks(self.lm, self.tasks, limit=self.limit, seed=self.config.seed)
    return {f"harness/{task}": metrics for task, metrics in headline_metrics(results).items()}
