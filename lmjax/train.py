"""train_and_evaluate(config, workdir): data, model, state, the loop, eval, samples, checkpoints, writers."""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from lmjax import metrics as metrics_lib
from lmjax import init_from, programs, sharding, writers
from lmjax.checkpoint import Checkpointer, has_checkpoints
from lmjax.config import ConfigError, validate
from lmjax.data import sources
from lmjax.data.tokenizers import BOS_ID, EOS_ID, Tokenizer, build_tokenizer
from lmjax.decode import generate, generate_without_cache, step_decoder
from lmjax.optim import learning_rate_schedule
from lmjax.preemption import Preempted, StopSignals
from lmjax.state import abstract_train_state, count_params, create_train_state
from lmjax.tasks import get_task
from lmjax.tasks.base import TaskData
from lmjax.workdir import check_config, record_config


def data_dir_of(config: ml_collections.ConfigDict, workdir: Path) -> Path:
  return Path(config.data.data_dir) if config.data.data_dir else workdir / "data"


def prepare_tokenizer(config: ml_collections.ConfigDict, workdir: Path) -> Tokenizer:
  """Trained (or collected) on the training split once, then loaded from workdir/tokenizer."""
  data_dir = data_dir_of(config, workdir)
  texts = lambda: sources.iter_texts(config.data, config.data.train_split, data_dir)
  task_texts = getattr(get_task(config.task), "tokenizer_texts", None)
  if task_texts is not None:  # a task whose data are not plain documents (parallel pairs) says what to train on
    texts = lambda: task_texts(config, data_dir)
  return build_tokenizer(config.tokenizer.kind, texts, workdir / "tokenizer", vocab_size=config.tokenizer.vocab_size,
                         max_training_chars=config.tokenizer.max_training_chars)


class NonFiniteError(RuntimeError):
  """Training diverged: too many consecutive steps had a non-finite loss, gradients or update."""


def check_prompt_fits(config: ml_collections.ConfigDict, tokenizer: Tokenizer) -> None:
  length = 1 + len(tokenizer.encode(config.train.sample_prompt))
  window = min(config.model.max_len, config.data.seq_len)
  if config.train.num_samples and length >= window:
    raise ConfigError(f"config.train.sample_prompt is {length} tokens with <bos>, but samples are generated in a "
                      f"{window}-token context; shorten the prompt or set train.num_samples=0.")


