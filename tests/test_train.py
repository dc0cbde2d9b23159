"""End to end on CPU: the loss falls, a stopped run resumes to the same parameters, outputs land in the workdir."""

import json

import jax
import numpy as np
import pytest

from conftest import ONE_DEVICE
from configs import tiny
from lmjax import train
from lmjax.checkpoint import load_saved_state
from lmjax.writers import read_metrics

TEXT = "".join(f"Document {i}: the quick brown fox jumps over the lazy dog {i % 7} times.\n"
               f"It was {'warm' if i % 2 else 'cold'} and the fox was {'happy' if i % 3 else 'tired'}.\n\n"
               for i in range(300))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus") / "fox.txt"
  path.write_text(TEXT)
  return path


def tiny_config(corpus, **train_overrides):
  c = tiny.get_config()
  c.data.source = "files"
  c.data.paths = str(corpus)
  c.data.document_split = "paragraph"
  for key, value in train_overrides.items():
    c.train[key] = value
  return c


def params_of(workdir):
  return load_saved_state(workdir / "checkpoints")["params"]


def test_loss_falls_and_outputs_are_written(corpus, tmp_path):
  config = tiny_config(corpus, num_steps=60, eval_every=30, checkpoint_every=30)
  final = train.train_and_evaluate(config, tmp_path, devices=ONE_DEVICE)
  records = read_metrics(tmp_path)
  train_losses = [r["loss"] for r in records if r["split"] == "train"]
  evals = [r for r in records if r["split"] == "eval"]
  assert train_losses[-1] < 0.7 * train_losses[0]
  assert evals[-1]["loss"] < evals[0]["loss"] < np.log(72)  # below a uniform guess over the vocabulary
  assert final["perplexity"] == pytest.approx(np.exp(final["loss"]), rel=1e-6)
  assert 0 < final["bits_per_byte"] == pytest.approx(final["bits_per_char"])  # ASCII corpus: a char is a byte
  assert json.loads((tmp_path / "config.json").read_text())["model"]["num_layers"] == 2
  assert (tmp_path / "samples" / "step_000060.txt").read_text().strip()
  assert (tmp_path / "loss.png").stat().st_size > 1000
  assert list((tmp_path / "tensorboard").iterdir())


@pytest.mark.parametrize("steps_per_call", [1, 5])
def test_resume_after_stop_gives_identical_parameters(corpus, tmp_path, steps_per_call):
  config = tiny_config(corpus, num_steps=30, checkpoint_every=10, eval_every=30, log_every=5,
                       steps_per_call=steps_per_call)
  config.model.dropout = 0.1  # the RNG must be restored too
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  train.train_and_evaluate(config, straight, devices=ONE_DEVICE)
  train.train_and_evaluate(config, resumed, stop_at=10, devices=ONE_DEVICE)
  assert load_saved_state(resumed / "checkpoints")["step"] == 10
  train.train_and_evaluate(config, resumed, stop_at=20, devices=ONE_DEVICE)
  train.train_and_evaluate(config, resumed, devices=ONE_DEVICE)
  a, b = params_of(straight), params_of(resumed)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)
  steps = [r["step"] for r in read_metrics(resumed) if r["split"] == "train"]
  assert steps == sorted(set(steps))  # no duplicate history after resuming


def test_fused_steps_match_single_steps(corpus, tmp_path):
  results = []
  for k in (1, 5):
    config = tiny_config(corpus, num_steps=10, checkpoint_every=10, eval_every=10, log_every=5, steps_per_call=k)
    train.train_and_evaluate(config, tmp_path / str(k), devices=ONE_DEVICE)
    results.append(params_of(tmp_path / str(k)))
  for x, y in zip(jax.tree_util.tree_leaves(results[0]), jax.tree_util.tree_leaves(results[1])):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
