r"""Generation speed: lmjax over its KV cache, lmjax by full recomputation (the former sampler), and Hugging Face
transformers' `generate`, on the same GPT-2-small-shaped model with random weights, greedy, one after the other on
the same machine.

  python experiments/generation/benchmark.py --hf_python=/tmp/hfenv/bin/python

Prints the machine's memory copy bandwidth, the batch-1 bound it implies (bandwidth / parameter bytes: every
generated token reads every weight once), and a markdown table of new tokens per second. transformers and torch are
not lmjax dependencies: --hf_python names an interpreter that has them (the row is left out without it).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def copy_bandwidth(gib: float = 1.0, repeats: int = 5) -> dict[str, float]:
  """Bytes read plus bytes written per second copying a `gib` GiB array, best of `repeats`: one numpy thread, and
  one thread per core on its own half (numpy copies release the GIL)."""
  n = int(gib * 2 ** 30)
  src = np.ones(n // 8)
  dst = np.empty_like(src)

  def best(fn):
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
    return 2 * n / min(times)

  def threaded():
    bounds = np.linspace(0, len(src), os.cpu_count() + 1).astype(int)
    threads = [threading.Thread(target=np.copyto, args=(dst[lo:hi], src[lo:hi])) for lo, hi in zip(bounds, bounds[1:])]
    for t in threads:
      t.start()
    for t in threads:
      t.join()

  return {"one_thread": best(lambda: np.copyto(dst, src)), "all_cores": best(threaded)}


def build_lmjax(dtype: str):
  import jax
  import jax.numpy as jnp
  from configs import gpt2_small
  from lmjax.models import build_model, model_config
  c = gpt2_small.get_config()
  c.model.dtype = dtype
  model = build_model(model_config(c, c.tokenizer.vocab_size))
  unbox = lambda tree: jax.tree_util.tree_map(lambda x: getattr(x, "value", x), tree,
                                              is_leaf=lambda x: hasattr(x, "value"))
  params = jax.jit(lambda: unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]))()
  return model, jax.block_until_ready(params)


def timed(fn, repeats: int) -> tuple[float, float]:
  """(first call, compilation included; best of the next `repeats` calls), in seconds."""
  import jax
  start = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return first, min(times)


def run_lmjax(model, params, batch: int, prompt_len: int, new: int, repeats: int) -> dict:
  import jax
  import jax.numpy as jnp
  from lmjax import decode
  prompt_BP = jnp.asarray(np.random.default_rng(0).integers(7, 1000, (batch, prompt_len)), jnp.int32)
  lengths_B = jnp.full((batch,), prompt_len, jnp.int32)
  # eos_id=None: every row generates all `new` tokens, as transformers does with min_new_tokens.
  fn = jax.jit(functools.partial(decode.generate, decode.step_decoder(model), max_new_tokens=new, temperature=0.0,
                                 eos_id=None))
  first, best = timed(lambda: fn(params, prompt_BP, lengths_B, jax.random.PRNGKey(0)), repeats)
  return {"system": "lmjax, KV cache", "batch": batch, "first_s": first, "best_s": best, "tokens": batch * new}


def run_lmjax_without_cache(model, params, batch: int, prompt_len: int, new: int, steps: int) -> dict:
  """The former sampler: each token re-runs the model over the whole window of prompt_len + new tokens. Every step
  costs the same (the window is full-size from the first step), so `steps` of them measure the rate of all `new`."""
  import jax
  import jax.numpy as jnp
  from lmjax import decode
  window = prompt_len + new
  prompt_BP = jnp.asarray(np.random.default_rng(0).integers(7, 1000, (batch, window - steps)), jnp.int32)
  fn = jax.jit(functools.partial(decode.generate_without_cache, model, num_new=steps, window=window,
                                 temperature=0.0))
  first, best = timed(lambda: fn(params, prompt_BP, jax.random.PRNGKey(0)), 1)
  return {"system": f"lmjax, no cache (full recompute; {steps} of {new} steps timed)", "batch": batch,
          "first_s": first, "best_s": best, "tokens": batch * steps}


HF_SCRIPT = r"""
import json, sys, time
import torch
from transformers import GPT2Config, GPT2LMHeadModel
args = json.loads(sys.argv[1])
torch.manual_seed(0)
config = GPT2Config(vocab_size=args["vocab"], n_positions=args["max_len"], n_embd=args["width"],
                    n_layer=args["layers"], n_head=args["heads"], n_inner=args["mlp"], activation_function="gelu_new",
                    tie_word_embeddings=True)
