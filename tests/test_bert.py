"""BERT pretraining: sentence pairs and masking, the bidirectional encoder, the mlm task through the trainer."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from conftest import ONE_DEVICE, train_in_subprocess
from configs import bert_base, bert_tiny
from lmjax import prepare, programs, sharding, train
from lmjax.checkpoint import load_saved_state
from lmjax.config import ConfigError, base_config
from lmjax.config_validation import validate
from lmjax.models import model_config
from lmjax.data import mlm_pairs
from lmjax.data.tokenizers import CLS_ID, MASK_ID, NUM_SPECIAL, PAD_ID, SEP_ID, UNK_ID
from lmjax.models import build_model
from lmjax.models.encoder import Bert, Encoder
from lmjax.state import create_train_state
from lmjax.tasks.causal_lm import CausalLmTask
from lmjax.tasks.mlm import MlmTask
from lmjax.tasks.base import VocabInfo
from lmjax.workdir import changed_fields
from lmjax.writers import read_metrics

VOCAB = 50


def synthetic_split(num_docs=30, seed=0):
  """Documents of 1-12 sentences of 1-25 random text ids, with a few <unk>s inside the text."""
  rng = np.random.default_rng(seed)
  sentences_per_doc = rng.integers(1, 13, num_docs)
  lengths = rng.integers(1, 26, sentences_per_doc.sum())
  tokens = rng.integers(NUM_SPECIAL, VOCAB, lengths.sum()).astype(np.uint16)
  tokens[rng.random(tokens.size) < 0.02] = UNK_ID
  return mlm_pairs.SentenceSplit(tokens, np.concatenate([[0], np.cumsum(lengths)]),
                                 np.concatenate([[0], np.cumsum(sentences_per_doc)]), "synthetic")


def examples(split, settings, n, seed=0):
  return [mlm_pairs.make_example(split, settings, seed, i) for i in range(n)]


def test_sentences_split_at_end_punctuation_before_a_capital_or_digit_and_at_newlines():
  text = "In the beginning. And God said? Let there be light! 3 days passed.\nSee 3.5 cubits. e.g. this\n\n  Last"
  assert mlm_pairs.split_sentences(text) == [
      "In the beginning.", "And God said?", "Let there be light!", "3 days passed.", "See 3.5 cubits. e.g. this",
      "Last"]


@pytest.mark.parametrize("mask_prob, mask_token_prob, random_token_prob", [(0.15, 0.8, 0.1), (0.3, 0.5, 0.3)])
def test_masking_statistics(mask_prob, mask_token_prob, random_token_prob):
  split = synthetic_split()
  s = mlm_pairs.MlmSettings(seq_len=64, vocab_size=VOCAB, mask_prob=mask_prob, mask_token_prob=mask_token_prob,
                            random_token_prob=random_token_prob)
  eligible = chosen = masked = kept = 0
  for row, pair in examples(split, s, 1500):
    k = int(row["mlm_weights"].sum())
    positions, targets = row["mlm_positions"][:k], row["mlm_targets"][:k]
    original = row["inputs"].copy()
    original[positions] = targets
    text = np.concatenate([split.tokens[pair.a[0]:pair.a[1]], split.tokens[pair.b[0]:pair.b[1]]])
    n = int((text >= NUM_SPECIAL).sum())
    assert k == s.num_to_mask(n)
    assert (targets >= NUM_SPECIAL).all()  # never [CLS], [SEP], padding or <unk>
    assert original[0] == CLS_ID and (original[row["segment_ids"] == 0] == PAD_ID).all()
    assert (original == SEP_ID).sum() == 2 and (original == UNK_ID).sum() == (text == UNK_ID).sum()
    assert (row["mlm_weights"][k:] == 0).all() and (row["mlm_targets"][k:] == 0).all()
    eligible, chosen = eligible + n, chosen + k
    masked += int((row["inputs"][positions] == MASK_ID).sum())
    kept += int((row["inputs"][positions] == targets).sum())
  assert chosen / eligible == pytest.approx(mask_prob, abs=0.01)
  assert masked / chosen == pytest.approx(mask_token_prob, abs=0.02)
  # A random replacement draws the original token again 1 time in (VOCAB - NUM_SPECIAL).
  chance_same = random_token_prob / (VOCAB - NUM_SPECIAL)
  keep_prob = 1 - mask_token_prob - random_token_prob
  assert kept / chosen == pytest.approx(keep_prob + chance_same, abs=0.02)
  assert (chosen - masked - kept) / chosen == pytest.approx(random_token_prob - chance_same, abs=0.02)


def test_max_predictions_caps_the_masked_tokens():
  s = mlm_pairs.MlmSettings(seq_len=64, vocab_size=VOCAB, max_predictions=4)
  assert s.num_predictions == 4
  assert all(row["mlm_weights"].sum() <= 4 for row, _ in examples(synthetic_split(), s, 50))


def test_next_sentence_pairs():
  split = synthetic_split()
  s = mlm_pairs.MlmSettings(seq_len=64, vocab_size=VOCAB)
  rows = examples(split, s, 1000)
  assert np.mean([pair.is_random for _, pair in rows]) == pytest.approx(0.5, abs=0.05)
  sentence_starts = set(split.sentence_starts.tolist())
  for row, pair in rows:
    assert row["nsp_labels"] == int(pair.is_random)
    a, b = split.tokens[pair.a[0]:pair.a[1]], split.tokens[pair.b[0]:pair.b[1]]
    assert 1 <= a.size and 1 <= b.size and a.size + b.size <= s.max_tokens
    # The unmasked input is [CLS] A [SEP] B [SEP], B's part (with its [SEP]) of token type 1.
    original = row["inputs"].copy()
    k = int(row["mlm_weights"].sum())
    original[row["mlm_positions"][:k]] = row["mlm_targets"][:k]
    length = a.size + b.size + 3
    np.testing.assert_array_equal(original[:length], np.concatenate([[CLS_ID], a, [SEP_ID], b, [SEP_ID]]))
    np.testing.assert_array_equal(row["token_types"][:length], [0] * (a.size + 2) + [1] * (b.size + 1))
    np.testing.assert_array_equal(row["segment_ids"], np.arange(s.seq_len) < length)
    assert pair.b[0] in sentence_starts  # B starts at a sentence boundary (only A is trimmed at its front)
    if pair.is_random:
      assert pair.b_doc != pair.a_doc
    else:  # the true continuation: B starts where A ends, in the same document
      assert pair.b[0] == pair.a[1] and pair.b_doc == pair.a_doc


def test_without_nsp_an_example_is_one_segment_of_contiguous_text():
  split = synthetic_split()
  s = mlm_pairs.MlmSettings(seq_len=32, vocab_size=VOCAB, nsp=False)
  for row, pair in examples(split, s, 100):
    a = split.tokens[pair.a[0]:pair.a[1]]
    original = row["inputs"].copy()
    k = int(row["mlm_weights"].sum())
    original[row["mlm_positions"][:k]] = row["mlm_targets"][:k]
    np.testing.assert_array_equal(original[:a.size + 2], np.concatenate([[CLS_ID], a, [SEP_ID]]))
    assert 1 <= a.size <= s.max_tokens and pair.b[0] == pair.b[1]
    assert row["nsp_labels"] == 0 and not row["token_types"].any() and row["segment_ids"].sum() == a.size + 2


def test_truncation_trims_the_longer_side_one_token_at_a_time():
  rng = np.random.default_rng(0)
  for a, b, limit in rng.integers(1, 40, (300, 3)):
    limit = max(int(limit), 2)
    x, y = int(a), int(b)
    while x + y > limit:
      if x > y:
        x -= 1
      else:
        y -= 1
    assert mlm_pairs._truncate(int(a), int(b), limit) == (x, y)


def test_train_iterator_state_is_a_counter_and_resumes_exactly():
  split, s = synthetic_split(), mlm_pairs.MlmSettings(seq_len=32, vocab_size=VOCAB)
  first = iter(mlm_pairs.make_train_dataset(split, s, 4, seed=3))
  for _ in range(3):
    next(first)
  state = first.get_state()
  assert json.loads(json.dumps(state)) == {"next_index": 3}
  expected = [next(first) for _ in range(2)]
  resumed = iter(mlm_pairs.make_train_dataset(split, s, 4, seed=3))
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  # Process shards together are the global batch.
  whole = next(iter(mlm_pairs.make_train_dataset(split, s, 4, seed=3)))
  parts = [next(iter(mlm_pairs.make_train_dataset(split, s, 4, seed=3, process_index=p, process_count=2)))
           for p in range(2)]
  for key in whole:
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_eval_batches_are_fixed():
  split, s = synthetic_split(), mlm_pairs.MlmSettings(seq_len=32, vocab_size=VOCAB)
  a, b = (mlm_pairs.make_eval_batches(split, s, 4, 2, seed=0) for _ in range(2))
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_one_document_cannot_make_random_pairs():
  one_doc = mlm_pairs.SentenceSplit(np.arange(7, 27, dtype=np.uint16), np.arange(0, 21, 5), np.asarray([0, 4]))
  with pytest.raises(mlm_pairs.DataError, match="mlm.nsp=False"):
    mlm_pairs.make_train_dataset(one_doc, mlm_pairs.MlmSettings(seq_len=16, vocab_size=VOCAB), 2, seed=0)


def encoder_config(**overrides):
  fields = dict(vocab_size=VOCAB, num_layers=2, num_heads=2, d_model=16, mlp_dim=32, max_len=16, pre_norm=False,
                name="bert")
  return model_config(**{**fields, **overrides})


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "none", "rope", "alibi", "t5"])
def test_encoder_is_bidirectional(position):
  """Position 1's output depends on the token at position 6, and the other way round: the gradient through each
  token's embedding row (ids used nowhere else) is nonzero."""
  model = Encoder(encoder_config(position=position, num_layers=1))
  tokens_BL = jnp.full((1, 8), 10, jnp.int32).at[0, 6].set(20).at[0, 1].set(21)
  params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), tokens_BL))["params"]
  w_D = jax.random.normal(jax.random.PRNGKey(1), (16,))  # a plain sum of a LayerNorm output is constant
  outputs = lambda p: model.apply({"params": p}, tokens_BL)[0, jnp.asarray([1, 6])] @ w_D
  rows_2VD = jax.jit(jax.jacrev(outputs))(params)["embed"]["embedding"]
  assert jnp.abs(rows_2VD[0, 20]).max() > 1e-6  # earlier output, later token
  assert jnp.abs(rows_2VD[1, 21]).max() > 1e-6  # later output, earlier token


