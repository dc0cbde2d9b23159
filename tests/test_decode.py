"""Decoding over a KV cache: it equals full recomputation, beam search finds the best sequence a brute-force search
finds, sampling stays inside its top-k / top-p support, EOS ends rows, and the generation CLI writes sample sheets."""

import functools
import itertools
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ONE_DEVICE
from configs import tiny
from lmjax import decode, train
from lmjax.models import model_config
from lmjax.data.tokenizers import BOS_ID, EOS_ID, PAD_ID
from lmjax.models import build_model

REPO = Path(__file__).resolve().parents[1]
# A larger init than training's 0.02, so that random weights give well-separated logits that depend on the context.
CFG = model_config(vocab_size=40, num_layers=2, num_heads=4, d_model=32, mlp_dim=64, max_len=16, init_std=0.3)


def init(cfg):
  model = build_model(cfg)
  boxed = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
  params = jax.tree_util.tree_map(lambda x: getattr(x, "value", x), boxed,
                                  is_leaf=lambda x: hasattr(x, "value"))
  return model, params


# --- the cache equals full recomputation ------------------------------------------------------------------------

VARIANTS = {
    "learned": dict(position="learned"),
    "sinusoidal": dict(position="sinusoidal"),
    "none": dict(position="none"),
    "rope_gqa": dict(position="rope", num_kv_heads=2),
    "alibi_mqa": dict(position="alibi", num_kv_heads=1),
    "t5": dict(position="t5", relative_buckets=8, relative_max_distance=12),
    "jax_impl_gqa": dict(attention_impl="jax", num_kv_heads=2, position="rope"),
    "remat_postnorm_swiglu": dict(remat="full", pre_norm=False, norm="rmsnorm", activation="swiglu",
                                  tie_embeddings=False),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_cached_decoding_equals_full_recomputation(name):
  cfg = CFG.replace(**VARIANTS[name])
  model, params = init(cfg)
  decoder = decode.step_decoder(model)
  # Relative positions (and sinusoids) decode past max_len=16; learned positions stop there.
  new = 9 if cfg.position.kind == "learned" else 14
  prompts = [[1, 7, 8, 9, 10, 11], [1, 12, 13]]  # different lengths in one batch, right-padded
  prompt_BP = np.zeros((2, 6), np.int32)
  for b, p in enumerate(prompts):
    prompt_BP[b, :len(p)] = p
  lengths_B = np.asarray([len(p) for p in prompts], np.int32)
  greedy = jax.jit(functools.partial(decode.generate, decoder, max_new_tokens=new, temperature=0.0, eos_id=None))
  tokens_BT = np.asarray(greedy(params, prompt_BP, lengths_B, jax.random.PRNGKey(0)))

  # Step by step through the interface, to compare logits as well as tokens.
  prefill, step = jax.jit(decoder.prefill), jax.jit(decoder.step)
  cache = decoder.init_cache(params, 2, 6 + new)
  logits_BV, cache = prefill(params, cache, prompt_BP, lengths_B)
  stepped = [np.asarray(logits_BV)]
  for i in range(new - 1):
    logits_BV, cache = step(params, cache, jnp.asarray(tokens_BT[np.arange(2), lengths_B + i]), lengths_B + i)
    stepped.append(np.asarray(logits_BV))

  # Each row alone from position 0, no cache; what follows a row's end cannot change its logits (causality).
  full_BLV = np.asarray(model.apply({"params": params}, tokens_BT))
  for b, n in enumerate(lengths_B):
    row, full_LV = tokens_BT[b, :n + new], full_BLV[b, :n + new]
    assert (tokens_BT[b, n + new:] == PAD_ID).all()
    np.testing.assert_array_equal(row[:n], prompts[b])
    np.testing.assert_array_equal(np.asarray(decode.never_generated(jnp.asarray(full_LV[n - 1:-1]))).argmax(-1), row[n:])
    np.testing.assert_allclose(np.stack([s[b] for s in stepped]), full_LV[n - 1:-1], atol=2e-4, rtol=2e-4)


def test_cache_holds_kv_heads_only():
  model, _ = init(CFG.replace(num_kv_heads=2))
  cache = model.init_cache(3, 10)
  assert len(cache) == CFG.num_layers and cache[0].k_BKMd.shape == (3, 2, 10, CFG.d_model // CFG.num_heads)


def test_learned_positions_refuse_to_run_past_max_len():
  model, params = init(CFG)
  with pytest.raises(ValueError, match=r"prompt length 4 \+ max_new_tokens 13 = 17 exceeds model.max_len=16"):
    decode.generate(decode.step_decoder(model), params, jnp.ones((1, 4), jnp.int32), jnp.asarray([4]),
                    jax.random.PRNGKey(0), max_new_tokens=13)


def test_temperature_zero_is_greedy_and_beam_size_one_is_greedy():
  model, params = init(CFG.replace(position="rope"))
  decoder = decode.step_decoder(model)
  prompt_BP, lengths_B = jnp.asarray([[1, 5, 6, 7], [1, 9, 0, 0]]), jnp.asarray([4, 2])
  greedy = decode.generate(decoder, params, prompt_BP, lengths_B, jax.random.PRNGKey(0), max_new_tokens=10,
                           temperature=0.0)
  # Temperature 0 ignores top-k, top-p and the key.
  also = decode.generate(decoder, params, prompt_BP, lengths_B, jax.random.PRNGKey(5), max_new_tokens=10,
                         temperature=0.0, top_k=3, top_p=0.5)
  np.testing.assert_array_equal(greedy, also)
  beams_BWT, scores_BW = decode.beam_search(decoder, params, prompt_BP, lengths_B, beam_size=1, max_new_tokens=10,
                                            alpha=0.0)
  np.testing.assert_array_equal(beams_BWT[:, 0], greedy)
  assert scores_BW.shape == (2, 1)


# --- beam search against brute force ------------------------------------------------------------------------------

S = 9973  # hash buckets of the fake model's prefixes


def _extend(h, token):
  return (h * 31 + token + 1) % S


class HashDecoder:
  """A fake model whose next-token logits are a fixed random function of the whole prefix (hashed)."""
  max_len = None

  def __init__(self, table_SV):
    self.table_SV = jnp.asarray(table_SV)

  def prepare(self, params):
    return params

  def init_cache(self, params, batch, length, encoder_inputs=None):
    return {"h_B": jnp.zeros((batch,), jnp.int32)}

  def prefill(self, params, cache, tokens_BP, lengths_B):
    h_B = cache["h_B"]
    for t in range(tokens_BP.shape[1]):
      h_B = jnp.where(t < lengths_B, _extend(h_B, tokens_BP[:, t]), h_B)
    return self.table_SV[h_B], {"h_B": h_B}

  def step(self, params, cache, tokens_B, positions_B):
    h_B = _extend(cache["h_B"], tokens_B)
    return self.table_SV[h_B], {"h_B": h_B}


def log_softmax(x):
  x = x - x.max()
  return x - np.log(np.exp(x).sum())


def brute_force(table_SV, prompt, max_new, alpha):
  """Every continuation: ended by EOS at any length, or cut at max_new; sorted by penalized score. <pad> and <bos>
  are never generated, so no continuation holds them (their probability still counts in each softmax)."""
  V = table_SV.shape[1]
  h = 0
  for t in prompt:
    h = _extend(h, t)
  others = [v for v in range(V) if v not in (EOS_ID, PAD_ID, BOS_ID)]
  hypotheses = []
  for n in range(1, max_new + 1):
    bodies = itertools.product(others, repeat=n - 1)
    for body in bodies:
      for last in ([EOS_ID] + others if n == max_new else [EOS_ID]):
        seq, hh, logp = [*body, last], h, 0.0
        for token in seq:
          logp += log_softmax(table_SV[hh].astype(np.float64))[token]
          hh = _extend(hh, token)
        hypotheses.append((logp / ((5 + n) / 6) ** alpha, seq))
  return sorted(hypotheses, key=lambda x: -x[0])


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_beam_search_finds_the_best_sequence(alpha):
  V, N = 4, 4  # EOS_ID = 2 is one of the 4 tokens
  table_SV = np.random.default_rng(3).normal(size=(S, V)).astype(np.float32) * 2.0
  table_SV[:, EOS_ID] -= 1.0  # fewer early stops, so long and short hypotheses both compete
  prompts = [[1, 3, 0], [1]]
  for prompt in prompts:  # greedy takes token 3 first, a dead end; token 1 leads to far likelier continuations
    h = functools.reduce(_extend, prompt, 0)
    table_SV[h] = np.log([0.1, 0.4, 0.05, 0.45])
    table_SV[_extend(h, 3)] = np.log([0.26, 0.25, 0.24, 0.25])
    table_SV[_extend(h, 1)] = np.log([0.01, 0.01, 0.01, 0.97])
  prompt_BP, lengths_B = jnp.asarray([[1, 3, 0], [1, 0, 0]]), jnp.asarray([3, 1])
  decoder = HashDecoder(table_SV)
  # (V - 1)^(N - 1) = 27 unfinished hypotheses at most: 27 beams make the search exhaustive.
  search = jax.jit(functools.partial(decode.beam_search, decoder, max_new_tokens=N, alpha=alpha),
                   static_argnames="beam_size")
  beams_BWT, scores_BW = search(None, prompt_BP, lengths_B, beam_size=27)
  greedy_BT = decode.generate(decoder, None, prompt_BP, lengths_B, jax.random.PRNGKey(0), max_new_tokens=N,
                              temperature=0.0)
  greedy_is_worse = []
  for b, prompt in enumerate(prompts):
    ranked = brute_force(table_SV, prompt, N, alpha)
    n = len(prompt)
    for w in range(5):
      want_score, want_seq = ranked[w]
      np.testing.assert_allclose(float(scores_BW[b, w]), want_score, rtol=1e-5)
      got = np.asarray(beams_BWT[b, w])
      np.testing.assert_array_equal(got[:n], prompt)
      np.testing.assert_array_equal(got[n:n + len(want_seq)], want_seq)
      assert (got[n + len(want_seq):] == PAD_ID).all()
    greedy = [t for t in np.asarray(greedy_BT[b, n:n + N]).tolist()]
    greedy = greedy[:greedy.index(EOS_ID) + 1] if EOS_ID in greedy else greedy
    greedy_is_worse.append(ranked[0][1] != greedy)
  assert any(greedy_is_worse)  # the instance is one where greedy decoding is suboptimal
  # A narrow beam returns real hypotheses with their true scores, best first.
  narrow_BWT, narrow_BW = search(None, prompt_BP, lengths_B, beam_size=3)
  assert (np.diff(np.asarray(narrow_BW), axis=1) <= 0).all()
  for b, prompt in enumerate(prompts):
    scores = {tuple(seq): score for score, seq in brute_force(table_SV, prompt, N, alpha)}
    for w in range(3):
      seq = np.asarray(narrow_BWT[b, w, len(prompt):len(prompt) + N]).tolist()
      seq = seq[:seq.index(EOS_ID) + 1] if EOS_ID in seq else seq
      np.testing.assert_allclose(float(narrow_BW[b, w]), scores[tuple(seq)], rtol=1e-5)


# --- sampling -------------------------------------------------------------------------------------------------------

def draw(logits_V, n=4000, **settings):
  logits_NV = jnp.broadcast_to(jnp.asarray(logits_V, jnp.float32), (n, len(logits_V)))
  return np.asarray(jax.jit(functools.partial(decode.sample_logits, **settings))(logits_NV, jax.random.PRNGKey(1)))


def nucleus(probs, top_p):
  order = np.argsort(-probs)
  before = np.cumsum(probs[order]) - probs[order]
  return set(order[before < top_p].tolist())


LOGITS = np.log(np.array([0.02, 0.3, 0.05, 0.25, 0.01, 0.15, 0.12, 0.1]))


def test_top_k_samples_only_the_k_most_likely():
  got = draw(LOGITS, top_k=3)
  assert set(got.tolist()) == {1, 3, 5}


# Not 0.3 or 0.99: there the nucleus ends exactly on a sum of these probabilities, and which side of it the float
# sum lands on is rounding (it differs between eager and jitted code, and from torch).
@pytest.mark.parametrize("top_p", [0.29, 0.5, 0.8, 0.98])
def test_top_p_samples_only_the_nucleus(top_p):
  allowed = nucleus(np.exp(LOGITS), top_p)
  got = draw(LOGITS, top_p=top_p)
  assert set(got.tolist()) == allowed
  # ...in proportion to the renormalized probabilities.
  probs = np.exp(LOGITS)[sorted(allowed)]
  freq = np.bincount(got, minlength=len(LOGITS))[sorted(allowed)] / len(got)
  np.testing.assert_allclose(freq, probs / probs.sum(), atol=0.03)


def test_temperature_then_top_k_then_top_p():
  T, k, p = 0.5, 4, 0.7
  scaled = np.exp(LOGITS / T)
  top = np.argsort(-scaled)[:k]
  probs = np.zeros_like(scaled)
  probs[top] = scaled[top] / scaled[top].sum()
  got = draw(LOGITS, temperature=T, top_k=k, top_p=p)
  assert set(got.tolist()) == nucleus(probs, p)


# --- ties: the same tokens transformers' warpers keep -------------------------------------------------------------

def transformers_kept(logits_NV, top_k, top_p, stable):
  """Which tokens transformers' TopK then TopP warpers keep. stable=True makes their torch.sort stable: the ties'
  order is then defined (lower ids first in the ascending sort), and lmjax must keep exactly the same ids."""
  torch = pytest.importorskip("torch")
  warpers = pytest.importorskip("transformers.generation.logits_process")
  scores = torch.tensor(np.asarray(logits_NV, np.float32))
  real_sort = torch.sort
  if stable:
    torch.sort = lambda *args, **kwargs: real_sort(*args, **kwargs, stable=True)
  try:
    if top_k:
      scores = warpers.TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
      scores = warpers.TopPLogitsWarper(top_p)(None, scores)
  finally:
    torch.sort = real_sort
  return np.isfinite(scores.numpy())


def lmjax_kept(logits_NV, top_k, top_p):
  fn = jax.jit(functools.partial(decode.filter_logits, temperature=1.0, top_k=top_k, top_p=top_p))
  return np.isfinite(np.asarray(fn(jnp.asarray(logits_NV, jnp.float32))))


def test_top_k_then_top_p_with_a_tie_at_the_kth_logit():
  logits = np.array([[2.0, 1.0, 1.0, 1.0, 0.0, -1.0]])  # top-2 keeps 0 and all three tied 1.0s
  expected = transformers_kept(logits, 2, 0.6, stable=True)
  assert np.flatnonzero(expected[0]).tolist() == [0, 3]  # 0 holds 0.475 of the four; one tied token completes 0.6
  np.testing.assert_array_equal(lmjax_kept(logits, 2, 0.6), expected)


@pytest.mark.parametrize("top_k, top_p", [(50, 0.9), (0, 0.9), (0, 0.5), (1000, 0.5), (5, 0.3), (50, 1.0)])
def test_filters_keep_what_transformers_keeps_on_bfloat16_logits(top_k, top_p):
  """32 rows over GPT-2's 50,257 tokens, N(0, 3) rounded to bfloat16: ties everywhere, at the k-th logit and inside
  the nucleus. The kept ids equal those of transformers with a stable sort; with its default sort, which orders
  ties arbitrarily, transformers may pick other tied ids, but the same number of them with the same logits."""
  rng = np.random.default_rng(0)
  logits = np.asarray(jnp.asarray(rng.normal(0.0, 3.0, (32, 50257)), jnp.bfloat16).astype(jnp.float32))
  ours = lmjax_kept(logits, top_k, top_p)
  np.testing.assert_array_equal(ours, transformers_kept(logits, top_k, top_p, stable=True))
  default = transformers_kept(logits, top_k, top_p, stable=False)
  for row in range(len(logits)):
    np.testing.assert_array_equal(np.sort(logits[row][ours[row]]), np.sort(logits[row][default[row]]))


def test_tied_logits_are_sampled_only_from_the_kept_set():
  logits = np.log(np.array([0.3, 0.2, 0.2, 0.2, 0.1]))  # top_k=2 keeps 0 and the three tied 0.2s
  kept = np.flatnonzero(lmjax_kept(logits[None], 2, 0.5)[0]).tolist()
  assert kept == [0, 3]  # 0.3 of 0.9, then one tie (the highest id) reaches 0.5 of the renormalized mass
  assert set(draw(logits, top_k=2, top_p=0.5).tolist()) == set(kept)


# --- EOS ---------------------------------------------------------------------------------------------------------

class ScriptDecoder:
  """A fake model that says token 10 + position, except EOS at a per-row position (kept in the cache, so it
  follows the rows into beams)."""
  max_len = None

  def __init__(self, eos_at_B, vocab=64):
    self.eos_at_B, self.vocab = jnp.asarray(eos_at_B), vocab

  def prepare(self, params):
    return params

  def init_cache(self, params, batch, length, encoder_inputs=None):
    return {"eos_at_B": self.eos_at_B}

  def _logits(self, cache, next_position_B):
    token_B = jnp.where(next_position_B == cache["eos_at_B"], EOS_ID, 10 + next_position_B)
    return 100.0 * jax.nn.one_hot(token_B, self.vocab)

  def prefill(self, params, cache, tokens_BP, lengths_B):
    return self._logits(cache, lengths_B), cache

  def step(self, params, cache, tokens_B, positions_B):
    return self._logits(cache, positions_B + 1), cache


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_eos_ends_a_row_and_pads_the_rest(temperature):
  prompt_BP, lengths_B = jnp.asarray([[1, 4, 4], [1, 4, 0], [1, 0, 0]]), jnp.asarray([3, 2, 1])
  decoder = ScriptDecoder(eos_at_B=[5, 2, 99])  # row 1 stops at once, row 2 never
  got = np.asarray(decode.generate(decoder, None, prompt_BP, lengths_B, jax.random.PRNGKey(0), max_new_tokens=6,
                                   temperature=temperature))
  np.testing.assert_array_equal(got, [[1, 4, 4, 13, 14, EOS_ID, 0, 0, 0],
                                      [1, 4, EOS_ID, 0, 0, 0, 0, 0, 0],
                                      [1, 11, 12, 13, 14, 15, 16, 0, 0]])
  beams_BWT, _ = decode.beam_search(decoder, None, prompt_BP, lengths_B, beam_size=2, max_new_tokens=6)
  np.testing.assert_array_equal(beams_BWT[:, 0], got)


def test_generation_stops_once_every_row_has_ended():
  decoder = ScriptDecoder(eos_at_B=[2, 3])
  steps = []
  real_step = decoder.step

  def counting_step(params, cache, tokens_B, positions_B):
    jax.debug.callback(lambda: steps.append(1))  # runs once per executed step, inside the compiled loop
    return real_step(params, cache, tokens_B, positions_B)
  decoder.step = counting_step
  out = decode.generate(decoder, None, jnp.asarray([[1, 0], [1, 0]]), jnp.asarray([1, 1]), jax.random.PRNGKey(0),
                        max_new_tokens=50, temperature=0.0)
  jax.effects_barrier()
  np.testing.assert_array_equal(np.asarray(out)[:, :5], [[1, 11, EOS_ID, 0, 0], [1, 11, 12, EOS_ID, 0]])
  assert len(steps) == 2  # not the 49 that max_new_tokens=50 allows


# --- the CLI and the training sampler ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("generate")
  corpus = root / "fox.txt"
  corpus.write_text("".join(f"Document {i}: the quick brown fox jumps over the lazy dog {i % 7} times.\n\n"
                            for i in range(200)))
  c = tiny.get_config()
  c.data.source, c.data.paths = "files", str(corpus)
  c.train.num_steps, c.train.eval_every, c.train.checkpoint_every, c.train.log_every = 10, 10, 10, 5
  c.train.plot, c.train.tensorboard = False, False
  c.train.num_samples, c.train.sample_length = 2, 20  # fits the 32-token context: the cached sampler
  workdir = root / "run"
  train.train_and_evaluate(c, workdir, devices=ONE_DEVICE)
  return workdir


def run_cli(*flags):
  cmd = [sys.executable, "-m", "lmjax.generate", *flags]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)


def test_training_samples_use_the_cache(trained_run):
  text = (trained_run / "samples" / "step_000010.txt").read_text()
  assert text.count("--- sample") == 2


def test_cli_writes_a_sample_sheet(trained_run, tmp_path):
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("Document 1\nthe quick\n\nfox\n")
  result = run_cli(f"--workdir={trained_run}", f"--input={prompts}", "--num_samples=2", "--max_new_tokens=8",
                   "--temperature=0.8", "--top_k=20", "--top_p=0.9", "--seed=3", "--sheet=first")
  assert result.returncode == 0, result.stderr
  assert result.stdout.count("--- prompt") == 6
  records = [json.loads(line) for line in (trained_run / "samples" / "first.jsonl").read_text().splitlines()]
  assert [(r["prompt"], r["sample"]) for r in records] == [(p, j) for p in ("Document 1", "the quick", "fox")
                                                           for j in range(2)]
  assert all(r["checkpoint_step"] == 10 and r["settings"]["top_p"] == 0.9 for r in records)
  assert all(0 < len(r["text"]) <= 8 for r in records)
  sheet = (trained_run / "samples" / "first.md").read_text()
  assert "| top_k | 20 |" in sheet and sheet.count("**Sample") == 6 and "> the quick" in sheet


def test_cli_beam_search(trained_run):
  result = run_cli(f"--workdir={trained_run}", "--prompt=Document", "--prompt=the", "--beam_size=3",
                   "--num_samples=2", "--max_new_tokens=6", "--step=10")
  assert result.returncode == 0, result.stderr
  assert result.stdout.count(" score -") == 4


@pytest.mark.parametrize("flags, expected", [
    (["--top_p=1.5"], "--top_p=1.5 must be in (0, 1]"),
    (["--prompt=a", "--input=b.txt"], "not both"),
    (["--max_new_tokens=40"], "exceeds model.max_len=32"),
])
def test_cli_bad_input_is_one_line(trained_run, flags, expected):
  result = run_cli(f"--workdir={trained_run}", *flags)
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr
  line = result.stderr.strip().splitlines()[-1]
  assert line.startswith("error:") and expected in line


def test_cli_missing_workdir(tmp_path):
  result = run_cli(f"--workdir={tmp_path / 'nothing'}")
  assert result.returncode == 2
  assert result.stderr.strip().startswith(f"error: {tmp_path / 'nothing'}: no such directory")
