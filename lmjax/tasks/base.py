"""What the generic trainer (lmjax.train) asks of an objective: the `Task` and `TaskData` base classes.

A task is a class in tasks/<name>.py registered with `@TASKS.register("name")`; the config section it reads (if
any) is registered beside it with `lmjax.config.register_section`. Every hook is declared here, the optional ones
with a default that does nothing, so the trainer calls each one unconditionally. In the order the trainer calls
them:

  1. `Task.tokenizer_texts(config, data_dir)` (classmethod): the texts a new tokenizer is trained on; by default
     the documents of the training split.
  2. `Task.prepare_data(config, tokenizer, data_dir) -> TaskData` (classmethod), on process 0 first and then on
     the others, so caches written to a shared data_dir are built once and read by the rest.
  3. `Task.create(config, vocab, data=None) -> Task` (classmethod): builds the model and fixes every static shape
     and setting the steps need (sequence lengths, loss settings), so nothing re-reads the config inside jitted
     code. `vocab` is the tokenizer's `VocabInfo` (size, bytes and characters per token); `data` is the run's
     TaskData, or None when compiling without data (lmjax.aot, benchmarks), where the config must say what the
     data would have (e.g. finetune.labels).
  4. `task.fit(config, tokenizer, data) -> FitResult | None`: a model fitted in one pass instead of trained (the
     n-gram model) returns its metrics and samples here; None (the default) means training by gradient steps.
  5. `task.init_args()`: example positional inputs of `task.model.init` (shapes only matter);
     `task.abstract_batch(batch_size)`: {key: ShapeDtypeStruct [B, ...]} of one batch, so the train step compiles
     without data. Real batches must have exactly these keys, shapes and dtypes.
  6. `task.param_groups(params)`: a pytree of optimizer group names ('frozen', 'body', 'head'), or None for one
     group; `task.frozen_spec()`: (ShapeDtypeStructs, logical PartitionSpecs) of parameters the steps read but
     never train (a distillation teacher), or None; `task.load_frozen(shardings)` loads them at every start and
     resume (they are not part of the checkpoints); `task.initial_params(params, frozen)` adjusts a fresh run's
     parameters once before the first step (a student's layers copied from its teacher).
  7. Inside the jitted steps (pure, no I/O): `task.loss(params, batch, rng, frozen) -> (loss, aux)` where
     aux["loss"] is the loss and aux["tokens"] its weight: with microbatches each slice contributes loss * tokens
     and the sum is divided by the summed tokens, so a loss that is a mean over `tokens` items accumulates to the
     large batch's mean. Other scalar entries of aux are averaged with the same weights and logged with the train
     loss. `task.eval_sums(params, batch, frozen) -> {name: scalar}` sums statistics over a batch; the trainer adds
     them over the eval set on the host and `task.summarize(sums) -> {metric: float}` turns them into metrics
     ("loss" is the one plotted and compared across runs).
  8. Tasks with `predicts = True`: `task.predict(params, batch, frozen) -> {name: [B, ...]}` runs jitted on each
     eval batch (a classifier's argmax, a translation model's beam search). Its eval batches carry "index" [B]
     int32, the example each row holds (-1 on padding rows, which eval_sums must also ignore); the trainer
     gathers predictions and indices over the whole split, drops padding and calls `data.score(split, index_N,
     predictions, step=..., out_dir=...) -> {metric: float}` once per split, whose metrics join the split's
     summarized ones (F1, Matthews correlation, BLEU, SQuAD EM/F1). out_dir (None except on process 0) is where a
     task writes what it predicted, for people to read.
  9. Tasks with `generates_text = True`: at each eval the trainer writes samples to workdir/samples/. They continue
     `data.sample_prompts()` (held-out prompts with the data's own answers, e.g. SFT's), or when that is empty
     train.sample_prompt.

`frozen` is None for tasks without frozen parameters. Batches are dicts of numpy arrays with the batch as dim 0
(any rank: [B], [B, L], [B, P]); the trainer stacks `steps_per_call` of them into [S, B, ...] and shards dim 0
(dim 1 when stacked) over the mesh's batch axes.
"""

