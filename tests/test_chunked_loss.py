"""train.loss_chunk_tokens: the vocabulary projection and the losses over it, a chunk of tokens at a time with
recomputation in the backward pass, equal the whole-logits computation in loss and gradients for every task with a
vocabulary head and for distillation's KL terms, and need far less memory."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from lmjax.config import ConfigError, base_config

from lmjax.config_validation import validate
from lmjax.distill import losses
from lmjax.models.vocab_head import Hidden, VocabHead, token_stats
from lmjax.registry import TASKS
from lmjax.tasks.base import VocabInfo

V = 61  # a vocabulary no chunk divides


def hidden(seed, shape=(3, 13), D=16, bias=True):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(*shape, D)), jnp.float32)
  head = VocabHead(jnp.asarray(rng.normal(size=(V, D)), jnp.float32) * 0.3,
                   jnp.asarray(rng.normal(size=(V,)), jnp.float32) if bias else None)
  return Hidden(x, head)


def close_trees(a, b, rtol=2e-5, atol=2e-6):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("chunk", [1, 5, 16, 39, 100])
def test_token_stats_equal_whole_logits_in_value_and_gradient(chunk):
  h = hidden(0)
  targets = jnp.asarray(np.random.default_rng(1).integers(0, V, (3, 13)), jnp.int32)
  weights = jnp.asarray(np.random.default_rng(2).random((3, 13)), jnp.float32)

  def loss(h, chunk):
    nll, hit = token_stats(lambda logits, t: (optax.softmax_cross_entropy_with_integer_labels(logits, t),
                                              logits.argmax(-1) == t), [h], [targets], chunk=chunk)
    return (nll * weights).sum(), hit

  (want, want_hit), want_grad = jax.value_and_grad(loss, has_aux=True)(h, 0)
  (got, got_hit), got_grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(h, chunk)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_array_equal(got_hit, want_hit)
  close_trees(got_grad, want_grad)


def test_plain_logits_are_passed_through_unchanged():
  logits = hidden(3).logits()
  targets = jnp.zeros((3, 13), jnp.int32)
  got = token_stats(optax.softmax_cross_entropy_with_integer_labels, [logits], [targets], chunk=4)
  np.testing.assert_array_equal(got, optax.softmax_cross_entropy_with_integer_labels(logits, targets))


def test_distillation_kl_terms_chunked_equal_whole():
  student, teacher = hidden(4), hidden(5, bias=False)
  rng = np.random.default_rng(6)
  values = jnp.asarray(rng.normal(size=(3, 13, 4)), jnp.float32)
  indices = jnp.asarray(rng.integers(0, V, (3, 13, 4)), jnp.int32)
  for chunk in (0, 6):
    def kd(student):
      soft = token_stats(lambda s, t: losses.soft_kl(s, t, 2.0), [student, jax.lax.stop_gradient(teacher)],
                         chunk=chunk)
      top = token_stats(lambda s, v, i: losses.top_k_kl(s, v, i, 2.0), [student], [values, indices], chunk=chunk)
      return soft.sum() + top.sum()
    value, grad = jax.jit(jax.value_and_grad(kd))(student)
    if chunk == 0:
      want_value, want_grad = value, grad
  np.testing.assert_allclose(value, want_value, rtol=1e-6)
  close_trees(grad, want_grad)


def test_chunked_loss_never_holds_the_whole_logits():
  """The compiled gradient's temporaries: a [4096, 50304] float32 logits array is 786 MiB; in chunks of 512 the
  head needs an eighth of that."""
  N, D, vocab = 4096, 64, 50304
  x = jax.ShapeDtypeStruct((N, D), jnp.float32)
  w = jax.ShapeDtypeStruct((vocab, D), jnp.float32)
  t = jax.ShapeDtypeStruct((N,), jnp.int32)

  def temp_bytes(chunk):
    def loss(x, w, t):
      return token_stats(optax.softmax_cross_entropy_with_integer_labels, [Hidden(x, VocabHead(w))], [t],
                         chunk=chunk).sum()
    return jax.jit(jax.grad(loss, (0, 1))).lower(x, w, t).compile().memory_analysis().temp_size_in_bytes

  whole, chunked = temp_bytes(0), temp_bytes(512)
  assert whole > N * vocab * 4  # the logits (and their gradient) exist whole
  assert chunked < whole / 4


# --- the tasks ------------------------------------------------------------------------------------------------------

def task_and_batch(task_name, model_fields=None):
  c = base_config()
  c.task = task_name
  c.model.update(num_layers=1, num_heads=2, d_model=16, mlp_dim=32, max_len=16, tie_embeddings=False)
  c.data.seq_len = 16
  rng = np.random.default_rng(7)
  if task_name == "mlm":
    c.model.update(name="bert", pre_norm=False, tie_embeddings=True)
  if task_name == "seq2seq":
    c.model.name = "encdec"
    c.data.source, c.data.paths = "files", "unused.tsv"
    c.seq2seq.update(source_max_len=12, target_max_len=10, label_smoothing=0.1)
  c.model.update(model_fields or {})
  tasks = {}
  for chunk in (0, 7):
    c.train.loss_chunk_tokens = chunk
    validate(c)
    tasks[chunk] = TASKS.get(task_name).create(c, VocabInfo(V))
  batch = {}
  for key, s in tasks[0].abstract_batch(4).items():
    if "segment" in key or key in ("loss_mask", "mlm_weights"):
      batch[key] = (rng.random(s.shape) < 0.85).astype(s.dtype)
    elif key == "mlm_positions":
      batch[key] = rng.integers(0, 16, s.shape).astype(s.dtype)
    elif key in ("nsp_labels", "token_types"):
      batch[key] = rng.integers(0, 2, s.shape).astype(s.dtype)
    elif "positions" in key:
      batch[key] = np.broadcast_to(np.arange(s.shape[-1]), s.shape).astype(s.dtype)
    else:  # ids from 7 up: none of lmjax's special tokens, which model.logit_mask may give no probability
      batch[key] = rng.integers(7, V, s.shape).astype(s.dtype)
  if task_name == "seq2seq":
    batch["index"] = np.arange(4, dtype=np.int32)
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  params = nn.meta.unbox(tasks[0].model.init(jax.random.PRNGKey(0), *tasks[0].init_args())["params"])
  return tasks, batch, params


@pytest.mark.parametrize("task_name,model_fields", [
    ("causal_lm", None), ("mlm", None), ("seq2seq", None),
    # what imported checkpoints set: masked special tokens (GPT-2, Llama, BERT) and T5's rescaled decoder output
    ("causal_lm", {"logit_mask": "pad,bos,unk", "scale_embeddings": True}),
    ("mlm", {"logit_mask": "bos,eos"}),
    ("seq2seq", {"logit_mask": "bos,unk", "scale_decoder_output": True, "tie_embeddings": True}),
])
def test_task_loss_gradients_and_eval_sums_are_unchanged_by_chunking(task_name, model_fields):
  tasks, batch, params = task_and_batch(task_name, model_fields)
  rng = jax.random.PRNGKey(1)
  results = {}
  for chunk, task in tasks.items():
    (loss, aux), grads = jax.jit(jax.value_and_grad(task.loss, has_aux=True))(params, batch, rng)
    sums = jax.jit(task.eval_sums)(params, batch)
    results[chunk] = (loss, grads, sums)
  (want_loss, want_grads, want_sums), (loss, grads, sums) = results[0], results[7]
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  close_trees(grads, want_grads, rtol=1e-4, atol=1e-6)
  close_trees(sums, want_sums, rtol=1e-5)


@pytest.mark.parametrize("fields,words", [
    ({"model.name": "lstm"}, "model.name='lstm' computes its logits whole"),
    ({"task": "classification", "model.name": "bert"}, "task='classification' has no vocabulary head"),
])
def test_chunking_where_there_is_no_vocabulary_head_is_refused(fields, words):
  c = base_config()
  c.train.loss_chunk_tokens = 128
  for key, value in fields.items():
    if "." in key:
      section, name = key.split(".")
      c[section][name] = value
    else:
      c[key] = value
  if c.task == "classification":
    c.finetune.update(labels="neg,pos", train_file="train.tsv", eval_file="eval.tsv")
  with pytest.raises(ConfigError, match="config.train.loss_chunk_tokens=128") as error:
    validate(c)
  assert words in str(error.value) and "\n" not in str(error.value)
