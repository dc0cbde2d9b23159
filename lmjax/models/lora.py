"""LoRA (Hu et al., 2021): low-rank adapters on a model's dense layers, while the layers' own weights stay frozen.

An adapted dense layer computes

    y = x W (+ b) + (alpha / r) * dropout(x) A B,      A [*in, r], B [r, *out]

where W [*in, *out] is the layer's kernel. B starts at zero, so at initialization the adapted model computes
exactly what the base model does; A starts normal with std 1/sqrt(fan-in).

Which layers (`finetune.lora.targets`): a regular expression that must match the end of a dense layer's path, at a
'/' boundary. A layer's path is its parameters' path without the leaf name: 'layer_0/attn/qkv', 'layer_3/mlp/wi',
'decoder_1/cross_attn/kv', 'lm_head'. Dense layers are lmjax's `Projection` and Flax's Dense and DenseGeneral, the
ones every lmjax architecture is built of, so any family (trained here or imported) is adapted by its parameter
paths alone, with nothing of its own to declare.

How: `adapt(model, settings, init_args)` returns an `Adapted` model with the module's interface (init, apply with
any method, cfg). It runs the base module under a Flax method interceptor (`nn.intercept_methods`), which adds the
low-rank term to each matched layer's output and keeps the adapter parameters `lora_a` and `lora_b` beside that
layer's kernel. They carry the logical axes of the kernel's input and output dimensions, so they are sharded by the
same mesh rules; the rank axis is replicated. Nothing in the model code changes, and the base parameters keep their
names, so a base checkpoint's tree is the adapted tree without the adapters.

A saved adapted run's parameters are a plain tree: `merge` folds the adapters into the kernels (what an export
writes), `strip` drops them (the base), `param_groups` freezes everything but them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from lmjax import config as config_lib
from lmjax.models.layers import Projection

ADAPTER_NAMES = ("lora_a", "lora_b")
# Every projection of attention (self and cross) and of the MLP, plain or gated.
DEFAULT_TARGETS = "(self_|cross_)?attn/(qkv|q|kv|out)|mlp/(wi|wi_gate|wi_up|wo)"

FIELDS = {
    "rank": 0,  # r; 0 trains the model itself, > 0 trains rank-r adapters and freezes every base weight
    "alpha": 16.0,  # the low-rank term is scaled by alpha / rank
    "dropout": 0.0,  # dropout on the adapters' inputs while training
    "targets": DEFAULT_TARGETS,  # regular expression matching the end of the adapted layers' paths
}


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Range checks of finetune.lora.* (whether the task trains adapters is its own section's check)."""
  config_lib.at_least(cfg, "finetune.lora.rank", 0)
  config_lib.at_least(cfg, "finetune.lora.alpha", 0.0, strict=True)
  config_lib.in_unit_interval(cfg, "finetune.lora.dropout")
  try:
    re.compile(cfg.finetune.lora.targets)
  except re.error as e:
    config_lib.fail("finetune.lora.targets", cfg.finetune.lora.targets, f"is not a regular expression ({e})")
  if not cfg.finetune.lora.targets.strip():
    config_lib.fail("finetune.lora.targets", cfg.finetune.lora.targets, f"name the layers to adapt, e.g. "
                    f"{DEFAULT_TARGETS!r}")


@dataclasses.dataclass(frozen=True)
class LoraSettings:
  rank: int
  alpha: float = 16.0
  dropout: float = 0.0
  targets: str = DEFAULT_TARGETS

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "LoraSettings | None":
    """The settings of a config's finetune.lora section; None when it trains no adapters (rank 0)."""
    lora = config.finetune.lora
    return cls(lora.rank, float(lora.alpha), float(lora.dropout), lora.targets) if lora.rank > 0 else None

  def matches(self, path: str) -> bool:
    return re.fullmatch(rf"(?:.*/)?(?:{self.targets})", path) is not None


# --- the dense layers ---------------------------------------------------------------------------------------------

def _contracted(module: nn.Module, x_ndim: int) -> int:
  """How many trailing input dimensions the layer contracts with the leading dimensions of its kernel."""
  if isinstance(module, Projection):
    return len(module.in_axes)
  if isinstance(module, nn.DenseGeneral):
    axes = module.axis if isinstance(module.axis, tuple) else (module.axis,)
    axes = sorted(a % x_ndim for a in axes)
    if axes != list(range(x_ndim - len(axes), x_ndim)) or module.batch_dims:
      raise ValueError(f"LoRA adapts dense layers that contract trailing input axes; {'/'.join(module.path)} "
                       f"contracts axes {module.axis} with batch_dims {module.batch_dims}")
    return len(axes)
  return 1  # nn.Dense


DENSE = (Projection, nn.DenseGeneral, nn.Dense)


def _low_rank(module: nn.Module, x: jax.Array, y: jax.Array, settings: LoraSettings,
              deterministic: bool) -> jax.Array:
  """(alpha / r) * dropout(x) A B for this layer, creating A and B beside its kernel on first use."""
  kernel = module.get_variable("params", "kernel")
  boxed = isinstance(kernel, nn.meta.AxisMetadata)  # initializing: the kernel still carries its logical axes
  shape = (kernel.value if boxed else kernel).shape
  n_in = _contracted(module, x.ndim)
  names = tuple(kernel.names) if boxed and isinstance(kernel, nn.Partitioned) else (None,) * len(shape)
  r = settings.rank
  param_dtype = jnp.dtype(module.param_dtype)  # a name (Projection) or a dtype (Flax's layers)
  a_init = nn.with_logical_partitioning(nn.initializers.normal(math.prod(shape[:n_in]) ** -0.5), (*names[:n_in], None))
  b_init = nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, *names[n_in:]))
  a = module.param("lora_a", a_init, (*shape[:n_in], r), param_dtype)
  b = module.param("lora_b", b_init, (r, *shape[n_in:]), param_dtype)
  dtype = y.dtype
  x = x.astype(dtype)
  if settings.dropout > 0.0 and not deterministic:
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - settings.dropout, x.shape)
    x = jnp.where(keep, x / (1.0 - settings.dropout), 0.0).astype(dtype)
  h = jax.lax.dot_general(x, a.astype(dtype), ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())))
  delta = jax.lax.dot_general(h, b.astype(dtype), (((h.ndim - 1,), (0,)), ((), ())))
  return y + (settings.scale * delta).astype(y.dtype)


