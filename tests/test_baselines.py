"""The baselines: Kneser-Ney n-grams against a dict-based reference, feed-forward and LSTM LMs against packing and
causality, and all three end to end through train_and_evaluate."""

import json
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from conftest import ONE_DEVICE
from configs import tiny
from lmjax import train
from lmjax.models import model_config
from lmjax.data.corpus import read_embedded_corpus
from lmjax.data.tokenizers import BOS_ID, EOS_ID
from lmjax.models import build_model, ngram
from lmjax.writers import read_metrics

V = 12  # ids 7..11 are text; 0..6 the special tokens


def random_documents(seed, num_docs=25, alphabet=(7, 8, 9, 10, 11)):
  rng = np.random.default_rng(seed)
  # A skewed, repetitive source, so that counts of 1, 2 and more all occur at every order.
  probs = np.array([0.4, 0.25, 0.15, 0.12, 0.08])[:len(alphabet)]
  return [[BOS_ID, *rng.choice(alphabet, rng.integers(1, 25), p=probs / probs.sum()), EOS_ID]
          for _ in range(num_docs)]


def fit(docs, order):
  tokens = np.concatenate([np.asarray(d) for d in docs])
  starts = np.cumsum([0] + [len(d) for d in docs[:-1]])
  return ngram.fit(tokens, starts, V, order)


# --- a dict-based reference: interpolated Kneser-Ney straight from its definition --------------------------------

class NaiveKneserNey:

  def __init__(self, docs, order):
    self.n = order
    self.raw = defaultdict(int)  # every n-gram up to the order, ending at a predicted token
    for doc in docs:
      for i in range(1, len(doc)):
        for m in range(1, order + 1):
          if i - m + 1 >= 0:
            self.raw[tuple(doc[i - m + 1:i + 1])] += 1
    self.left = defaultdict(set)
    for gram in self.raw:
      if len(gram) >= 2:
        self.left[gram[1:]].add(gram[0])
    self.by_context = defaultdict(dict)
    for gram in self.raw:
      self.by_context[gram[:-1]][gram[-1]] = self.count(gram)
    self.discount = {}
    for m in range(1, order + 1):
      counts = [self.count(g) for g in self.raw if len(g) == m]
      n1, n2 = counts.count(1), counts.count(2)
      self.discount[m] = float(np.clip(n1 / (n1 + 2 * n2), 0.05, 0.95)) if n1 + n2 else 0.5

  def count(self, gram):
    if len(gram) == self.n or (len(gram) >= 2 and gram[0] == BOS_ID):
      return self.raw[gram]
    return len(self.left[gram])

  def prob(self, w, h):
    lower = self.prob(w, h[1:]) if h else 1.0 / V
    seen = self.by_context.get(h, {})
    total = sum(seen.values())
    if not total:
      return lower
    d = self.discount[len(h) + 1]
    return max(seen.get(w, 0) - d, 0) / total + d * len(seen) / total * lower


def contexts_to_query(docs, order, rng):
  """Every context of every length that occurs in the documents, plus unseen and random ones."""
  seen = set()
  for doc in docs:
    for i in range(1, len(doc)):
      for k in range(0, order):
        if i - k >= 0:
          seen.add(tuple(doc[i - k:i]))
  unseen = [(3,), (7, 7, 7, 7, 7, 7, 7)[:order - 1], (BOS_ID, 11, 11, 11)[:order - 1], (0, 9), (9, 0)]
  randoms = [tuple(int(t) for t in rng.integers(0, V, rng.integers(0, order))) for _ in range(30)]
  return sorted(seen, key=lambda h: (len(h), h)) + [h[:order - 1] for h in unseen] + randoms


def distributions(model, contexts, order):
  C = max(order - 1, 1)
  context_QC = np.zeros((len(contexts), C), np.int64)
  for q, h in enumerate(contexts):
    if h:
      context_QC[q, C - len(h):] = h
  return model.distributions(context_QC, np.asarray([len(h) for h in contexts]))


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_kneser_ney_is_a_distribution_for_any_context(order):
  docs = random_documents(0)
  model = fit(docs, order)
  contexts = contexts_to_query(docs, order, np.random.default_rng(1))
  probs_QV = distributions(model, contexts, order)
  np.testing.assert_allclose(probs_QV.sum(-1), 1.0, atol=1e-12)
  assert (probs_QV > 0).all()
  assert {len(h) for h in contexts} == set(range(order))  # every order was asked, down to the empty context


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_kneser_ney_matches_naive_reference(order):
  docs = random_documents(2, num_docs=15)
  reference = NaiveKneserNey(docs, order)
  model = fit(docs, order)
  assert [model.tables[m].discount for m in range(1, order + 1)] == \
      pytest.approx([reference.discount[m] for m in range(1, order + 1)])
  contexts = contexts_to_query(docs, order, np.random.default_rng(3))
  got_QV = distributions(model, contexts, order)
  want_QV = np.array([[reference.prob(w, h) for w in range(V)] for h in contexts])
  np.testing.assert_allclose(got_QV, want_QV, rtol=1e-12, atol=1e-15)


