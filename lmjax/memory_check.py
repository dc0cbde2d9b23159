"""What one device holds for a config's train step, from the compiled program (the AOT memory check).

`lmjax.aot` is the command; this is the function, kept free of flags so that tests and notebooks can call it.
"""

import time

import jax

from lmjax import programs, sharding
from lmjax.config_validation import validate
from lmjax.state import count_params

GIB = 1024**3


def _bytes_per_device(tree) -> int:
  """Bytes of one device's shard of every array in an abstract tree (ShapeDtypeStructs with shardings)."""
  total = 0
  for leaf in jax.tree_util.tree_leaves(tree):
    shard_shape = leaf.sharding.shard_shape(leaf.shape)
    size = 1
    for n in shard_shape:
      size *= n
    total += size * leaf.dtype.itemsize
  return total


def check(config, vocab_size: int) -> dict[str, float]:
  validate(config)
  progs = programs.build_without_data(config, vocab_size)
  with sharding.activate(progs.mesh, progs.rules):
    state = progs.abstract_state(config)
    batches = progs.abstract_train_batches(config)
    start = time.perf_counter()
    compiled = progs.train_fn.lower(state, batches, *progs.frozen_args()).compile()
    compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  leaves, groups = jax.tree_util.tree_leaves(state.params), progs.task.param_groups(state.params)
  frozen = [False] * len(leaves) if groups is None else [g == "frozen" for g in jax.tree_util.tree_leaves(groups)]
  trainable = sum(int(p.size) for p, f in zip(leaves, frozen) if not f)  # LoRA: the adapters only
  # Donated state buffers are reused for the output state (alias), so they count once.
  total = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
           + memory.temp_size_in_bytes)
  return {"devices": progs.mesh.size, "mesh": dict(progs.mesh.shape), "params": count_params(state.params),
          "trainable": trainable, "state_gib": _bytes_per_device(state) / GIB,
          "params_gib": _bytes_per_device(state.params) / GIB,
          "opt_state_gib": _bytes_per_device(state.opt_state) / GIB, "batch_gib": _bytes_per_device(batches) / GIB,
          "temp_gib": memory.temp_size_in_bytes / GIB, "total_gib": total / GIB, "compile_s": compile_s}
