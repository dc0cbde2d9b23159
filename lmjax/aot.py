r"""Ahead-of-time check of a pod config on this machine: compile the train step for N simulated devices.

  python -m lmjax.aot --config=configs/gpt2_small.py --num_devices=64 \
      --config.mesh.data=8 --config.mesh.fsdp=8 --device_memory_gib=16

It builds the mesh, the sharded state and the step exactly as training would, compiles for `num_devices` fake CPU
devices, and prints what one device holds: the state shard, the batch shard, temporaries, and their sum. Config
errors (a mesh that does not fit, a batch the mesh cannot split) show up here, minutes instead of a pod-hour
later. The figures come from XLA's CPU compiler: buffer sizes and sharding are the pod's, but fusion and
scheduling differ by backend, so treat temporaries as an estimate and leave headroom.
"""

import os
import sys


def _force_devices_before_jax_starts() -> None:
  """XLA reads the fake device count when JAX initializes, so it must be set before lmjax imports jax."""
  for arg in sys.argv[1:]:
    if arg.startswith("--num_devices="):
      count = arg.split("=", 1)[1]
      os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                 f" --xla_force_host_platform_device_count={count}").strip()
      os.environ["JAX_PLATFORMS"] = "cpu"


_force_devices_before_jax_starts()

import time  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=wrong-import-position
from absl import app, flags  # pylint: disable=wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position

from lmjax import console, programs, sharding  # pylint: disable=wrong-import-position
from lmjax.config import ConfigError, validate  # pylint: disable=wrong-import-position
from lmjax.cli import describe_command, fail, parse_flags  # pylint: disable=wrong-import-position
from lmjax.state import count_params  # pylint: disable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/gpt2_small.py.", lock_config=True)
_NUM_DEVICES = flags.DEFINE_integer("num_devices", 8, "Simulated devices to compile for (the pod's chip count).")
_VOCAB = flags.DEFINE_integer("vocab_size", 0, "Vocabulary size; 0: tokenizer.vocab_size, else 50304.")
_DEVICE_MEMORY = flags.DEFINE_float("device_memory_gib", 0.0,
                                    "Memory of one accelerator; when set, exit with status 1 if the estimate exceeds it.")
flags.mark_flags_as_required(["config"])

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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  console.setup()
  config = _CONFIG.value
  vocab = _VOCAB.value or config.tokenizer.vocab_size or 50304
  if jax.device_count() != _NUM_DEVICES.value:
    fail(f"--num_devices={_NUM_DEVICES.value} but JAX started with {jax.device_count()} devices; pass "
         f"--num_devices=N as a flag (it must be seen before JAX starts).")
  try:
    r = check(config, vocab)
  except (ConfigError, ValueError) as e:
    fail(str(e))
  mesh = " x ".join(f"{k}={v}" for k, v in r["mesh"].items())
  t = config.train
  print("| devices | mesh | params | batch x seq | microbatches | remat | dtype | state/device GiB | "
        "batch/device GiB | temp/device GiB | total/device GiB | compile s |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  print(f"| {r['devices']} | {mesh} | {r['params'] / 1e6:.1f}M | {t.batch_size} x {config.data.seq_len} | "
        f"{t.microbatches} | {config.model.remat} | {config.model.dtype} | {r['state_gib']:.3f} | "
        f"{r['batch_gib']:.4f} | {r['temp_gib']:.3f} | {r['total_gib']:.3f} | {r['compile_s']:.1f} |")
  if _DEVICE_MEMORY.value:
    fits = r["total_gib"] <= _DEVICE_MEMORY.value
    print(f"{'fits' if fits else 'DOES NOT FIT'}: about {r['total_gib']:.2f} GiB per device of "
          f"{_DEVICE_MEMORY.value:g} GiB.")
    if not fits:
      sys.exit(1)


def run() -> None:
  """The `lmjax-aot` command."""
  describe_command(__name__)
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