model = GPT2LMHeadModel(config).eval()
results = []
for batch in args["batches"]:
  ids = torch.randint(7, 1000, (batch, args["prompt_len"]), generator=torch.Generator().manual_seed(0))
  run = lambda: model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args["new"],
                               min_new_tokens=args["new"], do_sample=False, num_beams=1, use_cache=True,
                               pad_token_id=0)
  with torch.inference_mode():
    start = time.perf_counter(); out = run(); first = time.perf_counter() - start
    assert out.shape == (batch, args["prompt_len"] + args["new"]), out.shape
    times = []
    for _ in range(args["repeats"]):
      start = time.perf_counter(); run(); times.append(time.perf_counter() - start)
  results.append({"system": f"transformers {__import__('transformers').__version__} generate (torch "
                            f"{torch.__version__}, {torch.get_num_threads()} threads)", "batch": batch,
                  "first_s": first, "best_s": min(times), "tokens": batch * args["new"]})
print(json.dumps({"results": results, "params": sum(p.numel() for p in model.parameters())}))
"""


def run_hf(python: str, batches: list[int], prompt_len: int, new: int, repeats: int) -> tuple[list[dict], int]:
  from configs import gpt2_small
  m = gpt2_small.get_config().model
  args = {"vocab": gpt2_small.get_config().tokenizer.vocab_size, "max_len": m.max_len, "width": m.d_model,
          "layers": m.num_layers, "heads": m.num_heads, "mlp": m.mlp_dim, "batches": batches,
          "prompt_len": prompt_len, "new": new, "repeats": repeats}
  out = subprocess.run([python, "-c", HF_SCRIPT, json.dumps(args)], check=True, capture_output=True, text=True)
  record = json.loads(out.stdout.strip().splitlines()[-1])
  return record["results"], record["params"]


def cpu_model() -> str:
  try:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
      if line.startswith("Model name:"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--hf_python", default="", help="A Python with torch and transformers; omit to skip them.")
  parser.add_argument("--batch_sizes", default="1,8")
  parser.add_argument("--prompt_len", type=int, default=32)
  parser.add_argument("--new_tokens", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3, help="Timed calls after the first; the best counts.")
  parser.add_argument("--no_cache_steps", type=int, default=16,
                      help="Steps timed of the recompute baseline; 0 skips it.")
  parser.add_argument("--dtype", default="float32", help="lmjax compute dtype (torch runs float32).")
  args = parser.parse_args()
  batches = [int(b) for b in args.batch_sizes.split(",")]
  print(f"# {time.strftime('%Y-%m-%d %H:%M')} | {cpu_model()} | {os.cpu_count()} cores | "
        f"load average {os.getloadavg()[0]:.2f} at start", flush=True)

  import jax
  from lmjax.state import count_params
  bandwidth = copy_bandwidth()
  model, params = build_lmjax(args.dtype)
  num_params = count_params(params)
  param_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(params))
  rows = []
  for batch in batches:
    rows.append(run_lmjax(model, params, batch, args.prompt_len, args.new_tokens, args.repeats))
    print(rows[-1], flush=True)
    if args.no_cache_steps:
      rows.append(run_lmjax_without_cache(model, params, batch, args.prompt_len, args.new_tokens,
                                          args.no_cache_steps))
      print(rows[-1], flush=True)
  del params
  if args.hf_python:
    hf_rows, hf_params = run_hf(args.hf_python, batches, args.prompt_len, args.new_tokens, args.repeats)
    for r in hf_rows:
      print(r, flush=True)
    rows += hf_rows
    print(f"transformers model: {hf_params:,} parameters (lmjax: {num_params:,})")

  bounds = {k: v / param_bytes for k, v in bandwidth.items()}
  print(f"\nmemory copy bandwidth (bytes read + written per second, 1 GiB numpy copy, best of 5): "
        f"{bandwidth['one_thread'] / 1e9:.1f} GB/s one thread, {bandwidth['all_cores'] / 1e9:.1f} GB/s on all cores")
  print(f"parameters: {num_params:,} = {param_bytes / 1e6:.0f} MB ({args.dtype}); batch-1 bound = bandwidth / "
        f"parameter bytes = {bounds['one_thread']:.1f} tokens/s (one thread), {bounds['all_cores']:.1f} (all cores)")
  print(f"load average at the end: {os.getloadavg()[0]:.2f}\n")
  hf_rate = {r["batch"]: r["tokens"] / r["best_s"] for r in rows if r["system"].startswith("transformers")}
  print("| system | batch | new tokens/s | ms per step | vs transformers | of batch-1 bound (one thread / all cores) "
        "| first call (s) |")
  print("|---|---|---|---|---|---|---|")
  for r in sorted(rows, key=lambda r: r["batch"]):
    rate = r["tokens"] / r["best_s"]
    vs = f"{rate / hf_rate[r['batch']]:.2f}x" if r["batch"] in hf_rate else "-"
    of_bound = f"{rate / bounds['one_thread']:.0%} / {rate / bounds['all_cores']:.0%}" if r["batch"] == 1 else "-"
    print(f"| {r['system']} | {r['batch']} | {rate:.1f} | {1000 * r['batch'] / rate:.1f} | {vs} | {of_bound} | "
          f"{r['first_s']:.1f} |")


if __name__ == "__main__":
  main()
