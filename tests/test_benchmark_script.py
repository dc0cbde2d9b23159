"""experiments/benchmarks/benchmark.py end to end on the tiny config: it runs, and its row reports the model."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from configs import tiny
from lmjax.models import model_config
from lmjax.models import build_model
from lmjax.state import count_params

REPO = Path(__file__).resolve().parents[1]
VOCAB = 100


def test_benchmark_prints_a_row_for_the_tiny_config():
  cmd = [sys.executable, "experiments/benchmarks/benchmark.py", "--config=configs/tiny.py", "--steps=2", "--warmup=1",
         f"--vocab_size={VOCAB}"]
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [line for line in result.stdout.splitlines() if line.startswith("| tiny |")]
  assert len(lines) == 1, result.stdout
  cells = [c.strip() for c in lines[0].strip("|").split("|")]
  header = [c.strip() for c in next(l for l in result.stdout.splitlines() if l.startswith("| config |")).strip("|")
            .split("|")]
  row = dict(zip(header, cells))

  config = tiny.get_config()
  model = build_model(model_config(config, VOCAB))
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, config.data.seq_len), jnp.int32)))
  assert int(row["params"].replace(",", "")) == count_params(params["params"])
  assert float(row["tokens/s"].replace(",", "")) > 0
  assert row["batch x seq"] == f"{config.train.batch_size} x {config.data.seq_len}"
  assert row["MFU"] == "-"  # no peak is known for CPU devices
