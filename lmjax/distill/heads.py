"""What is distilled for each base objective: how a model (student or teacher) runs on a batch, which of its
logits are matched and at which positions, and the base task's own loss on the labels, from the same outputs.

A new objective becomes distillable by adding one class here: `run` its model, name its logits `heads` with their
weights, and compute its `hard_loss`. Settings that shape the heads (mlm.nsp) are read once, by `from_config`, when
the task is created.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from lmjax.models.vocab_head import token_stats

Heads = dict[str, tuple[jax.Array, jax.Array]]  # name -> (logits [..., V], weights [...])


def _apply(model: Any, params: Any, args: tuple, kwargs: dict, *, deterministic: bool, rng: jax.Array | None,
           record: bool, chunk: int = 0) -> tuple[Any, Any]:
  """(outputs, intermediates or None). With `record`, the hidden states and attention maps the blocks sow. With
  `chunk` (train.loss_chunk_tokens), vocabulary logits come as a `Hidden` (lmjax/models/vocab_head.py)."""
  rngs = {"dropout": rng} if rng is not None else None
  if chunk:
    kwargs = {**kwargs, "return_hidden": True}
  if not record:
    return model.apply({"params": params}, *args, deterministic=deterministic, rngs=rngs, **kwargs), None
  out, state = model.apply({"params": params}, *args, deterministic=deterministic, rngs=rngs,
                           mutable=["intermediates"], **kwargs)
  return out, state["intermediates"]


@dataclasses.dataclass(frozen=True)
class CausalLmHeads:
  """Next-token logits [B, L, V] at every position the loss counts (a Hidden with train.loss_chunk_tokens)."""
  chunk: int = 0

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, chunk: int = 0) -> "CausalLmHeads":
    del config
    return cls(chunk)

  def run(self, model, params, batch, *, deterministic: bool, rng: jax.Array | None = None, record: bool = False):
    return _apply(model, params, (batch["inputs"],),
                  {"positions_BL": batch["positions"], "segment_ids_BL": batch["segment_ids"]},
                  deterministic=deterministic, rng=rng, record=record, chunk=self.chunk)

  def heads(self, outputs, batch) -> Heads:
    return {"lm": (outputs, batch["loss_mask"])}

  def hard_loss(self, outputs, batch) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
    """(loss, the base task's own metrics, its weight for gradient accumulation) as in tasks/causal_lm.py."""
    nll_BL = token_stats(optax.softmax_cross_entropy_with_integer_labels, [outputs], [batch["targets"]],
                         chunk=self.chunk)
    mask_BL = batch["loss_mask"]
    return (nll_BL * mask_BL).sum() / jnp.maximum(mask_BL.sum(), 1.0), {}, mask_BL.sum()


@dataclasses.dataclass(frozen=True)
class MlmHeads:
  """Masked-LM logits [B, P, V] at the predicted positions, and next-sentence logits [B, 2] when mlm.nsp."""
  nsp: bool = True
  chunk: int = 0

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, chunk: int = 0) -> "MlmHeads":
    return cls(config.mlm.nsp, chunk)

  def run(self, model, params, batch, *, deterministic: bool, rng: jax.Array | None = None, record: bool = False):
    return _apply(model, params, (batch["inputs"], batch["token_types"], batch["segment_ids"],
                                  batch["mlm_positions"]), {}, deterministic=deterministic, rng=rng, record=record,
                  chunk=self.chunk)

  def heads(self, outputs, batch) -> Heads:
    heads = {"mlm": (outputs["mlm_logits"], batch["mlm_weights"])}
    if self.nsp:
      heads["nsp"] = (outputs["nsp_logits"], jnp.ones(batch["nsp_labels"].shape, jnp.float32))
    return heads

  def hard_loss(self, outputs, batch) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
    """As in tasks/mlm.py: the MLM mean over masked positions, plus the NSP mean over examples with mlm.nsp."""
    mlm_BP = token_stats(optax.softmax_cross_entropy_with_integer_labels, [outputs["mlm_logits"]],
                         [batch["mlm_targets"]], chunk=self.chunk)
    weights_BP = batch["mlm_weights"]
    masked = weights_BP.sum()
    aux = {"mlm_loss": (mlm_BP * weights_BP).sum() / jnp.maximum(masked, 1.0)}
    if self.nsp:
      aux["nsp_loss"] = optax.softmax_cross_entropy_with_integer_labels(outputs["nsp_logits"],
                                                                        batch["nsp_labels"]).mean()
    return sum(aux.values()), aux, masked


class ClassificationHeads:
  """Class logits [B, C] of the pooled [CLS] vector on the labelled rows: the teacher's decision per example is all
  a classifier has to pass on (regression students are refused in config validation: one output has no
  distribution to match)."""

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, chunk: int = 0) -> "ClassificationHeads":
    del config, chunk  # class logits are small: nothing to chunk
    return cls()

  @staticmethod
  def run(model, params, batch, *, deterministic: bool, rng: jax.Array | None = None, record: bool = False):
    return _apply(model, params, (batch["inputs"], batch["token_types"], batch["segment_ids"]), {},
                  deterministic=deterministic, rng=rng, record=record)

  def heads(self, outputs, batch) -> Heads:
    weights_B = (batch["labels"] >= 0).astype(jnp.float32)
    if "index" in batch:  # eval batches: rows that only pad the last batch (index -1) count for nothing
      weights_B = weights_B * (batch["index"] >= 0)
    return {"cls": (outputs, weights_B)}

  def hard_loss(self, outputs, batch) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
    """As in tasks/classification.py: the cross-entropy mean over labelled rows, with its accuracy."""
    known_B = batch["labels"] >= 0
    target_B = jnp.where(known_B, batch["labels"], 0)
    weight_B = known_B.astype(jnp.float32)
    n = jnp.maximum(weight_B.sum(), 1.0)
    nll_B = optax.softmax_cross_entropy_with_integer_labels(outputs, target_B)
    correct_B = (outputs.argmax(-1) == target_B).astype(jnp.float32)
    return (nll_B * weight_B).sum() / n, {"accuracy": (correct_B * weight_B).sum() / n}, weight_B.sum()


HEADS = {"causal_lm": CausalLmHeads, "mlm": MlmHeads, "classification": ClassificationHeads}
