"""Preemption, the non-finite guard, workdir safety and input checks."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import tiny
from conftest import ONE_DEVICE, single_device_env
from lmjax import train
from lmjax.checkpoint import load_saved_state
from lmjax.config import ConfigError
from lmjax.models import model_config
from lmjax.models import build_model
from lmjax.preemption import PREEMPTED_EXIT_CODE
from lmjax.state import create_train_state
from lmjax.step import train_step
from lmjax.tasks.causal_lm import CausalLmTask

REPO = Path(__file__).resolve().parents[1]
TEXT = "".join(f"Line {i}: a small corpus for reliability tests, number {i % 13}.\n\n" for i in range(400))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus") / "text.txt"
  path.write_text(TEXT)
  return path


def tiny_config(corpus):
  c = tiny.get_config()
  c.data.source, c.data.paths = "files", str(corpus)
  return c


def leaves(tree):
  return jax.tree_util.tree_leaves(tree)


def test_sigterm_saves_a_checkpoint_exits_75_and_the_rerun_matches(corpus, tmp_path):
  flags = ["--config=configs/tiny.py", "--config.data.source=files", f"--config.data.paths={corpus}",
           "--config.train.num_steps=200", "--config.train.log_every=10", "--config.train.checkpoint_every=1000",
           "--config.train.eval_every=200", "--config.train.num_samples=0", "--config.model.dropout=0.1"]
  cmd = [sys.executable, "-m", "lmjax.main", *flags]
  stopped = tmp_path / "stopped"
  env = single_device_env(optimize=True)  # 200 steps, run about twice
  proc = subprocess.Popen([*cmd, f"--workdir={stopped}"], cwd=REPO, stderr=subprocess.PIPE, text=True, env=env)
  metrics = stopped / "metrics.jsonl"
  deadline = time.time() + 120
  while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == PREEMPTED_EXIT_CODE, stderr[-2000:]
  assert "preempted" in stderr and "rerun the same command" in stderr
  saved_step = int(load_saved_state(stopped / "checkpoints")["step"])
  assert 0 < saved_step < 200  # stopped mid-run, before any regular checkpoint

  subprocess.run([*cmd, f"--workdir={stopped}"], cwd=REPO, check=True, capture_output=True, env=env)
  straight = tmp_path / "straight"
  subprocess.run([*cmd, f"--workdir={straight}"], cwd=REPO, check=True, capture_output=True, env=env)
  for a, b in zip(leaves(load_saved_state(stopped / "checkpoints")["params"]),
                  leaves(load_saved_state(straight / "checkpoints")["params"])):
    np.testing.assert_array_equal(a, b)


class NanLossTask(CausalLmTask):
  """Gives a NaN loss whenever the batch's first token is odd: a controllable, deterministic fault."""

  def loss(self, params, batch, rng, frozen=None):
    loss, aux = super().loss(params, batch, rng)
    bad = batch["inputs"][0, 0] % 2 == 1
    return jnp.where(bad, jnp.nan, loss), aux


def test_nonfinite_step_leaves_state_untouched_and_is_counted():
  cfg = model_config(vocab_size=20, num_layers=1, num_heads=2, d_model=16, mlp_dim=32, max_len=8)
  model = build_model(cfg)
  task = NanLossTask(model, seq_len=8)
  optimizer = optax.adamw(1e-2)
  state = create_train_state(model, optimizer, 0, jnp.zeros((1, 8), jnp.int32))

  def batch(first):
    tokens = jnp.full((2, 8), 4, jnp.int32).at[0, 0].set(first)
    return {"inputs": tokens, "targets": tokens, "segment_ids": jnp.ones((2, 8), jnp.int32),
            "positions": jnp.broadcast_to(jnp.arange(8), (2, 8)), "loss_mask": jnp.ones((2, 8))}

  step = jax.jit(lambda s, b: train_step(s, b, task=task, optimizer=optimizer))
  bad1, m1 = step(state, batch(3))
  assert int(m1["skipped"]) == 1 and int(bad1.nonfinite_streak) == 1 and int(bad1.skipped_steps) == 1
  for a, b in zip(leaves((state.params, state.opt_state)), leaves((bad1.params, bad1.opt_state))):
    np.testing.assert_array_equal(a, b)
  bad2, _ = step(bad1, batch(5))
  assert int(bad2.nonfinite_streak) == 2 and int(bad2.step) == 2
  good, m3 = step(bad2, batch(2))
  assert int(m3["skipped"]) == 0 and int(good.nonfinite_streak) == 0 and int(good.skipped_steps) == 2
  assert any(not np.array_equal(a, b) for a, b in zip(leaves(bad2.params), leaves(good.params)))