from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable

import jax
import ml_collections
import numpy as np

from lmjax.data import sources
from lmjax.models.base import FitResult, ModelConfig

if TYPE_CHECKING:
  import grain

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class VocabInfo:
  """What a task may need to know of the tokenizer: its size, and the UTF-8 bytes and characters of each token
  (for bits per byte / per character)."""
  size: int
  token_bytes_V: Any = None
  token_chars_V: Any = None


@dataclasses.dataclass(frozen=True)
class SamplePrompt:
  """A prompt the trainer's samples continue at each eval, from the task's data."""
  text: str  # the prompt as text, shown before the model's answer
  ids: tuple[int, ...]  # its token ids, <bos> first
  reference: str = ""  # the answer the data gives, shown beside the model's


class TaskData(abc.ABC):
  """A run's prepared data: an endless train stream and named eval sets, each cut into this process's rows."""

  summary: str  # for the run's log line, e.g. "1,234 train tokens, 567 eval tokens"

  @abc.abstractmethod
  def train_dataset(self, process_index: int, process_count: int) -> grain.IterDataset:
    """Endless batches of train.batch_size / process_count rows; iter() of it is a checkpointable iterator whose
    state restores the exact position, so a resumed run sees the batches it would have seen."""

  @abc.abstractmethod
  def eval_sets(self, process_index: int, process_count: int) -> dict[str, list[Batch]]:
    """Fixed eval batches by split name; 'eval' is the main one. Every process gets the same number of batches."""

  def score(self, split: str, index_N: np.ndarray, predictions: dict[str, np.ndarray], *, step: int,
            out_dir: Path | None) -> dict[str, float]:
    """Metrics from the predictions of a whole eval split (tasks with `predicts`); none by default."""
    del split, index_N, predictions, step, out_dir
    return {}

  def sample_prompts(self) -> list[SamplePrompt]:
    """Prompts for the samples of tasks with `generates_text`; none by default (train.sample_prompt is used)."""
    return []


