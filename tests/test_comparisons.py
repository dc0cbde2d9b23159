"""What a comparison between runs rests on: each family's training FLOPs (against counts from the model's
dimensions), a test split next to the validation one, the record of what ran (config.json's provenance), the W&B
tracker (offline), and the decoder-only sequence-to-sequence task the summarization study trains."""

import json
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from configs import tiny
from conftest import ONE_DEVICE
from lmjax import provenance, train, workdir as workdir_lib
from lmjax.config import ConfigError, base_config
from lmjax.config_validation import validate
from lmjax.data import sources
from lmjax.data.tokenizers import BOS_ID, EOS_ID, SEP_ID, CharTokenizer
from lmjax.models import model_config
from lmjax.tasks.seq2seq_lm import encode_rows

REPO = Path(__file__).resolve().parents[1]
V = 50


def params_of(name: str, *inputs, **fields):
  cfg = model_config(name=name, vocab_size=V, **fields)
  shapes = jax.eval_shape(lambda: cfg.build().init(jax.random.PRNGKey(0), *inputs))["params"]
  return cfg, meta.unbox(shapes)


# --- training FLOPs, counted from the dimensions ------------------------------------------------------------------

def transformer_layer(D, F, cross=False):
  """Weights and biases of one pre-norm layer: attention (q, k, v, out), MLP, norms (scale and bias each)."""
  attention = 4 * D * D + 4 * D
  return attention * (2 if cross else 1) + 2 * D * F + F + D + (3 if cross else 2) * 2 * D


@pytest.mark.parametrize("fields", [{}, {"tie_embeddings": False, "position": "rope"}, {"position": "alibi"}])
def test_gpt_flops_are_6n_plus_attention_with_lookups_left_out(fields):
  L, D, F, T = 2, 32, 64, 16
  cfg, params = params_of("gpt", jnp.zeros((1, T), jnp.int32), num_layers=L, d_model=D, mlp_dim=F, num_heads=4,
                          max_len=T, **fields)
  n = L * transformer_layer(D, F) + 2 * D + V * D  # the token table: the tied output layer, or the lm_head
  assert cfg.flops_per_token(params, T) == 6 * n + 12 * L * D * T


def test_baselines_count_6n_and_the_ngram_counts_nothing():
  D, C, F = 16, 4, 24
  cfg, params = params_of("lstm", jnp.zeros((1, 8), jnp.int32), num_layers=2, d_model=D)
  assert cfg.flops_per_token(params, 8) == 6 * (2 * (8 * D * D + 4 * D) + V * D)  # tied: the table is the output
  cfg, params = params_of("ffnn", jnp.zeros((1, 8), jnp.int32), num_layers=1, d_model=D, mlp_dim=F,
                          ffnn_context=C, tie_embeddings=False)
  assert cfg.flops_per_token(params, 8) == 6 * (C * D * F + F + F * V + V)  # untied: the table is a lookup
  assert model_config(name="ngram", vocab_size=V).flops_per_token({}, 8) is None
  assert model_config(name="bert", vocab_size=V).flops_per_token({}, 8) is None


def test_encoder_decoder_counts_each_side_at_its_own_length():
  L, D, F, S, T = 2, 32, 64, 12, 5
  x = jnp.zeros((1, 8), jnp.int32)
  cfg, params = params_of("encdec", x, x, num_layers=L, d_model=D, mlp_dim=F, num_heads=4, max_len=16)
  kv = 2 * D * D + 2 * D  # cross-attention keys and values read the S encoder outputs
  encoder = L * transformer_layer(D, F) + 2 * D + L * kv
  decoder = L * transformer_layer(D, F, cross=True) - L * kv + 2 * D + V * D
  expected = 6 * (encoder * S + decoder * T) + 12 * D * (L * S * S + L * (T * T + T * S))
  assert cfg.flops_per_pair(params, S, T) == expected and cfg.flops_per_token(params, T) is None


# --- a run's records: test split, FLOPs, provenance, trackers -------------------------------------------------------

@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
  """A tiny GPT with a test split, TensorBoard and W&B (offline) trackers; then the same command again."""
  workdir = tmp_path_factory.mktemp("tracked") / "run"
  c = tiny.get_config()
  c.data.eval_split, c.data.test_split = "validation[:50%]", "validation[50%:]"
  c.train.num_steps, c.train.eval_every, c.train.log_every, c.train.checkpoint_every = 4, 4, 2, 4
  c.train.num_samples, c.train.plot, c.train.eval_batches = 0, False, 1
  c.train.trackers = "tensorboard,wandb"
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("WANDB_DIR", str(workdir))
    train.train_and_evaluate(c, workdir, devices=ONE_DEVICE)
    first_id = (workdir / "wandb_run_id").read_text()
    # finished: evaluates, writes config.json again, resumes the W&B run
    train.train_and_evaluate(c, workdir, devices=ONE_DEVICE)
  return c, workdir, first_id


