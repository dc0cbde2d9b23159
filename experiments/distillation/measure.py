r"""The distillation study's table: size, validation quality and generation speed of the teacher and the students.

  python experiments/distillation/measure.py runs/distill/teacher runs/distill/student runs/distill/kd ...

The first workdir is the teacher. For each run: parameters (without distillation projections), the final eval
loss, perplexity and bits per character from its metrics.jsonl, the retention of the teacher's quality (teacher
bits/char / run bits/char), and greedy generation speed over lmjax's KV cache (lmjax.decode.generate, one
compiled loop; best of 5 calls after a warm-up) at batch 1 and 8, 16-token prompts, 112 new tokens.
Prints a markdown table.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

PROMPT, NEW = 16, 112


def final_eval(workdir: Path) -> dict:
  from lmjax.writers import read_metrics
  return [r for r in read_metrics(workdir) if r["split"] == "eval"][-1]


def tokens_per_s(model, params, batch: int, repeats: int = 5) -> float:
  import jax
  import jax.numpy as jnp
  from lmjax import decode
  prompt_BP = jnp.asarray(np.random.default_rng(0).integers(7, 60, (batch, PROMPT)), jnp.int32)
  lengths_B = jnp.full((batch,), PROMPT, jnp.int32)
  fn = jax.jit(functools.partial(decode.generate, decode.step_decoder(model), max_new_tokens=NEW, temperature=0.0,
                                 eos_id=None))
  jax.block_until_ready(fn(params, prompt_BP, lengths_B, jax.random.PRNGKey(0)))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(params, prompt_BP, lengths_B, jax.random.PRNGKey(0)))
    best = min(best, time.perf_counter() - start)
  return batch * NEW / best


def measure(workdir: Path) -> dict:
  from lmjax.saved_run import open_run
  run = open_run(workdir)
  params, step = run.load_params()
  params = {k: v for k, v in params.items() if not k.startswith("distill_projection")}
  m = run.config.model
  ev = final_eval(workdir)
  return {"run": workdir.name, "shape": f"{m.num_layers} x {m.d_model}", "task": run.config.task,
          "params": sum(int(x.size) for x in __import__("jax").tree_util.tree_leaves(params)), "step": step,
          "loss": ev["loss"], "perplexity": ev["perplexity"], "bits_per_char": ev["bits_per_char"],
          "tok_s_1": tokens_per_s(run.model(), params, 1), "tok_s_8": tokens_per_s(run.model(), params, 8)}


def main(workdirs: list[str]) -> None:
  rows = [measure(Path(w)) for w in workdirs]
  teacher = rows[0]
  print("| run | task | layers x width | params | steps | val loss | val perplexity | bits/char | retention | "
        "gen tok/s (batch 1) | gen tok/s (batch 8) | speedup (batch 1) |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['run']} | {r['task']} | {r['shape']} | {r['params']:,} | {r['step']} | {r['loss']:.4f} | "
          f"{r['perplexity']:.3f} | {r['bits_per_char']:.4f} | {teacher['bits_per_char'] / r['bits_per_char']:.1%} | "
          f"{r['tok_s_1']:,.0f} | {r['tok_s_8']:,.0f} | {r['tok_s_1'] / teacher['tok_s_1']:.2f}x |")


if __name__ == "__main__":
  main(sys.argv[1:])