def test_contexts_are_the_tokens_a_neural_model_sees():
  # Window of 6 inputs: document 1 is cut by the window start, document 2 starts at its <bos>.
  batch = {"inputs": np.array([[9, 10, EOS_ID, BOS_ID, 7, 8]]), "targets": np.array([[10, EOS_ID, BOS_ID, 7, 8, 9]]),
           "segment_ids": np.array([[1, 1, 1, 2, 2, 2]]), "loss_mask": np.array([[1, 1, 0, 1, 1, 1]], np.float32)}
  context_QC, lengths_Q, targets_Q = ngram.batch_queries(batch, order=3)
  np.testing.assert_array_equal(targets_Q, [10, EOS_ID, 7, 8, 9])
  np.testing.assert_array_equal(lengths_Q, [1, 2, 1, 2, 2])
  np.testing.assert_array_equal(context_QC, [[0, 9], [9, 10], [0, BOS_ID], [BOS_ID, 7], [7, 8]])


# --- neural baselines: packing and causality --------------------------------------------------------------------

def small_config(name, **overrides):
  return model_config(**{**dict(vocab_size=50, num_layers=2, num_heads=2, d_model=16, mlp_dim=32, max_len=16,
                               ffnn_context=4, name=name), **overrides})


def init(cfg, tokens_BL):
  model = build_model(cfg)
  return model, model.init(jax.random.PRNGKey(0), tokens_BL)["params"]


@pytest.mark.parametrize("name, tie", [("ffnn", True), ("ffnn", False), ("lstm", True), ("lstm", False)])
def test_parameters_use_known_logical_axes(name, tie):
  model = build_model(small_config(name, tie_embeddings=tie, activation="swiglu" if name == "ffnn" else "gelu"))
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32)))["params"]
  specs = jax.tree_util.tree_leaves(nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, tuple))
  assert specs and all(set(spec) <= {"vocab", "embed", "mlp", None} for spec in specs)
  assert all(len(spec) == len(set(spec) - {None}) + spec.count(None) for spec in specs)  # no name twice


@pytest.mark.parametrize("name", ["ffnn", "lstm"])
def test_packed_documents_are_independent(name):
  rng = np.random.default_rng(4)
  doc_a, doc_b = rng.integers(0, 50, 6), rng.integers(0, 50, 9)
  model, params = init(small_config(name), jnp.zeros((1, 15), jnp.int32))
  packed = model.apply({"params": params}, jnp.asarray([np.r_[doc_a, doc_b]], jnp.int32),
                       positions_BL=jnp.asarray([np.r_[np.arange(6), np.arange(9)]], jnp.int32),
                       segment_ids_BL=jnp.asarray([[1] * 6 + [2] * 9], jnp.int32))
  alone_a = model.apply({"params": params}, jnp.asarray([doc_a], jnp.int32))
  alone_b = model.apply({"params": params}, jnp.asarray([doc_b], jnp.int32))
  np.testing.assert_allclose(np.asarray(packed[0, :6]), np.asarray(alone_a[0]), atol=1e-6)
  np.testing.assert_allclose(np.asarray(packed[0, 6:]), np.asarray(alone_b[0]), atol=1e-6)
  # Not vacuous: without the segment ids, document b does see document a.
  unpacked = model.apply({"params": params}, jnp.asarray([np.r_[doc_a, doc_b]], jnp.int32))
  assert not np.allclose(np.asarray(unpacked[0, 6:]), np.asarray(alone_b[0]), atol=1e-6)


@pytest.mark.parametrize("name", ["ffnn", "lstm"])
def test_causal(name):
  rng = np.random.default_rng(5)
  tokens = jnp.asarray(rng.integers(0, 50, (2, 10)), jnp.int32)
  model, params = init(small_config(name, tie_embeddings=False), tokens)
  changed = tokens.at[:, 6:].set((tokens[:, 6:] + 1) % 50)
  before = np.asarray(model.apply({"params": params}, tokens))
  after = np.asarray(model.apply({"params": params}, changed))
  assert before.shape == (2, 10, 50) and before.dtype == np.float32
  np.testing.assert_array_equal(before[:, :6], after[:, :6])
  assert not np.allclose(before[:, 6:], after[:, 6:])


