r"""What checkpoint checksums cost: saving and restoring a train state with and without them.

  python experiments/benchmarks/checkpoint_integrity.py --config=configs/gpt2_small.py --repeats=3

Builds the config's train state exactly as training does (`lmjax.programs.build`, `create_train_state`: parameters
and optimizer moments; for GPT-2 small 124M parameters and two Adam moments, about 1.5 GB in float32), fills it with
random values like a trained state's (--fresh keeps the initialization, whose zero moments compress to nothing),
then, in a scratch directory, after one untimed round, times each of:

  save                  Checkpointer.save + wait, checksums off: Orbax writing the step and committing it
  save + checksums      the same with checksums on; wait() also waits for the SHA-256 of every file to be recorded
  record checksums      record_checksums alone on a saved step (what the background thread adds per save)
  restore               Checkpointer.restore, checksums off
  restore + verify      the same with checksums on: every file is hashed and compared before Orbax reads it
  verify                verify_step alone

The files were just written, so they are read from the page cache: the hashing is CPU-bound, and the figures are
what checksums add on a machine whose disk is not the bottleneck (on a cold cache the verify reads the files once
more, and Orbax's own read then hits the cache). Prints a markdown table; --json_out also writes the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # runnable as a plain script from a checkout

import jax  # noqa: E402

from lmjax import programs, sharding  # noqa: E402
from lmjax.checkpoint import Checkpointer, record_checksums, verify_step  # noqa: E402
from lmjax.state import count_params, create_train_state  # noqa: E402


def load_config(spec: str):
  import importlib.util  # pylint: disable=import-outside-toplevel
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("benchmark_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def like_a_trained_state(state, seed: int):
  """Every float leaf (parameters and both Adam moments) filled with random values, as after training: a fresh
  state's moments are zeros, which zstd shrinks to almost nothing on disk and would make the files unrealistically
  small to write, hash and read."""
  leaves, treedef = jax.tree_util.tree_flatten(state)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))

  def fill(x, key):
    if not jax.numpy.issubdtype(x.dtype, jax.numpy.floating):
      return x
    return jax.jit(lambda k: (0.02 * jax.random.normal(k, x.shape)).astype(x.dtype), out_shardings=x.sharding)(key)
  return jax.tree_util.tree_unflatten(treedef, [fill(x, k) for x, k in zip(leaves, keys)])


def timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/gpt2_small.py")
  parser.add_argument("--vocab_size", type=int, default=0, help="default config.tokenizer.vocab_size, else 263")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dir", default="", help="scratch directory (default: a temporary one, removed after)")
  parser.add_argument("--json_out", default="")
  parser.add_argument("--fresh", action="store_true", help="time the freshly initialized state (zero moments) "
                      "instead of one filled with random values like a trained one")
  args = parser.parse_args()

  config = load_config(args.config)
  vocab_size = args.vocab_size or config.tokenizer.vocab_size or 263
  progs = programs.build(config, vocab_size)
  with sharding.activate(progs.mesh, progs.rules):
    state = create_train_state(progs.model, progs.optimizer, config.seed, progs.sample_tokens(config.data.seq_len),
                               progs.state_shardings)
    if not args.fresh:
      state = like_a_trained_state(state, config.seed)
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    jax.block_until_ready(state)
    state_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(state))

    scratch = Path(args.dir or tempfile.mkdtemp(prefix="lmjax_checksums_"))
    scratch.mkdir(parents=True, exist_ok=True)
    times: dict[str, list[float]] = {k: [] for k in ("save", "save + checksums", "record checksums", "restore",
                                                      "restore + verify", "verify")}
    files = disk_bytes = 0
    try:
      for r in range(-1, args.repeats):  # round -1 warms up (Orbax's first save and restore set things up)
        plain, checked = scratch / f"plain{r}", scratch / f"checked{r}"
        record = (lambda name, seconds: times[name].append(seconds)) if r >= 0 else (lambda name, seconds: None)
        saver = Checkpointer(plain, keep=1, every=1, async_save=False, checksums=False)
        record("save", timed(lambda: (saver.save(1, state, force=True), saver.wait())))
        saver.close()
        saver = Checkpointer(checked, keep=1, every=1, async_save=False, checksums=True)
        record("save + checksums", timed(lambda: (saver.save(1, state, force=True), saver.wait())))
        saver.close()
        record("record checksums", timed(lambda: record_checksums(plain / "1")))
        step_files = [p for p in (checked / "1").rglob("*") if p.is_file()]
        files, disk_bytes = len(step_files), sum(p.stat().st_size for p in step_files)

        reader = Checkpointer(plain, keep=1, every=1, async_save=False, checksums=False)
        record("restore", timed(lambda: jax.block_until_ready(reader.restore(1, abstract))))
        reader.close()
        reader = Checkpointer(checked, keep=1, every=1, async_save=False, checksums=True)
        record("restore + verify", timed(lambda: jax.block_until_ready(reader.restore(1, abstract))))
        reader.close()
        record("verify", timed(lambda: verify_step(checked / "1")))
        shutil.rmtree(plain)
        shutil.rmtree(checked)
    finally:
      if not args.dir:
        shutil.rmtree(scratch, ignore_errors=True)

  median = {k: statistics.median(v) for k, v in times.items()}
  print(f"{args.config}: {count_params(state.params):,} parameters, train state {state_bytes / 2**30:.2f} GiB in "
        f"memory, {disk_bytes / 2**30:.2f} GiB in {files} files on disk; {jax.devices()[0].device_kind}, "
        f"{os.cpu_count()} CPUs; median of {args.repeats}\n")
  print("| operation | median s | min s | max s | added by checksums | hashing GB/s |")
  print("|---|---|---|---|---|---|")
  baseline = {"save + checksums": median["save"], "restore + verify": median["restore"]}
  for name, values in times.items():
    added = f"+{median[name] - baseline[name]:.2f} s ({median[name] / baseline[name] - 1:+.0%})" \
        if name in baseline else "-"
    rate = f"{disk_bytes / median[name] / 1e9:.2f}" if name in ("record checksums", "verify") else "-"
    print(f"| {name} | {median[name]:.2f} | {min(values):.2f} | {max(values):.2f} | {added} | {rate} |")
  if args.json_out:
    Path(args.json_out).write_text(json.dumps({"config": args.config, "state_bytes": state_bytes,
                                               "disk_bytes": disk_bytes, "files": files, "times": times,
                                               "cpus": os.cpu_count(),
                                               "device": jax.devices()[0].device_kind}, indent=1) + "\n")


if __name__ == "__main__":
  main()