@pytest.mark.parametrize("pre_norm", [False, True])
def test_padding_is_masked(pre_norm):
  model = Bert(encoder_config(pre_norm=pre_norm))
  rng = np.random.default_rng(0)
  tokens = rng.integers(NUM_SPECIAL, VOCAB, (2, 12)).astype(np.int32)
  segment_ids = (np.arange(12)[None] < np.asarray([[9], [5]])).astype(np.int32)
  token_types = (np.arange(12)[None] >= 3).astype(np.int32) * segment_ids
  positions = np.asarray([[1, 4], [2, 3]], np.int32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), tokens, token_types, segment_ids, positions)
  apply = jax.jit(model.apply)
  before = apply(params, tokens, token_types, segment_ids, positions)
  changed = np.where(segment_ids == 0, rng.integers(NUM_SPECIAL, VOCAB, tokens.shape), tokens).astype(np.int32)
  after = apply(params, changed, np.where(segment_ids == 0, 1, token_types), segment_ids, positions)
  assert not np.array_equal(changed, tokens)
  for key in ("mlm_logits", "nsp_logits"):
    np.testing.assert_allclose(after[key], before[key], atol=1e-6)


def test_bert_base_has_110m_parameters():
  config = bert_base.get_config()
  validate(config)
  model = build_model(model_config(config, 30522))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32)))
  num_params = sum(x.size for x in jax.tree_util.tree_leaves(shapes))
  assert 109_000_000 < num_params < 111_000_000  # BERT-base with its pretraining heads: 110.1M