def _any_process(flag: bool) -> bool:
  """Whether any process has the flag set: all hosts must stop at the same step or their collectives hang."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.process_allgather(np.asarray(flag, np.int32)).any())


def _process_zero_first(fn):
  """Runs fn on process 0, then on the others: with a shared workdir, process 0 writes config.json, the tokenizer
  and the data caches, and the rest read them instead of racing to write the same files."""
  if jax.process_count() == 1:
    return fn()
  if jax.process_index() == 0:
    try:
      return fn()
    finally:  # reached even when fn fails, so the others are not left waiting; they then fail the same way
      multihost_utils.sync_global_devices("lmjax: workdir prepared")
  multihost_utils.sync_global_devices("lmjax: workdir prepared")
  return fn()


def _truncate_metrics_after(workdir: Path, step: int) -> None:
  """A resumed run rewrites history from its checkpoint on, so drop records a killed run logged past it."""
  path = workdir / "metrics.jsonl"
  if jax.process_index() != 0 or not path.exists():
    return
  kept = [r for r in writers.read_metrics(workdir) if r["step"] <= step]
  tmp = path.with_suffix(".jsonl.tmp")
  tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
  os.replace(tmp, path)  # atomic: a kill here leaves the old file or the new one, never half of one


# Entries of a train step's metrics that the loop reports itself; any others are the task's own (e.g. mlm_loss).
_STEP_BOOKKEEPING = ("loss", "tokens", "grad_norm", "skipped")


def _stack(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


class Sampler:
  """Writes generated text to workdir/samples/step_NNNNNN.txt so a person can read what the model learned."""

  def __init__(self, config: ml_collections.ConfigDict, model: Any, tokenizer: Tokenizer, workdir: Path,
               mesh: jax.sharding.Mesh, rules: sharding.Rules):
    t = config.train
    self.tokenizer, self.num, self.dir = tokenizer, t.num_samples, workdir / "samples"
    prompt = [BOS_ID] + tokenizer.encode(t.sample_prompt).tolist()
    self.prompt_text = t.sample_prompt
    self.prompt_BP = sharding.replicated(np.tile(np.asarray(prompt, np.int32), (max(self.num, 1), 1)), mesh)
    window = min(config.model.max_len, config.data.seq_len)
    decoder = step_decoder(model)
    settings = dict(temperature=t.sample_temperature, top_k=t.sample_top_k)
    if decoder is not None and 0 < t.sample_length and len(prompt) + t.sample_length <= window:
      # The sample fits in the context the model trained on: decode over a cache, stopping at EOS.
      def sample(params, prompt_BP, rng):
        lengths_B = jnp.full(prompt_BP.shape[:1], prompt_BP.shape[1], jnp.int32)
        return generate(decoder, params, prompt_BP, lengths_B, rng, max_new_tokens=t.sample_length, **settings)
    else:
      # Longer samples (or models without a cache) slide a window of the trained context over the text.
      sample = functools.partial(generate_without_cache, model, num_new=t.sample_length, window=window, **settings)
    # Replicated output: every process can read the samples, whatever the mesh.
    self._generate = jax.jit(sample, out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    self.mesh, self.rules = mesh, sharding.without_batch_sharding(rules)
    self.seed = config.seed

  def __call__(self, params: Any, step: int) -> list[str]:
    if self.num == 0:
      return []
    rng = sharding.replicated(np.asarray(jax.random.PRNGKey(self.seed + step)), self.mesh)
    with sharding.activate(self.mesh, self.rules):  # a few prompts: replicated, not split over batch shards
      tokens_BT = np.asarray(self._generate(params, self.prompt_BP, rng).addressable_data(0))
    texts = []
    for row in tokens_BT:
      new = row[self.prompt_BP.shape[1]:].tolist()
      new = new[: new.index(EOS_ID)] if EOS_ID in new else new
      texts.append(self.prompt_text + self.tokenizer.decode(new))
    if jax.process_index() == 0:
      self.dir.mkdir(parents=True, exist_ok=True)
      body = "".join(f"--- sample {i} (step {step}) ---\n{text}\n\n" for i, text in enumerate(texts))
      (self.dir / f"step_{step:06d}.txt").write_text(body)
    return texts


def evaluate(eval_fn, params: Any, batches: list[dict[str, np.ndarray]], task: Any) -> dict[str, float]:
  sums: dict[str, float] = {}
  device_sums = [eval_fn(params, batch) for batch in batches]  # dispatched back to back, fetched once
  for s in jax.device_get(device_sums):
    sums = metrics_lib.add(sums, {k: float(v) for k, v in s.items()})
  return task.summarize(sums)


def score_predictions(predict_fn, params: Any, batches: list[dict[str, jax.Array]], data: TaskData, split: str,
                      step: int, out_dir: Path | None) -> dict[str, float]:
  """The task data's metrics from the predictions over a whole eval split (padding rows, index -1, dropped)."""
  device_outputs = [predict_fn(params, batch) for batch in batches]  # dispatched back to back, then fetched
  # Replicated arrays: the first local shard is the whole array, also when other processes hold copies.
  outputs = [{k: np.asarray(v.addressable_data(0)) for k, v in o.items()} for o in device_outputs]
  merged = {k: np.concatenate([np.asarray(o[k]) for o in outputs]) for k in outputs[0]}
  index_N = merged.pop("index")
  real = index_N >= 0
  return data.score(split, index_N[real], {k: v[real] for k, v in merged.items()}, step=step, out_dir=out_dir)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, *,
                       stop_at: int | None = None) -> dict[str, float]:
  """Trains config.train.num_steps steps (resuming from workdir's latest checkpoint) and returns eval metrics.

  `stop_at` ends this process's share of the run early, after saving a checkpoint at that step, the way a
  preempted job would; rerunning continues to num_steps.
  """
  validate(config)
  # The mesh is checked against the devices before any data is read or anything compiles.
  sharding.check_batch_fits(config, sharding.make_mesh(config.mesh), sharding.logical_rules(config.mesh))
  pretrained = init_from.check(config)  # a fine-tune's pretraining run: checked before the workdir is touched
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  task_class = get_task(config.task)

  def prepare():
    check_config(config, workdir, has_checkpoint=has_checkpoints(workdir / "checkpoints"))
    if pretrained is not None:
      init_from.copy_tokenizer(pretrained, workdir)
    tokenizer = prepare_tokenizer(config, workdir)
    return tokenizer, task_class.prepare_data(config, tokenizer, data_dir_of(config, workdir))
  tokenizer, data = _process_zero_first(prepare)
  if task_class.generates_text:
    check_prompt_fits(config, tokenizer)
  if config.model.name == "ngram":  # count-based: fitted in one pass over the data, no gradient steps
    from lmjax.models.ngram import fit_and_evaluate
    record_config(config, workdir)  # the data are ready: the run starts for real
    return fit_and_evaluate(config, workdir, tokenizer, data.train_tokens, data.eval_tokens)
  progs = programs.build(config, tokenizer.vocab_size, token_bytes_V=tokenizer.token_byte_lengths(),
                         token_chars_V=tokenizer.token_char_lengths(), data=data)
  with sharding.activate(progs.mesh, progs.rules):
    return _train(config, workdir, progs, tokenizer, data, stop_at)


