"""Every config file builds a valid model; bad fields fail before anything compiles, in one line."""

import importlib.util
from pathlib import Path

import jax
import ml_collections
import jax.numpy as jnp
import pytest

from lmjax.config import ConfigError, base_config

from lmjax.config_validation import validate
from lmjax.models import model_config
from lmjax.models import build_model

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIG_FILES = sorted(p for p in CONFIG_DIR.glob("*.py") if p.stem != "__init__")


def load_config(path: Path, arg: str | None = None):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


def test_there_are_configs():
  names = {p.stem for p in CONFIG_FILES}
  assert {"default", "tiny", "nanogpt_cpu", "gpt2_small"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_config_file_validates_and_builds(path):
  config = load_config(path)
  validate(config)
  if config.model.name == "ngram":
    return  # counts, not a Flax module: its own tests build it
  vocab = config.tokenizer.vocab_size or 300
  model = build_model(model_config(config, vocab))
  tokens = jnp.zeros((1, config.data.seq_len), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens))  # no memory for big models
  num_params = sum(x.size for x in jax.tree_util.tree_leaves(shapes))
  assert num_params > 0


def test_gpt2_small_has_124m_parameters():
  config = load_config(CONFIG_DIR / "gpt2_small.py")
  model = build_model(model_config(config, 50257))
  tokens = jnp.zeros((1, 8), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens))
  num_params = sum(x.size for x in jax.tree_util.tree_leaves(shapes))
  assert 123_000_000 < num_params < 126_000_000


def one_line_error(config) -> str:
  with pytest.raises(ConfigError) as e:
    validate(config)
  message = str(e.value)
  assert "\n" not in message
  return message


def test_heads_must_divide_width():
  c = base_config()
  c.model.d_model, c.model.num_heads = 100, 3
  message = one_line_error(c)
  assert "config.model.d_model=100" in message and "num_heads=3" in message


def test_unknown_tokenizer_is_rejected():
  c = base_config()
  c.tokenizer.kind = "wordpiece2"
  message = one_line_error(c)
  assert "config.tokenizer.kind='wordpiece2'" in message and "char" in message and "bpe" in message


def test_unknown_field_is_rejected():
  c = base_config()
  c.model.unlock()
  c.model.num_layer = 6  # typo of num_layers
  message = one_line_error(c)
  assert "config.model.num_layer" in message and "num_layers" in message


def test_wrong_type_is_rejected():
  # A config file may build its ConfigDict from a plain dict, so types are checked again at validation.
  raw = base_config().to_dict()
  raw["train"]["batch_size"] = 12.5
  c = ml_collections.ConfigDict(raw)
  assert "config.train.batch_size" in one_line_error(c)


def test_sequence_longer_than_learned_positions_is_rejected():
  c = base_config()
  c.data.seq_len, c.model.max_len = 512, 256
  message = one_line_error(c)
  assert "config.data.seq_len=512" in message and "max_len" in message


def test_files_source_needs_paths():
  c = base_config()
  c.data.source = "files"
  assert "config.data.paths" in one_line_error(c)


def test_sentencepiece_needs_vocab_size():
  c = base_config()
  c.tokenizer.kind = "bpe"
  assert "config.tokenizer.vocab_size" in one_line_error(c)


@pytest.mark.parametrize("section, field, value", [
    ("model", "dropout", 1.5), ("model", "num_layers", 0), ("optim", "learning_rate", -1e-3), ("optim", "b2", 1.0),
    ("optim", "schedule", "exponential"), ("optim", "name", "sgd"), ("data", "validation_fraction", 0.0),
    ("data", "sampling", "shuffle"), ("train", "max_nonfinite_steps", 0), ("train", "log_every", 7),
    ("model", "position", "rope3"),
])
def test_out_of_range_or_unknown_values_name_their_field(section, field, value):
  c = base_config()
  c.train.steps_per_call = 5  # makes log_every=7 invalid (not a multiple)
  c[section][field] = value
  message = one_line_error(c)
  assert f"config.{section}.{field}={value!r}" in message
