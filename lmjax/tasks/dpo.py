"""Direct preference optimization (task='dpo'; Rafailov et al., 2023): learn from pairs of a preferred and a
dispreferred answer, against a frozen reference model.

For a prompt x with responses y_c (chosen) and y_r (rejected), the policy pi (this run's model) and the reference
pi_ref give sequence log-probabilities of the responses, and

    r_c = beta * (log pi(y_c | x) - log pi_ref(y_c | x)),   r_r = beta * (log pi(y_r | x) - log pi_ref(y_r | x))
    loss = -(1 - eps) * log sigmoid(r_c - r_r) - eps * log sigmoid(r_r - r_c)

with eps = dpo.label_smoothing (0: the standard sigmoid loss; > 0 treats each label as flipped with probability
eps). Logged with the loss: the mean rewards `chosen_reward`, `rejected_reward`, their `reward_margin` and
`reward_accuracy` (the share of pairs with r_c > r_r); eval adds `logp_accuracy` (log pi(y_c) > log pi(y_r)) and
the same for the reference, `reference_logp_accuracy`, which is where the policy started.

Examples: JSONL (finetune.train_file, eval_file) or TFDS records {"prompt", "chosen", "rejected"}: strings used as
written, or a conversation as the prompt (a list of messages, rendered with sft.chat_template) and each response a
string or a list holding one assistant message (lmjax/data/chat_examples.py). Only the response tokens (and the
<eos> after them) count. A pair longer than the context is refused in one line.

The reference runs inside the step, the way a distillation teacher does (lmjax/frozen_run.py): dpo.reference_workdir
(default: finetune.init_from, the run the policy starts from) is restored into the shardings its parameters' logical
axes give, as the steps' frozen argument, and never checkpointed. With LoRA (finetune.lora.rank > 0) and the
reference being the run the policy starts from, the policy's own frozen base weights are that reference: it is the
model without its adapters, and nothing is loaded twice.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from lmjax import config as config_lib
from lmjax import frozen_run
from lmjax.config import ConfigError
from lmjax.data import chat_examples, example_arrays, packing
from lmjax.data.example_arrays import Arrays
from lmjax.data.text_files import DataError
from lmjax.data.tokenizers import Tokenizer
from lmjax.frozen_run import FrozenRun
from lmjax.models import family, lora
from lmjax.registry import TASKS
from lmjax.tasks.base import Batch, SamplePrompt, TaskData, VocabInfo
from lmjax.tasks.causal_lm import BATCH_DTYPES, CausalLmTask
from lmjax.tasks.sft import ExampleRowsData, check_example_fields, split_records, template_of

_REFERENCE = "dpo.reference_workdir"


def _validate(cfg: ml_collections.ConfigDict) -> None:
  if not config_lib.reads(cfg, "dpo"):
    config_lib.unused_with(cfg, _REFERENCE, "", f"a reference model is for task='dpo', not {cfg.task!r}")
    return
  config_lib.at_least(cfg, "dpo.beta", 0.0, strict=True)
  if not 0.0 <= cfg.dpo.label_smoothing < 0.5:
    config_lib.fail("dpo.label_smoothing", cfg.dpo.label_smoothing, "must be in [0, 0.5): the probability that a "
                    "pair's preference is flipped (0: the standard loss)")
  config_lib.at_least(cfg, "dpo.reference_step", 0)
  if not (cfg.dpo.reference_workdir or cfg.finetune.init_from):
    config_lib.fail(_REFERENCE, cfg.dpo.reference_workdir, "task='dpo' compares the policy with a reference model: "
                    "set finetune.init_from (the run the policy starts from, by default also the reference) or "
                    "dpo.reference_workdir")


config_lib.register_section("dpo", {
    "beta": 0.1,  # how far the policy may move from the reference: rewards are beta * log-ratios
    "label_smoothing": 0.0,  # eps: the probability a preference label is wrong (conservative DPO); 0: standard
    "reference_workdir": "",  # the reference run; '': finetune.init_from
    "reference_step": 0,  # its checkpoint step; 0: its latest (with finetune.init_from: finetune.init_step)
}, _validate)


def preference_loss(policy_chosen: jax.Array, policy_rejected: jax.Array, reference_chosen: jax.Array,
                    reference_rejected: jax.Array, beta: float,
                    label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(loss, chosen reward, rejected reward) per pair, from the sequence log-probabilities of the responses."""
  chosen = beta * (policy_chosen - reference_chosen)
  rejected = beta * (policy_rejected - reference_rejected)
  margin = chosen - rejected
  loss = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(margin) - label_smoothing * jax.nn.log_sigmoid(-margin)
  return loss, chosen, rejected


def response_logps(model: Any, params: Any, batch: dict[str, jax.Array], *, deterministic: bool,
                   rng: jax.Array | None = None) -> jax.Array:
  """[B, 2] log-probabilities of the chosen (column 0) and rejected (1) responses: both rows of every pair run
  through the model in one call, and each sums its trained targets' token log-probabilities."""
  flat = {k: v.reshape(-1, v.shape[-1]) for k, v in batch.items() if k in BATCH_DTYPES}
  rngs = {"dropout": rng} if rng is not None else None
  logits_XLV = model.apply({"params": params}, flat["inputs"], positions_BL=flat["positions"],
                           segment_ids_BL=flat["segment_ids"], deterministic=deterministic, rngs=rngs)
  logp_XL = -optax.softmax_cross_entropy_with_integer_labels(logits_XLV, flat["targets"])
  return (logp_XL * flat["loss_mask"]).sum(-1).reshape(-1, 2)