def _train(config: ml_collections.ConfigDict, workdir: Path, progs: programs.Programs, tokenizer: Tokenizer,
           data: TaskData, stop_at: int | None) -> dict[str, float]:
  t, d = config.train, config.data
  if progs.frozen_shardings is not None:
    # Parameters the steps read but never train (a distillation teacher): loaded at every start or resume, never
    # part of the checkpoints.
    progs = progs.with_frozen(progs.task.load_frozen(progs.frozen_shardings))
  model, task, optimizer, mesh = progs.model, progs.task, progs.optimizer, progs.mesh
  train_fn, eval_fn, shardings = progs.train_fn, progs.eval_fn, progs.state_shardings
  schedule = learning_rate_schedule(config.optim, t.num_steps)

  process = dict(process_index=jax.process_index(), process_count=jax.process_count())
  train_iter = iter(data.train_dataset(**process))
  eval_sets = {split: [sharding.global_batch(b, mesh, progs.eval_batch_spec) for b in local]
               for split, local in data.eval_sets(**process).items()}

  init_args = task.init_args(config)
  checkpointer = Checkpointer(workdir / "checkpoints", keep=t.keep_checkpoints, every=t.checkpoint_every,
                              async_save=t.async_checkpoints)
  restored = None
  if checkpointer.latest_step() is not None:
    target = abstract_train_state(model, optimizer, config.seed, init_args, shardings)
    restored = checkpointer.restore_latest(target, train_iter)
  if restored is not None:
    state, latest = restored
    _truncate_metrics_after(workdir, latest)
    logging.info("Resumed from %s at step %d.", workdir / "checkpoints", latest)
  else:
    state = create_train_state(model, optimizer, config.seed, init_args, shardings)
    if config.finetune.init_from:
      params, copied = init_from.pretrained_params(config, state.params)
      state = state.replace(params=init_from.place(params, shardings.params))
      logging.info("Started %s from %s (step %s); the rest is freshly initialized.", ", ".join(copied),
                   config.finetune.init_from, config.finetune.init_step or "latest")
    if hasattr(task, "initial_params"):  # a task's own start, e.g. a student's layers copied from its teacher
      state = state.replace(params=task.initial_params(state.params, progs.frozen))
  record_config(config, workdir)  # restored or initialized: the run starts for real, so config.json records it
  step = int(state.step)
  num_params, first_row = count_params(state.params), True  # the size goes into the first train record
  logging.info("Mesh %s over %d devices (%d processes).", dict(mesh.shape), mesh.size, jax.process_count())
  logging.info("Model %s: %s parameters; vocab %d (%s tokenizer); %s.", config.model.name,
               f"{count_params(state.params):,}", tokenizer.vocab_size, tokenizer.kind, data.summary)

  sampler = Sampler(config, model, tokenizer, workdir, mesh, progs.rules) if task.generates_text else None
  writer = writers.MetricWriter(workdir, tensorboard=t.tensorboard)

  scores = progs.predict_fn is not None and hasattr(data, "score")

  def run_eval(step: int, write: bool = True) -> dict[str, float]:
    for split, batches in eval_sets.items():
      split_metrics = evaluate(eval_fn, state.params, batches, task)
      if scores:
        out_dir = workdir / "predictions" if write and jax.process_index() == 0 else None
        split_metrics |= score_predictions(progs.predict_fn, state.params, batches, data, split, step, out_dir)
      logging.info("%s step %d | %s", split, step,
                   " | ".join(f"{k} {v:.4f}" for k, v in split_metrics.items() if k != "tokens"))
      if write:
        writer.write(step, split, split_metrics)
      if split == "eval":
        metrics = split_metrics
    if write and sampler is not None:
      samples = sampler(state.params, step)
      if samples:
        logging.info("sample at step %d:\n%s", step, samples[0])
    return metrics

  end = t.num_steps if stop_at is None else min(stop_at, t.num_steps)
  tokens_per_step = t.batch_size * d.seq_len
  pending: list[dict[str, jax.Array]] = []
  # Throughput counts training only: compiling, evaluating and checkpointing are timed and left out.
  interval_start, interval_steps, excluded_s, eval_metrics = time.perf_counter(), 0, 0.0, {}
  first_call = True
  try:
    with StopSignals() as stop:
      while step < end:
        k = min(t.steps_per_call, end - step)
        call_start = time.perf_counter()
        batches = sharding.global_batch(_stack([next(train_iter) for _ in range(k)]), mesh, progs.train_batch_spec)
        state, step_metrics = train_fn(state, batches)
        pending.append(step_metrics)
        step += k
        if first_call:
          jax.block_until_ready(step_metrics)
          compile_s = time.perf_counter() - call_start
          logging.info("Compiled and ran the first train call in %.1f s.", compile_s)
          excluded_s, first_call = excluded_s + compile_s, False
        else:
          interval_steps += k

        if step % t.log_every == 0 or step == end:
          fetched = jax.device_get(pending)
          gather = lambda key: np.concatenate([np.atleast_1d(m[key]) for m in fetched])
          ok = gather("skipped") == 0
          mean_ok = lambda key: float(np.mean(gather(key)[ok])) if ok.any() else float("nan")
          train_s = time.perf_counter() - interval_start - excluded_s
          seconds_per_step = train_s / interval_steps if interval_steps else float("nan")
          row = {"num_params": num_params} if first_row else {}
          first_row = False
          row |= {"loss": mean_ok("loss")}
          row |= {key: mean_ok(key) for key in sorted(fetched[0]) if key not in _STEP_BOOKKEEPING}  # task metrics
          row |= {"grad_norm": mean_ok("grad_norm"),
                  "learning_rate": float(schedule(step - 1)), "skipped_steps": float((~ok).sum()),
                  "steps_per_s": 1.0 / seconds_per_step, "tokens_per_s": tokens_per_step / seconds_per_step}
          writer.write(step, "train", row)
          logging.info("%s", writers.progress_line(step, t.num_steps, row, seconds_per_step * (t.num_steps - step)))
          pending, interval_start, interval_steps, excluded_s = [], time.perf_counter(), 0, 0.0

        streak = int(state.nonfinite_streak)
        if streak >= t.max_nonfinite_steps:
          raise NonFiniteError(
              f"stopped at step {step}: the loss, gradients or updates were not finite for {streak} consecutive steps "
              f"(train.max_nonfinite_steps={t.max_nonfinite_steps}); those steps were skipped, so the checkpoints "
              f"are intact. Lower optim.learning_rate, raise optim.warmup_steps or check the data.")

        pause_start = time.perf_counter()
        if step % t.eval_every == 0 or step == t.num_steps:
          eval_metrics = run_eval(step)
        checkpointer.save(step, state, train_iter, force=step == end)
        if _any_process(stop.requested):
          if checkpointer.latest_step() != step:
            checkpointer.save(step, state, train_iter, force=True)
          checkpointer.wait()
          raise Preempted(step, stop.received or "a stop signal on another process")
        excluded_s += time.perf_counter() - pause_start
  finally:
    checkpointer.close()
    writer.close()

  if not eval_metrics and step >= t.num_steps:  # a finished run started again: report its final metrics
    eval_metrics = run_eval(step, write=False)
  if step >= t.num_steps and t.plot:
    path = writers.plot_loss_curves(workdir)
    if path:
      logging.info("Loss curve: %s", path)
  return eval_metrics
