"""Two real processes on localhost (CPU, gloo collectives) train like one process: same losses, same parameters.

Each process reads only its half of every batch, they save one checkpoint together, and only process 0 writes
metrics. This is the multi-host path of a TPU pod or GPU cluster, minus the network.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from configs import tiny
from lmjax import train
from lmjax.checkpoint import load_saved_state
from lmjax.writers import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = "".join(f"Document {i}: the quick brown fox jumps over the lazy dog {i % 7} times.\n\n" for i in range(300))
OVERRIDES = {"num_steps": 20, "eval_every": 10, "checkpoint_every": 10, "num_samples": 1, "tensorboard": False,
             "plot": False}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  corpus = tmp_path / "fox.txt"
  corpus.write_text(TEXT)
  two = tmp_path / "two"
  flags = [f"--config={REPO}/configs/tiny.py", f"--workdir={two}", "--config.data.source=files",
           f"--config.data.paths={corpus}", *(f"--config.train.{k}={v}" for k, v in OVERRIDES.items())]
  # The session's XLA flags (no LLVM passes: 20 steps are mostly compilation), with 2 devices per process.
  session_flags = os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"{session_flags} --xla_force_host_platform_device_count=2")
  port = free_port()
  procs = [subprocess.Popen([sys.executable, "-m", "lmjax.main", *flags, f"--coordinator_address=localhost:{port}",
                             "--num_processes=2", f"--process_id={i}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=240)[0] for p in procs]
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {i}:\n{out[-3000:]}"
  assert "Process 1 of 2; 2 local devices of 4" in outputs[1]

  config = tiny.get_config()
  config.data.source, config.data.paths = "files", str(corpus)
  config.train.update(OVERRIDES)
  one = tmp_path / "one"
  train.train_and_evaluate(config, one)  # one process, the test session's 8 devices

  records_two, records_one = read_metrics(two), read_metrics(one)
  keys = [(r["split"], r["step"]) for r in records_two]
  assert len(keys) == len(set(keys)), "every record once: only process 0 writes metrics"
  assert keys == [(r["split"], r["step"]) for r in records_one]
  for a, b in zip(records_two, records_one):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
  assert records_two[-1]["loss"] < records_two[0]["loss"]

  params_two = load_saved_state(two / "checkpoints")["params"]
  params_one = load_saved_state(one / "checkpoints")["params"]
  for x, y in zip(jax.tree_util.tree_leaves(params_two), jax.tree_util.tree_leaves(params_one)):
    np.testing.assert_allclose(x, y, atol=2e-5, rtol=0)
