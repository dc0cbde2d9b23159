"""Causal language modelling: predict token t+1 from tokens <= t, within each packed document."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from lmjax.metrics import language_model_summary


@dataclasses.dataclass(frozen=True)
class CausalLmTask:
  """Batches are dicts of [B, L] arrays: inputs, targets, segment_ids, positions, loss_mask."""
  model: nn.Module
  token_bytes_V: jax.Array | None = None  # UTF-8 bytes per token id, for bits per byte
  token_chars_V: jax.Array | None = None  # characters per token id, for bits per character

  def logits(self, params, batch, *, deterministic: bool, rng: jax.Array | None = None) -> jax.Array:
    rngs = {"dropout": rng} if rng is not None else None
    return self.model.apply({"params": params}, batch["inputs"], positions_BL=batch["positions"],
                            segment_ids_BL=batch["segment_ids"], deterministic=deterministic, rngs=rngs)

  def loss(self, params, batch, rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    logits_BLV = self.logits(params, batch, deterministic=False, rng=rng)
    nll_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, batch["targets"])
    mask_BL = batch["loss_mask"]
    tokens = jnp.maximum(mask_BL.sum(), 1.0)
    loss = (nll_BL * mask_BL).sum() / tokens
    return loss, {"loss": loss, "tokens": mask_BL.sum()}

  def eval_sums(self, params, batch) -> dict[str, jax.Array]:
    logits_BLV = self.logits(params, batch, deterministic=True)
    targets_BL, mask_BL = batch["targets"], batch["loss_mask"]
    nll_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, targets_BL)
    sums = {"nll": (nll_BL * mask_BL).sum(), "tokens": mask_BL.sum(),
            "correct": ((logits_BLV.argmax(-1) == targets_BL) * mask_BL).sum()}
    if self.token_bytes_V is not None:
      sums["bytes"] = (self.token_bytes_V[targets_BL] * mask_BL).sum()
    if self.token_chars_V is not None:
      sums["chars"] = (self.token_chars_V[targets_BL] * mask_BL).sum()
    return sums

  summarize = staticmethod(language_model_summary)