def _interceptor(settings: LoraSettings, deterministic: bool, seen: list[tuple[str, bool]] | None = None) -> Callable:
  def intercept(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or not isinstance(module, DENSE):
      return next_fun(*args, **kwargs)
    y = next_fun(*args, **kwargs)
    path = "/".join(module.path)
    adapted = settings.matches(path)
    if seen is not None:
      seen.append((path, adapted))
    if not adapted:
      return y
    x = args[0] if args else next(iter(kwargs.values()))
    return _low_rank(module, x, y, settings, deterministic)
  return intercept


@dataclasses.dataclass(frozen=True)
class Adapted:
  """A Flax model with LoRA adapters: what `init` and `apply` of the base module give, plus the low-rank terms.

  `apply` trains the adapters with dropout when the call passes deterministic=False (and rngs with 'dropout'), as
  every lmjax model call does while training. `base` alone, applied to the same parameters, is the model without
  its adapters (their parameters are simply not read)."""
  base: Any  # the Flax module
  settings: LoraSettings
  paths: tuple[str, ...] = ()  # the adapted layers, when `adapt` traced them

  @property
  def cfg(self) -> Any:
    return self.base.cfg

  def init(self, rngs: Any, *args: Any, **kwargs: Any) -> Any:
    with nn.intercept_methods(_interceptor(self.settings, deterministic=True)):
      return self.base.init(rngs, *args, **kwargs)

  def apply(self, variables: Any, *args: Any, **kwargs: Any) -> Any:
    deterministic = kwargs.get("deterministic", True)
    with nn.intercept_methods(_interceptor(self.settings, deterministic)):
      return self.base.apply(variables, *args, **kwargs)


def adapt(model: Any, settings: LoraSettings | None, init_args: tuple[Any, ...]) -> Any:
  """`model` with adapters on the layers `settings.targets` matches; `model` itself when settings is None. Traces
  the initialization once (nothing is allocated) and raises a one-line ConfigError when no layer matches."""
  if settings is None:
    return model
  seen: list[tuple[str, bool]] = []
  with nn.intercept_methods(_interceptor(settings, deterministic=True, seen=seen)):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *init_args))
  paths = tuple(dict.fromkeys(p for p, adapted in seen if adapted))
  if not paths:
    dense = list(dict.fromkeys(p for p, _ in seen))
    listed = ", ".join(dense[:6]) + (", ..." if len(dense) > 6 else "")
    raise config_lib.ConfigError(
        f"config.finetune.lora.targets={settings.targets!r} matches none of the model's dense layers "
        f"({listed or 'it has none'}); give a regular expression matching the end of their paths, e.g. "
        f"{DEFAULT_TARGETS!r}.")
  return Adapted(model, settings, paths)


def settings_of(model: Any) -> LoraSettings | None:
  return model.settings if isinstance(model, Adapted) else None


def without_adapters(model: Any) -> Any:
  """The base module of an adapted model (the model itself otherwise): applied to the adapted parameters, it
  computes the base model's outputs."""
  return model.base if isinstance(model, Adapted) else model


# --- parameter trees ----------------------------------------------------------------------------------------------

def _key(entry: Any) -> str:
  return str(getattr(entry, "key", getattr(entry, "name", entry)))


def is_adapter(path: Iterable[Any]) -> bool:
  """Whether a parameter path (a jax key path, or names) leads to an adapter's A or B."""
  return any(_key(k) in ADAPTER_NAMES for k in path)


def param_groups(params: Any) -> Any:
  """Optimizer groups (lmjax/optim.py) of an adapted model: the adapters train, everything else is frozen."""
  return jax.tree_util.tree_map_with_path(lambda path, _: "body" if is_adapter(path) else "frozen", params)


def has_adapters(params: Any) -> bool:
  return any(is_adapter(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0])


def strip(params: Any) -> Any:
  """The base parameters: the tree without adapters."""
  if not isinstance(params, dict):
    return params
  return {k: strip(v) for k, v in params.items() if k not in ADAPTER_NAMES}


def delta(a: Any, b: Any, scale: float) -> Any:
  """The change (alpha / r) A B of a kernel [*in, *out], from A [*in, r] and B [r, *out]."""
  xp = np if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) else jnp
  return scale * xp.tensordot(a, b, axes=1)


def merge(params: Any, scale: float) -> Any:
  """The tree with every adapter folded into its kernel, W + (alpha / r) A B, and no adapters left: the parameters
  of the base architecture that computes what the adapted model does."""
  if not isinstance(params, dict):
    return params
  out = {k: merge(v, scale) for k, v in params.items() if k not in ADAPTER_NAMES}
  if "lora_a" in params:
    kernel = params["kernel"]
    out["kernel"] = (kernel + delta(params["lora_a"], params["lora_b"], scale)).astype(kernel.dtype)
  return out
