"""The device mesh and where every array lives on it.

Parameters and activations name logical axes ('embed', 'mlp', 'batch', ...); `config.mesh.rules` maps them to
the mesh axes (data, fsdp, sequence, tensor). Pure data parallelism is the default rules with mesh.data=-1; FSDP
shards parameters and optimizer state over 'fsdp' along 'embed'; tensor parallelism splits heads, MLP and vocab;
context parallelism (mesh.sequence) splits the length axis of activations, with ring attention.
Everything is `jax.jit` with NamedSharding; XLA inserts the collectives.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from lmjax.config import MESH_AXES, ConfigError

Rules = tuple[tuple[str, Any], ...]


def mesh_shape(mesh_cfg: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
  """Axis sizes with the -1 axis filled in; a ConfigError when they do not multiply to the device count."""
  sizes = {axis: int(mesh_cfg[axis]) for axis in MESH_AXES}
  fixed = math.prod(size for size in sizes.values() if size != -1)
  described = " x ".join(f"{axis}={size}" for axis, size in sizes.items())
  if -1 in sizes.values():
    fill = next(axis for axis, size in sizes.items() if size == -1)
    if num_devices % fixed:
      raise ConfigError(f"config.mesh ({described}) cannot fill mesh.{fill}: {num_devices} devices are not "
                        f"divisible by {fixed}; choose axis sizes whose product divides {num_devices}.")
    sizes[fill] = num_devices // fixed
  elif fixed != num_devices:
    raise ConfigError(f"config.mesh ({described}) has {fixed} devices but {num_devices} are available; make the "
                      f"product {num_devices} or set one axis to -1.")
  return sizes


def make_mesh(mesh_cfg: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_shape(mesh_cfg, len(devices))
  shape = tuple(sizes[axis] for axis in MESH_AXES)
  try:  # topology-aware placement on TPU/GPU (the tensor axis lands on the fastest links)
    device_array = mesh_utils.create_device_mesh(shape, devices)
  except (AssertionError, NotImplementedError, ValueError):
    device_array = np.asarray(devices).reshape(shape)
  # Auto axes: shardings are hints that XLA propagates, which is what logical constraints inside modules need.
  return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_rules(mesh_cfg: ml_collections.ConfigDict) -> Rules:
  """config.mesh.rules as Flax logical-axis rules: 'data,fsdp' -> ('data', 'fsdp'); '' -> replicated."""
  rules = []
  for logical, text in mesh_cfg.rules.items():
    axes = tuple(a.strip() for a in text.split(",") if a.strip())
    rules.append((logical, axes[0] if len(axes) == 1 else (axes or None)))
  return tuple(rules)


def without_batch_sharding(rules: Rules) -> Rules:
  """The rules with batch and length axes replicated: for small side computations (sampling a few rows of a short
  prompt) that the batch and sequence shards cannot split."""
  return tuple((name, None if name in ("batch", "activation_tokens", "length") else axes) for name, axes in rules)


def _mesh_axes_of(entry: Any) -> tuple[str, ...]:
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def logical_to_mesh_spec(logical: PartitionSpec | None, rules: Rules) -> PartitionSpec:
  """Logical names to mesh axes; a mesh axis is used at most once per array (the first dimension that asks)."""
  if logical is None:
    return PartitionSpec()
  table, used, out = dict(rules), set(), []
  for name in logical:
    axes = tuple(a for a in _mesh_axes_of(table.get(name)) if a not in used) if name is not None else ()
    used.update(axes)
    out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*out)


def fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh, name: str = "") -> PartitionSpec:
  """Drops mesh axes from dimensions they do not divide (e.g. a 65-character vocabulary over tensor=2).

  Such a dimension is replicated instead: correct, a little more memory. It is logged so a researcher sizing a
  pod sees it.
  """
  out = []
  for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    kept = []
    for axis in _mesh_axes_of(entry):
      if dim % (math.prod(mesh.shape[a] for a in kept) * mesh.shape[axis]) == 0:
        kept.append(axis)
    if len(kept) < len(_mesh_axes_of(entry)):
      logging.info("Replicating dimension of size %d of %s over %s: not divisible.", dim, name or "an array",
                   ", ".join(a for a in _mesh_axes_of(entry) if a not in kept))
    out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return PartitionSpec(*out)


def tree_shardings(abstract_tree: Any, logical_specs: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for a pytree of ShapeDtypeStructs, given its logical PartitionSpecs (same structure)."""
  def one(path, leaf, logical):
    if isinstance(leaf, optax.MaskedNode):  # the empty optimizer state of a parameter a transform skips
      return leaf
    spec = logical_to_mesh_spec(logical, rules)
    return NamedSharding(mesh, fit_spec(spec, leaf.shape, mesh, jax.tree_util.keystr(path)))
  return jax.tree_util.tree_map_with_path(one, abstract_tree, logical_specs,
                                          is_leaf=lambda x: isinstance(x, (jax.ShapeDtypeStruct, optax.MaskedNode)))


def batch_spec(rules: Rules, leading: int = 0) -> PartitionSpec:
  """Batches are [B, L] (or [S, B, L] with `leading` extra axes): rows split over the 'batch' rule."""
  return PartitionSpec(*(None,) * leading, *logical_to_mesh_spec(PartitionSpec("batch"), rules))


def batch_shards(mesh: Mesh, rules: Rules) -> int:
  return math.prod(mesh.shape[a] for a in _mesh_axes_of(dict(rules).get("batch")))


def check_batch_fits(config: ml_collections.ConfigDict, mesh: Mesh, rules: Rules) -> None:
  """Every device must get whole rows of every microbatch; checked before anything compiles."""
  t = config.train
  shards = batch_shards(mesh, rules)
  micro = t.batch_size // t.microbatches
  if micro % shards:
    raise ConfigError(f"config.train.batch_size={t.batch_size} with train.microbatches={t.microbatches} gives "
                      f"{micro} rows per microbatch, which the {shards} batch shards of the mesh "
                      f"({', '.join(f'{a}={s}' for a, s in mesh.shape.items())}) cannot split evenly; use a batch "
                      f"size that is a multiple of {shards * t.microbatches}.")
  eval_batch = t.eval_batch_size or t.batch_size
  if eval_batch % shards:
    raise ConfigError(f"config.train.eval_batch_size={eval_batch} cannot be split over {shards} batch shards; use "
                      f"a multiple of {shards}.")
  if jax.process_count() > 1 and (t.batch_size % jax.process_count() or eval_batch % jax.process_count()):
    raise ConfigError(f"config.train.batch_size={t.batch_size} (eval {eval_batch}) must be a multiple of the "
                      f"{jax.process_count()} processes, each of which reads its own rows.")


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Rules) -> Iterator[None]:
  """While tracing inside this, logical constraints in the models resolve against this mesh and these rules."""
  from lmjax.models import logical_axis_rules  # Flax stays inside models/
  with jax.set_mesh(mesh), logical_axis_rules(rules):
    yield


def replicated(x: np.ndarray, mesh: Mesh) -> jax.Array:
  """The same host value on every device, as one global array (valid on any number of processes)."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, NamedSharding(mesh, PartitionSpec()), lambda index: x[index])


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, spec: PartitionSpec) -> dict[str, jax.Array]:
  """This process's rows of a batch to one global array per key (every process passes its own rows)."""
  sharding = NamedSharding(mesh, spec)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
