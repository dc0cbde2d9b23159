"""Small building blocks shared by every architecture: dense layers, norms, the MLP."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn


NORMS = ("layernorm", "rmsnorm")


def dtype_of(name: str) -> jnp.dtype:
  return jnp.dtype(name)


def normal_init(std: float, *axes: str) -> Callable:
  """A normal initializer that also records the logical axis of each parameter dimension."""
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), axes)


def zeros_init(*axes: str) -> Callable:
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def ones_init(*axes: str) -> Callable:
  return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


def constant_init(value: float, *axes: str) -> Callable:
  return nn.with_logical_partitioning(nn.initializers.constant(value), axes)


class Projection(nn.Module):
  """x [..., *in] . kernel [*in, *out] (+ bias [*out]): a dense layer whose weight keeps its named dimensions.

  Flax's DenseGeneral initializes a flattened 2-D kernel and reshapes it, which clashes with per-dimension
  logical axis names once a mesh is active; here every parameter is created in its final shape.
  """
  features: tuple[int, ...]
  in_axes: tuple[str | None, ...]  # logical names of the contracted input dimensions
  out_axes: tuple[str | None, ...]  # logical names of the output dimensions
  std: float
  use_bias: bool
  dtype: str
  param_dtype: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n_in = len(self.in_axes)
    kernel = self.param("kernel", normal_init(self.std, *self.in_axes, *self.out_axes),
                        (*x.shape[-n_in:], *self.features), dtype_of(self.param_dtype))
    dtype = dtype_of(self.dtype)
    y = jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype),
                            ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())))
    if self.use_bias:
      y = y + self.param("bias", zeros_init(*self.out_axes), self.features, dtype_of(self.param_dtype)).astype(dtype)
    return y


def classifier_head(cfg: Any, num_outputs: int, name: str) -> Projection:
  return Projection((num_outputs,), ("embed",), (None,), cfg.init_std, True, cfg.dtype, cfg.param_dtype, name=name)


class Norm(nn.Module):
  """LayerNorm or RMSNorm over the last axis, computed in float32 for stability."""
  cfg: Any  # a TransformerConfig (lmjax/models/stack.py), which imports this module

  @nn.compact
  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    dtype = x_BLD.dtype
    x = x_BLD.astype(jnp.float32)
    offset = self.cfg.norm_offset
    init = ones_init("embed") if not offset else constant_init(1.0 - offset, "embed")  # a multiplier of 1 at init
    scale_D = self.param("scale", init, (x.shape[-1],), dtype_of(self.cfg.param_dtype))
    if offset:
      scale_D = scale_D.astype(jnp.float32) + offset
    if self.cfg.norm == "rmsnorm":
      y = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + (self.cfg.norm_eps or 1e-6))
      return (y * scale_D).astype(dtype)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + (self.cfg.norm_eps or 1e-5)) * scale_D
    if self.cfg.use_bias:
      y = y + self.param("bias", zeros_init("embed"), (x.shape[-1],), dtype_of(self.cfg.param_dtype))
    return y.astype(dtype)


ACTIVATIONS = {
    # tanh-approximate GELU, as in GPT-2 and BERT checkpoints.
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),
    # The exact erf form, which Hugging Face BERT checkpoints use (hidden_act='gelu').
    "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,  # the feed-forward LM of Bengio et al. (2003)
}

# Gated linear units (Shazeer, 2020): act(x W_gate) * (x W_up), the gate's nonlinearity by name.
GATED_ACTIVATIONS = {
    "swiglu": jax.nn.silu,
    "geglu": ACTIVATIONS["gelu"],
}


class Mlp(nn.Module):
  """Position-wise feed-forward: D -> F -> D, or for gated activations two D -> F projections multiplied."""
  cfg: Any  # a TransformerConfig (lmjax/models/stack.py), which imports this module
  out_std: float

  @nn.compact
  def __call__(self, x_BLD: jax.Array, deterministic: bool) -> jax.Array:
    cfg = self.cfg
    dense = lambda feats, std, axes, name: nn.DenseGeneral(
        feats, use_bias=cfg.use_bias, dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype),
        kernel_init=normal_init(std, *axes), bias_init=zeros_init(axes[-1]), name=name)
    B, L, D = x_BLD.shape
    # Tokens are flattened to one axis (N = B*L) so each weight gradient contracts a single axis: with two
    # contracted axes XLA:CPU materializes transposed activations, which made the backward pass 2.5x slower.
    x_ND = x_BLD.reshape(B * L, D)
    if cfg.activation in GATED_ACTIVATIONS:
      gate_NF = dense(cfg.mlp_dim, cfg.init_std, ("embed", "mlp"), "wi_gate")(x_ND)
      up_NF = dense(cfg.mlp_dim, cfg.init_std, ("embed", "mlp"), "wi_up")(x_ND)
      h_NF = GATED_ACTIVATIONS[cfg.activation](gate_NF) * up_NF
    else:
      h_NF = dense(cfg.mlp_dim, cfg.init_std, ("embed", "mlp"), "wi")(x_ND)
      h_NF = ACTIVATIONS[cfg.activation](h_NF)
    h_NF = nn.with_logical_constraint(h_NF, ("activation_tokens", "mlp"))
    y_ND = dense(cfg.d_model, self.out_std, ("mlp", "embed"), "wo")(h_NF)
    return nn.Dropout(cfg.dropout)(y_ND.reshape(B, L, D), deterministic=deterministic)
