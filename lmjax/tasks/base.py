"""What the generic trainer (lmjax.train) asks of an objective: the `Task` and `TaskData` protocols.

A task is a class in tasks/<name>.py, registered under `config.task` in tasks/registry.py. The trainer calls, in
this order:

  1. `Task.prepare_data(config, tokenizer, data_dir) -> TaskData` (classmethod), on process 0 first and then on
     the others, so caches written to a shared data_dir are built once and read by the rest.
  2. `Task.create(config, vocab_size, *, token_bytes_V, token_chars_V) -> Task` (classmethod, in
     lmjax.programs.build): builds the model from the frozen ModelConfig; the vocabulary statistics are for tasks
     that report bits per byte/character and may be ignored.
  3. `task.init_args(config)`: the example positional inputs of `task.model.init` (shapes only matter), and
     `task.abstract_batch(config, batch_size)`: {key: ShapeDtypeStruct [B, ...]} of one batch, so the train step
     compiles without data (lmjax.aot, benchmarks). The real batches must have exactly these keys, shapes, dtypes.
  4. Inside the jitted steps (pure, no I/O): `task.loss(params, batch, rng) -> (loss, aux)` where aux["loss"] is
     the loss and aux["tokens"] its weight: with microbatches each slice contributes loss * tokens and the sum is
     divided by the summed tokens, so a loss that is a mean over `tokens` items accumulates to the large batch's
     mean. Other scalar entries of aux are averaged with the same weights and logged with the train loss.
     `task.eval_sums(params, batch) -> {name: scalar}` sums statistics over a batch; the trainer adds them over
     the eval set on the host and `task.summarize(sums) -> {metric: float}` turns them into metrics ("loss" is
     the one plotted and compared across runs).

Metrics that are not sums over batches (F1, Matthews correlation, BLEU, SQuAD EM/F1) come from predictions, through
two optional methods. `task.predict(params, batch) -> {name: [B, ...]}` runs jitted on each eval batch (a classifier's
argmax, a translation model's beam search). Its eval batches then carry "index" [B] int32, the example each row
holds (-1 on padding rows, which eval_sums must also ignore); the trainer gathers predictions and indices over the
whole split, drops padding and calls `data.score(split, index_N, predictions, step=..., out_dir=...) ->
{metric: float}` once per split, whose metrics join the split's summarized ones. out_dir (None except on process 0)
is where a task writes what it predicted, e.g. decoded translations, for people to read.

Parameters a task reads but never trains (a distillation teacher) come through three optional methods.
`task.frozen_spec() -> (ShapeDtypeStructs, logical PartitionSpecs) | None` describes them; programs.build shards them
by the config's logical-axis rules and the jitted steps take them as a last argument, passed on to
`task.loss(params, batch, rng, frozen)`, `task.eval_sums(params, batch, frozen)` and `task.predict(params, batch,
frozen)` (never to the gradient or the optimizer). `task.load_frozen(shardings) -> pytree` loads them at every start
and resume, so they are not part of the run's checkpoints. `task.initial_params(params, frozen) -> params` adjusts a
fresh run's parameters once before the first step (a student's layers copied from its teacher).

Batches are dicts of numpy arrays with the batch as dim 0 (any rank: [B], [B, L], [B, P]); the trainer stacks
`steps_per_call` of them into [S, B, ...] and shards dim 0 (dim 1 when stacked) over the mesh's batch axes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import jax
import ml_collections
import numpy as np

if TYPE_CHECKING:
  import grain

Batch = dict[str, np.ndarray]


class TaskData(Protocol):
  """A run's prepared data: an endless train stream and named eval sets, each cut into this process's rows."""

  summary: str  # for the run's log line, e.g. "1,234 train tokens, 567 eval tokens"

  def train_dataset(self, process_index: int, process_count: int) -> grain.IterDataset:
    """Endless batches of train.batch_size / process_count rows; iter() of it is a checkpointable iterator whose
    state restores the exact position, so a resumed run sees the batches it would have seen."""

  def eval_sets(self, process_index: int, process_count: int) -> dict[str, list[Batch]]:
    """Fixed eval batches by split name; 'eval' is the main one. Every process gets the same number of batches."""

  # Optional, with Task.predict: metrics from the predictions of a whole eval split.
  # def score(self, split: str, index_N: np.ndarray, predictions: dict[str, np.ndarray], *, step: int,
  #           out_dir: Path | None) -> dict[str, float]: ...


class Task(Protocol):
  model: Any
  generates_text: ClassVar[bool]  # whether train.py writes generated samples (a causal language model)

  @classmethod
  def prepare_data(cls, config: ml_collections.ConfigDict, tokenizer: Any, data_dir: Any) -> TaskData: ...

  @classmethod
  def create(cls, config: ml_collections.ConfigDict, vocab_size: int, *, token_bytes_V: jax.Array | None = None,
             token_chars_V: jax.Array | None = None) -> "Task": ...

  def init_args(self, config: ml_collections.ConfigDict) -> tuple[jax.Array, ...]: ...

  def abstract_batch(self, config: ml_collections.ConfigDict, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]: ...

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]: ...

  def eval_sums(self, params: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]: ...

  def summarize(self, sums: dict[str, float]) -> dict[str, float]: ...

  # Optional, with TaskData.score: per-example outputs [B, ...] of an eval batch.
  # def predict(self, params: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]: ...