def one_line_error(config):
  with pytest.raises(ConfigError) as e:
    validate(config)
  assert "\n" not in str(e.value)
  return str(e.value)


def mlm_base():
  c = base_config()
  c.task, c.model.name = "mlm", "bert"
  return c


@pytest.mark.parametrize("task, model, field", [("mlm", "gpt", "model.name='gpt'"),
                                                ("causal_lm", "bert", "model.name='bert'"),
                                                ("mlm", "lstm", "model.name='lstm'")])
def test_task_and_model_must_match(task, model, field):
  c = base_config()
  c.task, c.model.name = task, model
  message = one_line_error(c)
  assert f"config.{field}" in message and f"task={task!r}" in message


@pytest.mark.parametrize("field, value, expected", [
    ("mlm.mask_prob", 0.0, "config.mlm.mask_prob=0.0"),
    ("mlm.random_token_prob", 0.3, "config.mlm.random_token_prob=0.3"),
    ("mlm.max_predictions", -1, "config.mlm.max_predictions=-1"),
    ("mlm.short_seq_prob", 1.5, "config.mlm.short_seq_prob=1.5"),
    ("data.seq_len", 4, "config.data.seq_len=4"),
    ("model.type_vocab_size", 1, "config.model.type_vocab_size=1"),
    ("train.extra_eval_seq_lens", "128", "config.train.extra_eval_seq_lens='128'"),
])
def test_bad_mlm_fields_fail_in_one_line(field, value, expected):
  c = mlm_base()
  section, name = field.split(".")
  c[section][name] = value
  assert expected in one_line_error(c)


