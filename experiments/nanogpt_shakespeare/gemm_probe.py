r"""The matrix products of the nanoGPT-sized model's train step, timed alone on this CPU: XLA against PyTorch.

  python experiments/nanogpt_shakespeare/gemm_probe.py [--torch_python=PATH/bin/python] [--repeats=5]

Each of the step's GEMM shapes and layouts (as its profile shows them: [B*L, D] activations against the weights,
forward and both backward products) is compiled by XLA alone and timed on all cores, on one core, and ten times
inside a lax.fori_loop (where the step runs, with train.steps_per_call > 1); also in bfloat16, and with PyTorch
(oneDNN) when --torch_python names a Python that has torch. Prints GFLOP/s, best of --repeats timings of 100 calls.

A product in the step that runs at the one-core rate while the other core waits shows as a low "others busy" share
in `lmjax-profile`; this table says what the same product reaches alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# (lhs shape, rhs shape, lhs contracting dim, rhs contracting dim): [768, *] is the batch's 12 x 64 tokens.
CASES = [((768, 128), (128, 384), 1, 0), ((768, 128), (128, 512), 1, 0), ((768, 512), (512, 128), 1, 0),
         ((768, 128), (512, 128), 1, 1), ((768, 512), (128, 512), 1, 1), ((384, 768), (768, 128), 1, 0),
         ((768, 128), (768, 512), 0, 0)]

CHILD = r"""
import json, os, sys, time
mode, repeats = sys.argv[1], int(sys.argv[2])
if mode == "one_core":
  os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # before XLA starts its threads
import jax, jax.numpy as jnp
out = []
for a, b, ca, cb in json.loads(sys.argv[3]):
  dtype = jnp.bfloat16 if mode == "bfloat16" else jnp.float32
  x, w = jnp.full(a, 0.01, dtype), jnp.full(b, 0.01, dtype)
  dims = (((ca,), (cb,)), ((), ()))
  product = lambda x, w: jax.lax.dot_general(x, w, dims, preferred_element_type=jnp.float32)
  calls = 1
  if mode == "loop":
    calls = 10
    # The lhs changes every trip so the product cannot be hoisted out of the loop; the two adds are small.
    body = lambda i, carry: (carry[0] + 1e-9, carry[1] + product(carry[0], w))
    f = lambda x, w: jax.lax.fori_loop(0, 10, body, (x, product(x, w) * 0))[1]
  else:
    f = product
  c = jax.jit(f).lower(x, w).compile()
  flops = 2 * a[ca] * a[1 - ca] * b[1 - cb] * calls
  for _ in range(5):
    c(x, w).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(100):
      y = c(x, w)
    y.block_until_ready()
    best = min(best, (time.perf_counter() - t) / 100)
  out.append(flops / best / 1e9)
print(json.dumps(out))
"""

TORCH_CHILD = r"""
import json, sys, time, torch
out = []
for a, b, ca, cb in json.loads(sys.argv[2]):
  x, w = torch.full(a, 0.01), torch.full(b, 0.01)
  x = x if ca == 1 else x.t()  # the same products: a transposed view, as autograd's backward hands them over
  w = w if cb == 0 else w.t()
  for _ in range(5):
    x @ w
  best = float("inf")
  for _ in range(int(sys.argv[1])):
    t = time.perf_counter()
    for _ in range(100):
      y = x @ w
    best = min(best, (time.perf_counter() - t) / 100)
  out.append(2 * x.shape[0] * x.shape[1] * w.shape[1] / best / 1e9)
print(json.dumps(out))
"""

MODES = [("all_cores", "XLA, all cores"), ("one_core", "XLA, one core"), ("loop", "XLA, in a fori_loop"),
         ("bfloat16", "XLA, bfloat16")]


def measure(cmd: list[str]) -> list[float]:
  done = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  if done.returncode != 0:
    raise SystemExit(f"error: {' '.join(cmd[:2])} failed: {done.stderr.strip().splitlines()[-1:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--torch_python", default="", help="A Python with torch, for PyTorch's column.")
  parser.add_argument("--repeats", type=int, default=5, help="Timings of 100 calls per cell; the best is shown.")
  args = parser.parse_args()
  if args.repeats < 1:
    parser.error(f"--repeats={args.repeats}: must be at least 1")
  cases = json.dumps(CASES)
  columns = [(title, measure([sys.executable, "-c", CHILD, mode, str(args.repeats), cases])) for mode, title in MODES]
  if args.torch_python:
    columns.append(("PyTorch, all cores", measure([args.torch_python, "-c", TORCH_CHILD, str(args.repeats), cases])))
  print("GFLOP/s, best of", args.repeats, "x 100 calls\n")
  print("| product | " + " | ".join(t for t, _ in columns) + " |")
  print("|---" * (len(columns) + 1) + "|")
  for i, (a, b, ca, cb) in enumerate(CASES):
    name = f"[{a[0]},{a[1]}] x [{b[0]},{b[1]}], contracting {ca},{cb}"
    print(f"| {name} | " + " | ".join(f"{values[i]:.0f}" for _, values in columns) + " |")


if __name__ == "__main__":
  main()