def records(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_the_test_split_is_scored_beside_validation_on_other_text(tracked_run):
  _, workdir, _ = tracked_run
  by_split = {r["split"]: r for r in records(workdir) if r["step"] == 4 and r["split"] != "train"}
  assert set(by_split) == {"eval", "test"} and by_split["eval"]["loss"] != by_split["test"]["loss"]


@pytest.mark.slow
def test_training_flops_are_recorded_from_the_model_family(tracked_run):
  c, workdir, _ = tracked_run
  first = records(workdir)[0]
  per_token = 6 * (first["num_params"] - 32 * 32) + 12 * 2 * 32 * 32  # all but the 32 x 32 position table
  assert first["flops_per_step"] == per_token * c.train.batch_size * c.data.seq_len


@pytest.mark.slow
def test_config_json_records_what_ran_and_a_rerun_is_not_a_config_change(tracked_run):
  _, workdir, _ = tracked_run
  saved = json.loads((workdir / "config.json").read_text())
  record = saved[provenance.KEY]
  head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
  assert record["git_commit"] == head and isinstance(record["git_dirty"], bool)
  assert record["jax_version"] == jax.__version__
  assert record["device_count"] == len(ONE_DEVICE) < jax.device_count()  # the devices the run spans
  assert record["platform"] == "cpu" and record["lmjax_version"]
  assert not list(workdir.glob("config.*.json"))  # the rerun changed no field: nothing was set aside
  assert workdir_lib.changed_fields(saved, provenance.config_fields(saved)) == {}


@pytest.mark.slow
def test_wandb_records_the_config_commit_and_metrics_offline(tracked_run):
  _, workdir, first_id = tracked_run
  assert (workdir / "wandb_run_id").read_text() == first_id  # the rerun continued the same W&B run
  runs = sorted((workdir / "wandb").glob(f"offline-run-*-{first_id.strip()}/run-*.wandb"))
  assert len(runs) == 2  # the first run and its resumption, under one id
  data = runs[0].read_bytes()
  commit = json.loads((workdir / "config.json").read_text())[provenance.KEY]["git_commit"]
  assert commit.encode() in data and b"eval/loss" in data and b"test/loss" in data
  assert b'"num_layers":2' in data and list((workdir / "tensorboard").iterdir())


def test_test_split_and_tracker_settings_fail_in_one_line():
  c = tiny.get_config()
  c.data.test_split = c.data.eval_split
  with pytest.raises(ConfigError, match="a test split must hold other text"):
    validate(c)
  c.data.test_split, c.task = "validation[50%:]", "mlm"
  with pytest.raises(ConfigError, match="task='mlm' does not read it"):
    validate(c)
  c = tiny.get_config()
  c.train.trackers = "tensorboard,neptune"
  with pytest.raises(ConfigError, match="train.trackers='tensorboard,neptune' is invalid"):
    validate(c)


def test_sliced_splits_keep_separate_token_caches(tmp_path):
  data = base_config().data
  first, second = (sources.open_split(data, s, tmp_path).fingerprint for s in ("validation[:50%]", "validation[50%:]"))
  assert first != second


# --- sequence to sequence with a GPT --------------------------------------------------------------------------------

def test_rows_are_source_separator_target_and_only_the_target_is_scored():
  tok = CharTokenizer("abcdxyz")
  rows = encode_rows([("abcd", "xyz")], tok, source_len=4, target_len=3)
  src, tgt = tok.encode("abc").tolist(), tok.encode("xy").tolist()  # cut to 3 + <sep> and 2 + <eos>
  sequence = [BOS_ID, *src, SEP_ID, *tgt, EOS_ID]
  n = len(sequence) - 1
  assert rows["inputs"][0, :n].tolist() == sequence[:-1] and rows["targets"][0, :n].tolist() == sequence[1:]
  assert rows["loss_mask"][0].tolist() == [0, 0, 0, 0, 1, 1, 1][:rows["loss_mask"].shape[1]]
  scored = [t for t, m in zip(rows["targets"][0].tolist(), rows["loss_mask"][0]) if m]
  assert scored == [*tgt, EOS_ID]  # the summary and its end, nothing of the source
  assert rows["prompt"][0, :rows["prompt_length"][0]].tolist() == [BOS_ID, *src, SEP_ID]


@pytest.mark.slow
def test_a_gpt_learns_a_transduction_as_seq2seq_lm(tmp_path):
  rng = np.random.default_rng(0)
  letters = np.asarray(list("abcdef"))
  lines = ["".join(rng.choice(letters, rng.integers(3, 7))) for _ in range(600)]
  (tmp_path / "pairs.tsv").write_text("".join(f"{s}\t{s.upper()}\n" for s in lines))
  from configs import seq2seq_tiny
  c = seq2seq_tiny.get_config(str(tmp_path / "pairs.tsv"))
  c.task, c.model.name, c.model.max_len = "seq2seq_lm", "gpt", 24
  c.seq2seq.source_max_len, c.seq2seq.target_max_len, c.seq2seq.metrics = 10, 10, "rouge,chrf"
  c.seq2seq.eval_decode_examples, c.train.num_steps, c.train.eval_every = 16, 300, 150
  c.train.checkpoint_every, c.train.steps_per_call = 300, 50
  train.train_and_evaluate(c, tmp_path / "run", devices=ONE_DEVICE)
  evals = [r for r in records(tmp_path / "run") if r["split"] == "eval"]
  assert evals[-1]["nll"] < 0.5 * evals[0]["nll"] and evals[-1]["decoded"] == 16
  assert evals[-1]["chrf"] > 50, evals[-1]
  assert [r for r in records(tmp_path / "run") if r["split"] == "train"][0]["flops_per_step"] > 0