def test_fields_added_for_bert_count_as_defaults_when_resuming():
  saved = base_config().to_dict()
  del saved["mlm"], saved["model"]["type_vocab_size"]  # a config.json written before they existed
  assert changed_fields(saved, base_config().to_dict()) == {}


def small_mlm_config(**model):
  c = mlm_base()
  c.data.seq_len = 32
  c.model.update(num_layers=1, num_heads=2, d_model=32, mlp_dim=64, max_len=32, pre_norm=False)
  c.model.update(model)
  c.train.update(batch_size=8, num_steps=10)
  c.optim.update(learning_rate=1e-2, warmup_steps=0)
  return c


@pytest.mark.parametrize("task_class, config", [(CausalLmTask, base_config()), (MlmTask, small_mlm_config())])
def test_abstract_batch_matches_the_real_batches(corpus, tmp_path, task_class, config):
  config.data.update(source="files", paths=str(corpus), seq_len=32)
  config.train.batch_size, config.train.eval_batches = 4, 1
  tokenizer = prepare.prepare_tokenizer(config, tmp_path)
  data = task_class.prepare_data(config, tokenizer, tmp_path / "data")
  task = task_class.create(config, VocabInfo(tokenizer.vocab_size))
  want = {k: (s.shape, s.dtype) for k, s in task.abstract_batch(4).items()}
  for batch in (next(iter(data.train_dataset(0, 1))), data.eval_sets(0, 1)["eval"][0]):
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == want


def test_mlm_train_step_compiles_from_shapes_alone():
  """What lmjax.aot and the benchmarks do: lower the step from the task's abstract state and batch."""
  config = small_mlm_config(remat="full", attention_impl="jax")
  progs = programs.build_without_data(config, VOCAB, devices=jax.devices()[:1])
  with sharding.activate(progs.mesh, progs.rules):
    lowered = progs.train_fn.lower(progs.abstract_state(config), progs.abstract_train_batches(config))
  assert "dot_general" in lowered.as_text()


def synthetic_batch(config, vocab, seed=0):
  split = synthetic_split(seed=seed)
  s = mlm_pairs.MlmSettings.from_config(config, vocab)
  return mlm_pairs.example_batch(split, s, seed, np.arange(config.train.batch_size))


def mlm_losses(config, devices, calls=2):
  progs = programs.build_without_data(config, VOCAB, devices=devices)
  with sharding.activate(progs.mesh, progs.rules):
    state = create_train_state(progs.model, progs.optimizer, config.seed, progs.task.init_args(),
                               progs.state_shardings)
    batch = {k: v[None] for k, v in synthetic_batch(config, VOCAB).items()}
    out = []
    for _ in range(calls):
      state, metrics = progs.train_fn(state, sharding.global_batch(batch, progs.mesh, progs.train_batch_spec))
      out.append({k: float(v[0]) for k, v in jax.device_get(metrics).items()})
  return out


def test_mlm_step_on_a_mesh_and_with_microbatches_matches_one_device():
  one = mlm_losses(small_mlm_config(), jax.devices()[:1])
  config = small_mlm_config()
  config.mesh.update(data=2, fsdp=2, tensor=2)
  meshed = mlm_losses(config, jax.devices())
  config = small_mlm_config()
  config.train.microbatches = 2
  micro = mlm_losses(config, jax.devices()[:1])
  for a, b in zip(one, meshed):
    for key in ("loss", "mlm_loss", "nsp_loss", "grad_norm"):
      assert b[key] == pytest.approx(a[key], rel=1e-5)
  assert one[1]["loss"] < one[0]["loss"]
  # Microbatches weight by masked tokens: the MLM term is the large batch's exactly (see lmjax/tasks/mlm.py).
  assert micro[0]["mlm_loss"] == pytest.approx(one[0]["mlm_loss"], rel=1e-5)
  assert micro[0]["nsp_loss"] == pytest.approx(one[0]["nsp_loss"], rel=0.05)


