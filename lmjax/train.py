"""train_and_evaluate(config, workdir): data, model, state, the loop, eval, samples, checkpoints, writers."""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from lmjax import metrics as metrics_lib
from lmjax import compile_cache, init_from, programs, provenance, sharding, writers
from lmjax.checkpoint import Checkpointer, has_checkpoints
from lmjax.config import ConfigError
from lmjax.config_validation import validate
from lmjax.data.tokenizers import BOS_ID, EOS_ID, Tokenizer
from lmjax.decode import generate, generate_without_cache, step_decoder
from lmjax.models.base import FitResult
from lmjax.optim import learning_rate_schedule
from lmjax.prepare import adopt_tokenizer, data_dir_of, prepare_tokenizer
from lmjax.preemption import Preempted, StopSignals
from lmjax.profiling import StepProfiler
from lmjax.registry import TASKS
from lmjax.state import abstract_train_state, count_params, create_train_state
from lmjax.tasks.base import SamplePrompt, Task, TaskData, VocabInfo
from lmjax.workdir import check_config, record_config


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


class AnswerSampler:
  """Answers to the data's own held-out prompts (SFT's questions), written at each eval beside the data's answers:
  workdir/samples/step_NNNNNN.txt to read and step_NNNNNN.jsonl ({"prompt", "answer", "reference"}) for tools.
  Each prompt is continued in the trained context, over a cache, until <eos> or train.sample_length tokens."""

  def __init__(self, config: ml_collections.ConfigDict, decoder: Any, tokenizer: Tokenizer, workdir: Path,
               mesh: jax.sharding.Mesh, rules: sharding.Rules, prompts: list[SamplePrompt]):
    t = config.train
    window = min(config.model.max_len, config.data.seq_len)
    self.prompts = [p for p in prompts if len(p.ids) < window][:t.num_samples]
    self.tokenizer, self.dir, self.seed = tokenizer, workdir / "samples", config.seed
    P = max((len(p.ids) for p in self.prompts), default=1)
    self.new_tokens = min(t.sample_length, window - P)
    prompt_BP = np.zeros((max(len(self.prompts), 1), P), np.int32)
    for i, p in enumerate(self.prompts):
      prompt_BP[i, :len(p.ids)] = p.ids
    self.lengths_B = np.asarray([len(p.ids) for p in self.prompts] or [1], np.int32)
    self.prompt_BP = sharding.replicated(prompt_BP, mesh)
    self.device_lengths_B = sharding.replicated(self.lengths_B, mesh)
    settings = dict(temperature=t.sample_temperature, top_k=t.sample_top_k, max_new_tokens=max(self.new_tokens, 1))
    answer = lambda params, prompt_BP, lengths_B, rng: generate(decoder, params, prompt_BP, lengths_B, rng, **settings)
    self._generate = jax.jit(answer, out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    self.mesh, self.rules = mesh, sharding.without_batch_sharding(rules)

  def __call__(self, params: Any, step: int) -> list[str]:
    if not self.prompts or self.new_tokens < 1:
      return []
    rng = sharding.replicated(np.asarray(jax.random.PRNGKey(self.seed + step)), self.mesh)
    with sharding.activate(self.mesh, self.rules):
      tokens_BT = np.asarray(self._generate(params, self.prompt_BP, self.device_lengths_B, rng).addressable_data(0))
    records = []
    for prompt, length, row in zip(self.prompts, self.lengths_B, tokens_BT):
      new = row[length:length + self.new_tokens].tolist()
      new = new[: new.index(EOS_ID)] if EOS_ID in new else new
      records.append({"prompt": prompt.text, "answer": self.tokenizer.decode(new), "reference": prompt.reference})
    if jax.process_index() == 0:
      self.dir.mkdir(parents=True, exist_ok=True)
      body = "".join(f"--- sample {i} (step {step}) ---\n{r['prompt']}{r['answer']}\n--- reference ---\n"
                     f"{r['reference']}\n\n" for i, r in enumerate(records))
      (self.dir / f"step_{step:06d}.txt").write_text(body, encoding="utf-8")
      (self.dir / f"step_{step:06d}.jsonl").write_text(
          "".join(json.dumps({"step": step, **r}, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return [r["prompt"] + r["answer"] for r in records]


def make_sampler(config: ml_collections.ConfigDict, model: Any, tokenizer: Tokenizer, workdir: Path,
                 mesh: jax.sharding.Mesh, rules: sharding.Rules, prompts: list[SamplePrompt]) -> Any:
  """Answers to the data's prompts when it brings some (and the model decodes over a cache), else samples
  continuing train.sample_prompt."""
  decoder = step_decoder(model)
  if prompts and decoder is not None:
    return AnswerSampler(config, decoder, tokenizer, workdir, mesh, rules, prompts)
  return Sampler(config, model, tokenizer, workdir, mesh, rules)


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, *, stop_at: int | None = None,
                       devices: Sequence[jax.Device] | None = None) -> dict[str, float]:
  """Trains config.train.num_steps steps (resuming from workdir's latest checkpoint) and returns eval metrics.

  `stop_at` ends this process's share of the run early, after saving a checkpoint at that step, the way a
  preempted job would; rerunning continues to num_steps. `devices` are the devices the mesh spans (default:
  every device of the job); a subset, in a single-process job, lets a notebook on a multi-GPU host train on one.
  """
  validate(config)
  if devices is not None and jax.process_count() > 1:
    raise ValueError("train_and_evaluate(devices=...) is for single-process jobs; a multi-process job spans every "
                     "device (choose the mesh's shape with config.mesh)")
  compile_cache.enable(config.train.compile_cache)
  # The mesh is built once and checked against the devices before any data is read or anything compiles.
  mesh = sharding.make_mesh(config.mesh, devices)
  sharding.check_batch_fits(config, mesh, sharding.logical_rules(config.mesh))
  pretrained = init_from.check(config)  # a fine-tune's pretraining run: checked before the workdir is touched
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  task_class = TASKS.get(config.task)

  def prepare():
    check_config(config, workdir, has_checkpoint=has_checkpoints(workdir / "checkpoints"))
    if pretrained is not None:
      init_from.copy_tokenizer(pretrained, workdir)
    elif (shared := task_class.shared_tokenizer(config)) is not None:
      adopt_tokenizer(shared, workdir)
    tokenizer = prepare_tokenizer(config, workdir, task_class)
    return tokenizer, task_class.prepare_data(config, tokenizer, data_dir_of(config, workdir))
  tokenizer, data = _process_zero_first(prepare)
  if task_class.generates_text:
    check_prompt_fits(config, tokenizer)
  vocab = VocabInfo(tokenizer.vocab_size, tokenizer.token_byte_lengths(), tokenizer.token_char_lengths())
  task = task_class.create(config, vocab, data)
  fitted = task.fit(config, tokenizer, data)
  if fitted is not None:
    record_config(config, workdir, mesh.devices.flat)  # fitted: the run happened, so config.json records it
    return _record_fit(config, workdir, fitted, mesh)
  progs = programs.build(config, task, mesh)
  with sharding.activate(progs.mesh, progs.rules):
    return _train(config, workdir, progs, tokenizer, data, stop_at)


def _record_fit(config: ml_collections.ConfigDict, workdir: Path, fitted: FitResult, mesh: jax.sharding.Mesh
                ) -> dict[str, float]:
  """A fitted model's record: its metrics at step 1 and its samples. Refitting is deterministic and cheap, so a
  rerun replaces the record instead of resuming it."""
  logging.info("%s", writers.eval_line("eval", 1, fitted.metrics["eval"]))
  if jax.process_index() == 0:
    (workdir / "metrics.jsonl").unlink(missing_ok=True)
  writer = writers.MetricWriter(workdir, trackers=writers.trackers_of(config.train),
                                run_config=provenance.with_record(config.to_dict(), mesh.devices.flat),
                                wandb_project=config.train.wandb_project)
  try:
    for split, metrics in fitted.metrics.items():
      writer.write(1, split, metrics)
  finally:
    writer.close()
  if fitted.samples and jax.process_index() == 0:
    (workdir / "samples").mkdir(parents=True, exist_ok=True)
    body = "".join(f"--- sample {i} (step 1) ---\n{text}\n\n" for i, text in enumerate(fitted.samples))
    (workdir / "samples" / "step_000001.txt").write_text(body)
    logging.info("sample:\n%s", fitted.samples[0])
  return fitted.metrics["eval"]


def _train(config: ml_collections.ConfigDict, workdir: Path, progs: programs.Programs, tokenizer: Tokenizer,
           data: TaskData, stop_at: int | None) -> dict[str, float]:
  t, d = config.train, config.data
  task: Task = progs.task
  # Parameters the steps read but never train (a distillation teacher): loaded at every start or resume, never part
  # of the checkpoints; None for most tasks.
  frozen = task.load_frozen(progs.frozen_shardings)
  progs = progs.with_frozen(frozen)
  model, optimizer, mesh = progs.model, progs.optimizer, progs.mesh
  shardings = progs.state_shardings
  train_fn, eval_fn, predict_fn = progs.train_fn, progs.eval_fn, progs.predict_fn

  process = dict(process_index=jax.process_index(), process_count=jax.process_count())
  train_iter = iter(data.train_dataset(**process))
  eval_sets = {split: [sharding.global_batch(b, mesh, progs.eval_batch_spec) for b in local]
               for split, local in data.eval_sets(**process).items()}

  init_args = task.init_args()
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
    state = state.replace(params=task.initial_params(state.params, frozen))
  # restored or initialized: the run starts for real, so config.json records it
  record_config(config, workdir, mesh.devices.flat)
  step = int(state.step)
  logging.info("Mesh %s over %d devices (%d processes).", dict(mesh.shape), mesh.size, jax.process_count())
  logging.info("Model %s: %s parameters; vocab %d (%s tokenizer); %s.", config.model.name,
               f"{count_params(state.params):,}", tokenizer.vocab_size, tokenizer.kind, data.summary)

  sampler = (make_sampler(config, model, tokenizer, workdir, mesh, progs.rules, data.sample_prompts())
             if task.generates_text else None)
  harness_tasks = None
  if t.eval_tasks:  # lm-evaluation-harness tasks (lmjax[eval]); names and data are checked before the first step
    from lmjax.harness import TrainingTasks  # pylint: disable=import-outside-toplevel
    harness_tasks = TrainingTasks(config, model, tokenizer, mesh, progs.rules)
  writer = writers.MetricWriter(workdir, trackers=writers.trackers_of(t),
                                run_config=provenance.with_record(config.to_dict(), mesh.devices.flat),
                                wandb_project=t.wandb_project)

  def run_eval(step: int, write: bool = True) -> dict[str, float]:
    for split, batches in eval_sets.items():
      split_metrics = evaluate(eval_fn, state.params, batches, task)
      if predict_fn is not None:
        out_dir = workdir / "predictions" if write and jax.process_index() == 0 else None
        split_metrics |= score_predictions(predict_fn, state.params, batches, data, split, step, out_dir)
      logging.info("%s", writers.eval_line(split, step, split_metrics))
      if write:
        writer.write(step, split, split_metrics)
      if split == "eval":
        metrics = split_metrics
    if write and harness_tasks is not None and harness_tasks.due(step):
      for split, split_metrics in harness_tasks(state.params, step).items():
        logging.info("%s", writers.eval_line(split, step, split_metrics))
        writer.write(step, split, split_metrics)
    if write and sampler is not None:
      samples = sampler(state.params, step)
      if samples:
        logging.info("sample at step %d:\n%s", step, samples[0])
    return metrics

  end = t.num_steps if stop_at is None else min(stop_at, t.num_steps)
  log = writers.TrainLog(tokens_per_step=t.batch_size * d.seq_len,
                         learning_rate=learning_rate_schedule(config.optim, t.num_steps),
                         num_params=count_params(state.params),
                         flops_per_step=task.train_flops(state.params, t.batch_size))
  eval_metrics: dict[str, float] = {}
  first_call = True
  profiler = StepProfiler(t.profile_steps, workdir)
  try:
    with StopSignals() as stop:
      while step < end:
        k = min(t.steps_per_call, end - step)
        call_start = time.perf_counter()
        batches = sharding.global_batch(_stack([next(train_iter) for _ in range(k)]), mesh, progs.train_batch_spec)
        profiler.before(step)
        state, step_metrics = train_fn(state, batches)
        step += k
        profiler.after(step, step_metrics)
        compiled_in = None
        if first_call:
          jax.block_until_ready(step_metrics)
          compiled_in, first_call = time.perf_counter() - call_start, False
          logging.info("Compiled and ran the first train call in %.1f s.", compiled_in)
        log.add(step_metrics, k, compiled_in=compiled_in)

        if step % t.log_every == 0 or step == end:
          row = log.row(step)
          writer.write(step, "train", row)
          logging.info("%s", writers.progress_line(step, t.num_steps, row, (t.num_steps - step) / row["steps_per_s"]))

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
        log.exclude(time.perf_counter() - pause_start)
  finally:
    profiler.stop(step)
    checkpointer.close()
    writer.close()

  if not eval_metrics and step >= t.num_steps:  # a finished run started again: report its final metrics
    eval_metrics = run_eval(step, write=False)
  if step >= t.num_steps and t.plot:
    path = writers.plot_loss_curves(workdir, loss_unit=task.loss_unit)
    if path:
      logging.info("Loss curve: %s", path)
  return eval_metrics