def test_ffnn_sees_exactly_its_window():
  rng = np.random.default_rng(6)
  tokens = jnp.asarray(rng.integers(0, 50, (1, 12)), jnp.int32)
  model, params = init(small_config("ffnn", ffnn_context=3), tokens)
  before = np.asarray(model.apply({"params": params}, tokens))
  after = np.asarray(model.apply({"params": params}, tokens.at[0, 4].set((tokens[0, 4] + 1) % 50)))
  changed = ~np.isclose(before[0], after[0], atol=1e-7).all(-1)
  np.testing.assert_array_equal(np.flatnonzero(changed), [4, 5, 6])


# --- end to end ---------------------------------------------------------------------------------------------------

TEXT = "".join(f"Document {i}: the quick brown fox jumps over the lazy dog {i % 7} times.\n"
               f"It was {'warm' if i % 2 else 'cold'} and the fox was {'happy' if i % 3 else 'tired'}.\n\n"
               for i in range(300))


@pytest.fixture(scope="module")
def fox_corpus(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus") / "fox.txt"
  path.write_text(TEXT)
  return path


@pytest.fixture(scope="module")
def bible_corpus(tmp_path_factory):
  """The first 40 chapters of the embedded corpus: enough for an n-gram to beat unigrams, small to count."""
  path = tmp_path_factory.mktemp("corpus") / "kjv_head.txt"
  path.write_text("\n\n".join(read_embedded_corpus().split("\n\n")[:40]))
  return path


def files_config(corpus, name):
  c = tiny.get_config()
  c.data.source = "files"
  c.data.paths = str(corpus)
  c.model.name = name
  c.train.num_samples = 1
  return c


@pytest.mark.parametrize("name", ["ffnn", "lstm"])
def test_neural_baselines_train(fox_corpus, tmp_path, name):
  config = files_config(fox_corpus, name)
  config.model.dropout = 0.1
  config.model.init_std = 1.0  # as in configs/ffnn.py and configs/lstm.py
  config.optim.learning_rate = 1e-2
  config.train.update(num_steps=40, log_every=10, eval_every=40, checkpoint_every=40)
  final = train.train_and_evaluate(config, tmp_path, devices=ONE_DEVICE)
  records = read_metrics(tmp_path)
  losses = [r["loss"] for r in records if r["split"] == "train"]
  assert losses[-1] < 0.7 * losses[0]
  assert final["loss"] < np.log(72) and final["bits_per_char"] > 0
  assert json.loads((tmp_path / "config.json").read_text())["model"]["name"] == name
  assert (tmp_path / "samples" / "step_000040.txt").read_text().strip()


def test_ngram_end_to_end_and_higher_orders_help(bible_corpus, tmp_path):
  results = {}
  for order in (1, 3, 5):
    config = files_config(bible_corpus, "ngram")
    config.model.ngram_order = order
    config.train.eval_batches = 0  # the whole validation split
    workdir = tmp_path / str(order)
    results[order] = train.train_and_evaluate(config, workdir, devices=ONE_DEVICE)
    records = read_metrics(workdir)
    assert [(r["step"], r["split"]) for r in records] == [(1, "train"), (1, "eval")]
    assert records[1]["loss"] == pytest.approx(results[order]["loss"])
    assert json.loads((workdir / "config.json").read_text())["model"]["ngram_order"] == order
    assert (workdir / "samples" / "step_000001.txt").read_text().strip()
  for metrics in results.values():
    assert metrics["perplexity"] == pytest.approx(np.exp(metrics["loss"]))
    # One character per token, except <eos> targets, which stand for no text.
    assert metrics["loss"] / np.log(2) < metrics["bits_per_char"] < 1.01 * metrics["loss"] / np.log(2)
  assert results[5]["loss"] < results[3]["loss"] < 0.75 * results[1]["loss"]
  assert results[5]["accuracy"] > results[3]["accuracy"] > results[1]["accuracy"]
  # Every validation target is scored once, as in the neural models' evaluation.
  assert results[5]["tokens"] == results[1]["tokens"] > 10_000


def test_ngram_rerun_replaces_its_record(fox_corpus, tmp_path):
  config = files_config(fox_corpus, "ngram")
  config.model.ngram_order = 3
  first = train.train_and_evaluate(config, tmp_path, devices=ONE_DEVICE)
  second = train.train_and_evaluate(config, tmp_path, devices=ONE_DEVICE)
  assert first == second
  assert len(read_metrics(tmp_path)) == 2