def language_corpus(num_docs=48, sentences=12, seed=0):
  """Documents in four made-up languages (words over disjoint letters; document i in language i % 4): letters
  are predictable from the rest of their word, and a random B is told apart by its language 3 times in 4."""
  rng = np.random.default_rng(seed)
  alphabets = ["abcdef", "ghijkl", "mnopqr", "stuvwx"]
  languages = [["".join(rng.choice(list(a), size=rng.integers(3, 6))) for _ in range(8)] for a in alphabets]
  docs = []
  for i in range(num_docs):
    sentences_ = [" ".join(rng.choice(languages[i % 4], size=rng.integers(3, 7))).capitalize() + "."
                  for _ in range(sentences)]
    docs.append(" ".join(sentences_))
  return "\n\n".join(docs) + "\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus") / "languages.txt"
  path.write_text(language_corpus())
  return path


def tiny_mlm_config(corpus, **train_overrides):
  c = bert_tiny.get_config()
  c.data.update(source="files", paths=str(corpus), validation_fraction=0.25, seq_len=32,
                data_dir=str(corpus.parent / "data"))  # prepared once for the module's runs
  c.model.update(num_layers=2, num_heads=2, d_model=64, mlp_dim=128, max_len=32)
  c.optim.update(learning_rate=5e-3, warmup_steps=20)
  c.train.update(batch_size=16, num_steps=600, steps_per_call=10, log_every=50, eval_every=300,
                 checkpoint_every=300, eval_batches=8, tensorboard=False)
  c.train.update(train_overrides)
  return c


def test_mlm_and_nsp_learn_through_train_and_evaluate(corpus, tmp_path):
  """The bar is twice the accuracy of always predicting the most frequent masked token (a space, ~19% here):
  a model that only learned token frequencies sits at that baseline, as this one does for its first ~100 steps;
  it reaches ~2.6x by step 600. NSP: chance is 0.5, the language cue allows ~0.88, it reaches ~0.9."""
  config = tiny_mlm_config(corpus)
  final = train_in_subprocess(config, tmp_path)
  tokenizer = prepare.prepare_tokenizer(config, tmp_path)
  data = MlmTask.prepare_data(config, tokenizer, prepare.data_dir_of(config, tmp_path))
  targets = np.concatenate([b["mlm_targets"][b["mlm_weights"] > 0] for b in data.eval_sets(0, 1)["eval"]])
  majority = np.bincount(targets).max() / targets.size
  assert final["mlm_accuracy"] > 2 * majority
  assert final["nsp_accuracy"] > 0.7
  assert final["loss"] == pytest.approx(final["mlm_loss"] + final["nsp_loss"])
  assert final["mlm_perplexity"] == pytest.approx(np.exp(final["mlm_loss"]), rel=1e-6)
  records = read_metrics(tmp_path)
  train_rows = [r for r in records if r["split"] == "train"]
  assert {"mlm_loss", "nsp_loss", "grad_norm"} <= set(train_rows[-1])
  assert train_rows[-1]["mlm_loss"] < train_rows[0]["mlm_loss"]
  assert not (tmp_path / "samples").exists()  # text samples are for causal language models
  assert (tmp_path / "loss.png").exists()


def test_mlm_run_resumes_to_identical_parameters(corpus, tmp_path):
  config = tiny_mlm_config(corpus, num_steps=6, steps_per_call=1, checkpoint_every=3, eval_every=6, log_every=3,
                           eval_batches=1, async_checkpoints=False, plot=False)
  config.model.update(num_layers=1, d_model=32, mlp_dim=64, dropout=0.1)  # the RNG must be restored too
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  train.train_and_evaluate(config, straight, devices=ONE_DEVICE)
  train.train_and_evaluate(config, resumed, stop_at=3, devices=ONE_DEVICE)
  train.train_and_evaluate(config, resumed, devices=ONE_DEVICE)
  a, b = (load_saved_state(Path(w) / "checkpoints")["params"] for w in (straight, resumed))
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)