@dataclasses.dataclass(frozen=True)
class PairData(ExampleRowsData):
  """Each pair as two rows [N, 2, L] (chosen, rejected), padded, one pair per example."""

  def eval_sets(self, process_index: int, process_count: int) -> dict[str, list[Batch]]:
    t = self.config.train
    return {"eval": example_arrays.eval_batches(self.eval, t.eval_batch_size or t.batch_size, 0, process_index,
                                                process_count)}


def encode_pairs(config: ml_collections.ConfigDict, found: list, tokenizer: Tokenizer,
                 template: Any) -> tuple[Arrays, list[SamplePrompt]]:
  """Arrays [N, 2, L] of the pairs, and the prompts with their chosen answers; a pair longer than a row is a
  one-line DataError."""
  width = config.data.seq_len + 1
  rows, prompts = [], []
  for record in found:
    chosen, rejected = (chat_examples.encode(p, tokenizer) for p in chat_examples.pair_pieces(record, template))
    longest = max(len(chosen.ids), len(rejected.ids))
    if longest > width:
      response = lambda e: len(e.ids) - e.prompt_len - 1
      raise DataError(f"{record.where}: the pair is {longest} tokens long (prompt {chosen.prompt_len - 1}, chosen "
                      f"{response(chosen)}, rejected {response(rejected)}, with <bos> and <eos>), more than "
                      f"data.seq_len + 1 = {width}; raise data.seq_len or drop the pair")
    rows += [chosen, rejected]
    prompts.append(SamplePrompt(chosen.prompt_text, tuple(int(i) for i in chosen.prompt_ids), chosen.reference))
  flat = packing.pack(rows, config.data.seq_len, pack_rows=False)
  return {k: v.reshape(-1, 2, v.shape[-1]) for k, v in flat.items()}, prompts


def _reference_dir(config: ml_collections.ConfigDict) -> tuple[str, int]:
  d, f = config.dpo, config.finetune
  return (d.reference_workdir, d.reference_step) if d.reference_workdir else (f.init_from, f.init_step)


def shares_base(config: ml_collections.ConfigDict) -> bool:
  """Whether the reference is the policy's own frozen base: LoRA on top of the very run the reference is."""
  workdir, step = _reference_dir(config)
  f = config.finetune
  return (f.lora.rank > 0 and bool(f.init_from) and Path(workdir).resolve() == Path(f.init_from).resolve()
          and step == f.init_step)


def open_reference(config: ml_collections.ConfigDict) -> FrozenRun:
  """The reference run, checked against this run's context, opened as a frozen model."""
  workdir, step = _reference_dir(config)
  run = frozen_run.open_saved(_REFERENCE, workdir)
  step = frozen_run.pick_step(run, _REFERENCE, "dpo.reference_step" if config.dpo.reference_workdir else
                              "finetune.init_step", step)
  r = run.config
  if family(r.model.name).interface != "next_token" or family(r.model.name).fit_only:
    raise ConfigError(f"config.{_REFERENCE}={workdir!r} is a model.name={r.model.name!r} run; the reference must "
                      f"be a trained decoder (a causal_lm, sft or dpo run)")
  context = family(r.model.name).max_context(r.model)
  if context is not None and config.data.seq_len > context:
    raise ConfigError(f"config.{_REFERENCE}={workdir!r}: the reference's positions stop at model.max_len={context} "
                      f"but this run reads data.seq_len={config.data.seq_len}; lower data.seq_len")
  return frozen_run.open_frozen(run, step, run.model(), (jnp.zeros((1, config.data.seq_len), jnp.int32),))