class Task(abc.ABC):
  """An objective: its model, its data, and what a train or eval step computes on a batch."""
  model: Any
  registered_name: ClassVar[str] = ""
  # The model interface this task trains (lmjax/models/base.py): 'next_token', 'encoder' or 'seq2seq'.
  model_interface: ClassVar[str] = "next_token"
  accepts_fit_only: ClassVar[bool] = False  # whether a fit-only model (the n-gram) can stand in for training
  generates_text: ClassVar[bool] = False  # whether the trainer writes generated samples (a causal language model)
  predicts: ClassVar[bool] = False  # whether eval runs `predict` and scores the split with `data.score`
  evaluates_other_lengths: ClassVar[bool] = False  # whether train.extra_eval_seq_lens applies
  chunked_loss: ClassVar[bool] = False  # whether train.loss_chunk_tokens applies (its loss reads a vocabulary head)
  mixes_sources: ClassVar[bool] = False  # whether it trains on a weighted data.mixture (eval/<source> per source)
  supports_lora: ClassVar[bool] = False  # whether finetune.lora trains low-rank adapters on its model instead
  scores_test_split: ClassVar[bool] = False  # whether data.test_split applies (scored as split 'test')
  sections: ClassVar[tuple[str, ...]] = ()  # the registered config sections it reads (lmjax.config.reads)
  # What the "loss" metric is a mean of, as loss plots and reports label it; each task states its own.
  loss_unit: ClassVar[str] = "nats per token"

  # --- the config -------------------------------------------------------------------------------------------------

  @classmethod
  def objective(cls) -> str:
    """The objective whose model, data and metrics this task uses: its own name (a distillation task wraps
    another objective and names that one)."""
    return cls.registered_name

  @classmethod
  def trains(cls, family: type[ModelConfig]) -> bool:
    """Whether this task can train an architecture (asked with the family's config class)."""
    return family.interface == cls.model_interface and (cls.accepts_fit_only or not family.fit_only)

  @classmethod
  def validate(cls, config: ml_collections.ConfigDict) -> None:
    """Checks that need this task (its own section validates itself); nothing by default."""
    del config

  # --- data ---------------------------------------------------------------------------------------------------------

  @classmethod
  def tokenizer_texts(cls, config: ml_collections.ConfigDict, data_dir: Path) -> Iterable[str]:
    """The texts a new tokenizer is trained on: the documents of the training split."""
    return sources.iter_texts(config.data, config.data.train_split, data_dir)

  @classmethod
  def shared_tokenizer(cls, config: ml_collections.ConfigDict) -> Path | None:
    """A saved tokenizer directory this run must adopt (copied into its workdir before its tokenizer is built), or
    None (the default): the run trains or loads its own."""
    del config
    return None

  @classmethod
  @abc.abstractmethod
  def prepare_data(cls, config: ml_collections.ConfigDict, tokenizer: Any, data_dir: Path) -> TaskData:
    """Reads and encodes the run's data (caches go under data_dir)."""

  @classmethod
  @abc.abstractmethod
  def create(cls, config: ml_collections.ConfigDict, vocab: VocabInfo, data: TaskData | None = None) -> "Task":
    """The task with its model and static settings."""

  def fit(self, config: ml_collections.ConfigDict, tokenizer: Any, data: TaskData) -> FitResult | None:
    """A fit-only model's metrics and samples; None: the model trains by gradient steps."""
    del config, tokenizer, data
    return None

  # --- shapes -------------------------------------------------------------------------------------------------------

  @abc.abstractmethod
  def init_args(self) -> tuple[jax.Array, ...]:
    """Example positional inputs of model.init."""

  @abc.abstractmethod
  def abstract_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Keys, shapes and dtypes of one batch of `batch_size` rows."""

  # --- parameters ---------------------------------------------------------------------------------------------------

  def param_groups(self, params: Any) -> Any:
    """Optimizer group of every parameter ('frozen', 'body', 'head'), or None: one group, the optimizer's own."""
    del params
    return None

  def frozen_spec(self) -> tuple[Any, Any] | None:
    """(ShapeDtypeStructs, logical PartitionSpecs) of parameters read but never trained, or None."""
    return None

  def load_frozen(self, shardings: Any) -> Any:
    """The frozen parameters, placed with `shardings` (None when frozen_spec is None)."""
    del shardings
    return None

  def initial_params(self, params: Any, frozen: Any) -> Any:
    """A fresh run's parameters before the first step; unchanged by default."""
    del frozen
    return params

  def train_flops(self, params: Any, batch_size: int) -> float | None:
    """Training FLOPs of one step of `batch_size` rows, from the model family's count for this task's shapes
    (ModelConfig.flops_per_token / flops_per_pair); None (the default): not counted, and reports leave the run's
    compute columns empty."""
    del params, batch_size
    return None

  # --- the steps ----------------------------------------------------------------------------------------------------

  @abc.abstractmethod
  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array,
           frozen: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, aux) on a train batch; aux has "loss" and its weight "tokens"."""

  @abc.abstractmethod
  def eval_sums(self, params: Any, batch: dict[str, jax.Array], frozen: Any = None) -> dict[str, jax.Array]:
    """Statistics of an eval batch that add up over batches."""

  @abc.abstractmethod
  def summarize(self, sums: dict[str, float]) -> dict[str, float]:
    """Metrics of a whole eval split from its summed statistics."""

  def predict(self, params: Any, batch: dict[str, jax.Array], frozen: Any = None) -> dict[str, jax.Array]:
    """Per-example outputs [B, ...] of an eval batch, for tasks with `predicts`."""
    raise NotImplementedError(f"task {self.registered_name!r} makes no predictions (predicts=False)")