def test_run_stops_with_a_clear_error_after_consecutive_nonfinite_steps(corpus, tmp_path, monkeypatch):
  monkeypatch.setattr(CausalLmTask, "loss", lambda self, params, batch, rng, frozen=None: (
      jnp.nan, {"loss": jnp.nan, "tokens": 1.0}))
  c = tiny_config(corpus)
  c.train.max_nonfinite_steps = 3
  with pytest.raises(train.NonFiniteError, match="train.max_nonfinite_steps=3"):
    train.train_and_evaluate(c, tmp_path, devices=ONE_DEVICE)
  assert not (tmp_path / "checkpoints" / "10").exists()  # it stopped long before the first checkpoint at 20


def test_resuming_with_a_different_model_is_refused_unless_allowed(corpus, tmp_path):
  c = tiny_config(corpus)
  train.train_and_evaluate(c, tmp_path, stop_at=20, devices=ONE_DEVICE)
  c.model.num_layers = 3
  with pytest.raises(ConfigError, match="model.num_layers: 2 -> 3") as e:
    train.train_and_evaluate(c, tmp_path, devices=ONE_DEVICE)
  assert "allow_config_change" in str(e.value) and "\n" not in str(e.value)
  assert json.loads((tmp_path / "config.json").read_text())["model"]["num_layers"] == 2  # record untouched

  c = tiny_config(corpus)
  c.model.dropout = 0.1  # a change that keeps shapes: allowed only when asked for
  with pytest.raises(ConfigError, match="model.dropout"):
    train.train_and_evaluate(c, tmp_path, devices=ONE_DEVICE)
  c.train.allow_config_change = True
  c.optim.learning_rate = 1e-3
  train.train_and_evaluate(c, tmp_path, devices=ONE_DEVICE)
  assert json.loads((tmp_path / "config.json").read_text())["model"]["dropout"] == 0.1
  previous = list(tmp_path.glob("config.*.json"))
  assert len(previous) == 1 and json.loads(previous[0].read_text())["model"]["dropout"] == 0.0


def test_prompt_longer_than_the_context_is_rejected(corpus, tmp_path):
  c = tiny_config(corpus)
  c.train.sample_prompt = "x" * 40  # tiny's context is 32 tokens
  with pytest.raises(ConfigError, match="config.train.sample_prompt"):
    train.train_and_evaluate(c, tmp_path, devices=ONE_DEVICE)
  assert not (tmp_path / "checkpoints").exists()


def test_a_metrics_line_cut_short_by_a_kill_is_skipped(tmp_path):
  from lmjax.writers import read_metrics
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 2.0}\n{"step": 2, "spl')
  assert read_metrics(tmp_path) == [{"step": 1, "split": "train", "loss": 2.0}]


def test_a_corpus_of_one_enormous_line_trains(tmp_path):
  path = tmp_path / "one_line.txt"
  path.write_text("the same few words again " * 100_000)  # 2.5 MB, no newline at all
  c = tiny.get_config()
  c.data.source, c.data.paths, c.data.document_split = "files", str(path), "line"
  c.train.num_steps, c.train.eval_every, c.train.checkpoint_every, c.train.num_samples = 10, 10, 10, 0
  metrics = train.train_and_evaluate(c, tmp_path / "run", devices=ONE_DEVICE)
  assert np.isfinite(metrics["loss"]) and metrics["tokens"] > 0


def test_fields_added_after_a_run_started_count_as_their_defaults():
  from lmjax.config import base_config
  from lmjax.workdir import changed_fields
  old_record = base_config().to_dict()
  del old_record["model"]["num_kv_heads"]  # as if saved before the field existed
  assert changed_fields(old_record, base_config().to_dict()) == {}
  new = base_config().to_dict()
  new["model"]["num_kv_heads"] = 2
  assert changed_fields(old_record, new) == {"model.num_kv_heads": (0, 2)}
