"""The distillation loss terms, pure functions of arrays (no models): each returns a value per position, which
the task averages over the positions that count (its weights), the same positions the base loss averages over.

  soft_kl      KL(softmax(t / T) || softmax(s / T)) over the whole vocabulary (Hinton et al., 2015). The task
               multiplies it by T^2 so its gradients keep their scale as T changes.
  top_k_kl     the same from precomputed teacher top-k logits: the teacher's distribution is softmax over its k
               largest logits only (renormalized, mass outside the top k taken as zero), the student's is its full
               softmax at those k tokens; sum_i p~_i (log p~_i - log q_i). It equals soft_kl when the teacher puts
               no mass outside its top k, and is never negative (the student's k probabilities sum to <= 1).
  hidden_mse   mean squared difference of hidden vectors (TinyBERT), the student's projected to the teacher's width.
  attention_kl KL between attention distributions of each query, averaged over heads (TinyBERT); when head counts
               differ, the head-averaged maps are compared.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_TINY = 1e-30  # floor for probabilities inside a log: masked keys have probability exactly 0


def soft_kl(student_logits_XV: jax.Array, teacher_logits_XV: jax.Array, temperature: float) -> jax.Array:
  """[...] KL(p_teacher || p_student) at temperature T, in nats, for logits [..., V]."""
  log_p_XV = jax.nn.log_softmax(teacher_logits_XV.astype(jnp.float32) / temperature, axis=-1)
  log_q_XV = jax.nn.log_softmax(student_logits_XV.astype(jnp.float32) / temperature, axis=-1)
  return (jnp.exp(log_p_XV) * (log_p_XV - log_q_XV)).sum(-1)


def top_k_kl(student_logits_XV: jax.Array, values_XK: jax.Array, indices_XK: jax.Array,
             temperature: float) -> jax.Array:
  """[...] KL from the teacher's renormalized top-k distribution (values_XK: its k largest logits, indices_XK:
  their token ids) to the student's full softmax, at temperature T."""
  log_p_XK = jax.nn.log_softmax(values_XK.astype(jnp.float32) / temperature, axis=-1)
  log_q_XV = jax.nn.log_softmax(student_logits_XV.astype(jnp.float32) / temperature, axis=-1)
  log_q_XK = jnp.take_along_axis(log_q_XV, indices_XK.astype(jnp.int32), axis=-1)
  return (jnp.exp(log_p_XK) * (log_p_XK - log_q_XK)).sum(-1)


def hidden_mse(student_BLD: jax.Array, teacher_BLD: jax.Array) -> jax.Array:
  """[B, L] mean over features of the squared difference (both of the teacher's width)."""
  diff = student_BLD.astype(jnp.float32) - teacher_BLD.astype(jnp.float32)
  return jnp.mean(diff * diff, axis=-1)


def attention_kl(student_BHLM: jax.Array, teacher_BHLM: jax.Array) -> jax.Array:
  """[B, L] KL(teacher row || student row) of each query's attention distribution, averaged over heads."""
  p, q = teacher_BHLM.astype(jnp.float32), student_BHLM.astype(jnp.float32)
  if p.shape[1] != q.shape[1]:
    p, q = p.mean(1, keepdims=True), q.mean(1, keepdims=True)
  kl_BHLM = jnp.where(p > 0, p * (jnp.log(jnp.maximum(p, _TINY)) - jnp.log(jnp.maximum(q, _TINY))), 0.0)
  return kl_BHLM.sum(-1).mean(1)


def weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  weights = weights.astype(jnp.float32)
  return (values * weights).sum() / jnp.maximum(weights.sum(), 1.0)