@TASKS.register("dpo")
@dataclasses.dataclass(frozen=True)
class DpoTask(CausalLmTask):
  """causal_lm's model (and LoRA) trained on preference pairs; batches are [B, 2, L] (chosen, rejected)."""
  beta: float = 0.1
  label_smoothing: float = 0.0
  reference: FrozenRun | None = None  # None: the reference is the policy without its LoRA adapters

  evaluates_other_lengths: ClassVar[bool] = False
  sections: ClassVar[tuple[str, ...]] = ("finetune", "sft", "dpo")

  @classmethod
  def validate(cls, config: ml_collections.ConfigDict) -> None:
    check_example_fields(config)

  @classmethod
  def tokenizer_texts(cls, config: ml_collections.ConfigDict, data_dir: Path) -> Iterable[str]:
    template = template_of(config)
    for record in split_records(config, "train", data_dir):
      for pieces in chat_examples.pair_pieces(record, template):
        yield "".join(p.text for p in pieces)

  @classmethod
  def prepare_data(cls, config: ml_collections.ConfigDict, tokenizer: Tokenizer, data_dir: Path) -> PairData:
    if not shares_base(config):
      workdir, _ = _reference_dir(config)
      frozen_run.check_tokenizer(_REFERENCE, frozen_run.open_saved(_REFERENCE, workdir), tokenizer, "the reference")
    template = template_of(config)
    train, _ = encode_pairs(config, split_records(config, "train", data_dir), tokenizer, template)
    eval_, prompts = encode_pairs(config, split_records(config, "eval", data_dir), tokenizer, template)
    summary = f"{len(train['inputs'])} train and {len(eval_['inputs'])} eval preference pairs"
    return PairData(config, train, eval_, summary, tuple(prompts[:config.train.num_samples]))

  @classmethod
  def create(cls, config: ml_collections.ConfigDict, vocab: VocabInfo, data: TaskData | None = None) -> "DpoTask":
    base = CausalLmTask.create(config, vocab, data)
    reference = None if shares_base(config) else open_reference(config)
    if reference is not None and reference.run.tokenizer.vocab_size != vocab.size:
      raise ConfigError(f"config.{_REFERENCE}: the reference has {reference.run.tokenizer.vocab_size} tokens, the "
                        f"policy {vocab.size}; they must share one tokenizer")
    d = config.dpo
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(CausalLmTask)}
    return cls(**fields, beta=d.beta, label_smoothing=d.label_smoothing, reference=reference)

  def abstract_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: jax.ShapeDtypeStruct((batch_size, 2, self.seq_len), dt) for k, dt in BATCH_DTYPES.items()}

  # --- the reference (tasks/base.py's frozen-parameter hooks) ------------------------------------------------------

  def frozen_spec(self) -> tuple[Any, Any] | None:
    return None if self.reference is None else (self.reference.abstract, self.reference.axes)

  def load_frozen(self, shardings: Any) -> Any:
    if shardings is None:
      return None
    logging.info("Reference: %s at step %d (%s, %d layers, width %d).", self.reference.run.workdir,
                 self.reference.step, self.reference.config.model.name, self.reference.config.model.num_layers,
                 self.reference.config.model.d_model)
    return frozen_run.restore(self.reference, shardings, _REFERENCE)

  def _reference_logps(self, params: Any, batch: dict[str, jax.Array], frozen: Any) -> jax.Array:
    if frozen is None:  # the policy's frozen base: the model without its adapters
      logps = response_logps(lora.without_adapters(self.model), params, batch, deterministic=True)
    else:
      logps = response_logps(self.reference.model, frozen, batch, deterministic=True)
    return jax.lax.stop_gradient(logps)

  # --- the steps ----------------------------------------------------------------------------------------------------

  def _pairs(self, params, batch, rng, frozen, *, deterministic: bool):
    policy_B2 = response_logps(self.model, params, batch, deterministic=deterministic, rng=rng)
    reference_B2 = self._reference_logps(params, batch, frozen)
    loss_B, chosen_B, rejected_B = preference_loss(policy_B2[:, 0], policy_B2[:, 1], reference_B2[:, 0],
                                                   reference_B2[:, 1], self.beta, self.label_smoothing)
    return loss_B, chosen_B, rejected_B, policy_B2, reference_B2

  def loss(self, params, batch, rng: jax.Array, frozen: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    loss_B, chosen_B, rejected_B, _, _ = self._pairs(params, batch, rng, frozen, deterministic=False)
    loss = loss_B.mean()
    margin_B = chosen_B - rejected_B
    return loss, {"loss": loss, "tokens": jnp.asarray(loss_B.shape[0], jnp.float32),
                  "chosen_reward": chosen_B.mean(), "rejected_reward": rejected_B.mean(),
                  "reward_margin": margin_B.mean(), "reward_accuracy": (margin_B > 0).mean()}

  def eval_sums(self, params, batch, frozen: Any = None) -> dict[str, jax.Array]:
    loss_B, chosen_B, rejected_B, policy_B2, reference_B2 = self._pairs(params, batch, None, frozen,
                                                                        deterministic=True)
    w_B = (batch["index"] >= 0).astype(jnp.float32)
    total = lambda x_B: (x_B.astype(jnp.float32) * w_B).sum()
    return {"pairs": w_B.sum(), "loss_sum": total(loss_B), "chosen_sum": total(chosen_B),
            "rejected_sum": total(rejected_B), "correct": total(chosen_B > rejected_B),
            "logp_correct": total(policy_B2[:, 0] > policy_B2[:, 1]),
            "reference_logp_correct": total(reference_B2[:, 0] > reference_B2[:, 1])}

  def summarize(self, sums: dict[str, float]) -> dict[str, float]:
    n = max(sums["pairs"], 1.0)
    return {"loss": sums["loss_sum"] / n, "chosen_reward": sums["chosen_sum"] / n,
            "rejected_reward": sums["rejected_sum"] / n,
            "reward_margin": (sums["chosen_sum"] - sums["rejected_sum"]) / n, "reward_accuracy": sums["correct"] / n,
            "logp_accuracy": sums["logp_correct"] / n, "reference_logp_accuracy": sums["reference_logp_correct"] / n,
            "pairs": sums["pairs"]}
