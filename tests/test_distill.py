"""Knowledge distillation: the loss against a numpy reference, the frozen teacher, convergence toward the teacher,
tokenizer checks, exact resume, offline top-k logits, and a distilled BERT.

Training runs happen in one single-device subprocess per test (see `run_jobs`): several tiny runs each, since 8
simulated devices on a 2-core machine only make every step slower.
"""

import json
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

from conftest import ONE_DEVICE, single_device_env  # noqa: E402  (first: it puts the repo on sys.path)
from configs import bert_tiny, tiny  # noqa: E402
from lmjax import prepare, programs, sharding, train  # noqa: E402
from lmjax.checkpoint import load_saved_state  # noqa: E402
from lmjax.config import ConfigError, base_config, flatten  # noqa: E402
from lmjax.config_validation import validate  # noqa: E402
from lmjax.distill import layers as layer_init  # noqa: E402
from lmjax.distill import losses  # noqa: E402
from lmjax.distill.heads import CausalLmHeads  # noqa: E402
from lmjax.distill.teacher import Teacher  # noqa: E402
from lmjax.state import create_train_state  # noqa: E402
from lmjax.tasks.distill import DistillLmTask, Settings  # noqa: E402
from lmjax.writers import read_metrics  # noqa: E402

TEXT = "".join(f"Document {i}: the quick brown fox jumps over the lazy dog {i % 7} times.\n"
               f"It was {'warm' if i % 2 else 'cold'} and the fox was {'happy' if i % 3 else 'tired'}.\n\n"
               for i in range(300))


# --- numpy references -------------------------------------------------------------------------------------------

def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_kl(teacher, student, T):
  log_p, log_q = np_log_softmax(teacher / T), np_log_softmax(student / T)
  return (np.exp(log_p) * (log_p - log_q)).sum(-1)


class FixedLogits:
  """A stand-in model whose output is its 'params': the loss then sees exactly these logits."""

  def apply(self, variables, *args, **kwargs):
    return variables["params"]["logits"]


def test_loss_equals_a_numpy_hand_computation():
  rng = np.random.default_rng(0)
  B, L, V, T, alpha = 2, 5, 7, 2.5, 0.3
  student, teacher = rng.normal(size=(2, B, L, V)).astype(np.float32) * 3
  targets = rng.integers(0, V, (B, L))
  mask = (rng.random((B, L)) < 0.7).astype(np.float32)
  config = base_config()
  config.task = "distill_lm"
  config.distill.update(teacher_workdir="unused", alpha=alpha, temperature=T)
  run = types.SimpleNamespace(config=config)
  task = DistillLmTask(base=types.SimpleNamespace(model=FixedLogits()), model=FixedLogits(),
                       settings=Settings.from_config(config), heads=CausalLmHeads(),
                       teacher=Teacher(run=run, step=0, model=FixedLogits(), abstract=None, axes=None,
                                       heads=CausalLmHeads()))
  batch = {"inputs": np.zeros((B, L), np.int32), "targets": targets, "positions": np.zeros((B, L), np.int32),
           "segment_ids": np.ones((B, L), np.int32), "loss_mask": mask}
  loss, aux = task.loss({"logits": student}, batch, jax.random.PRNGKey(0), {"logits": teacher})

  kl = (np_kl(teacher, student, T) * mask).sum() / mask.sum()
  ce = (-np.take_along_axis(np_log_softmax(student), targets[..., None], -1)[..., 0] * mask).sum() / mask.sum()
  assert float(aux["kd_loss"]) == pytest.approx(kl, rel=1e-5)
  assert float(aux["ce_loss"]) == pytest.approx(ce, rel=1e-5)
  assert float(loss) == pytest.approx(alpha * T * T * kl + (1 - alpha) * ce, rel=1e-5)
  assert float(aux["tokens"]) == mask.sum()


def test_top_k_kl_is_the_renormalized_teacher_against_the_full_student():
  rng = np.random.default_rng(1)
  student, teacher = rng.normal(size=(2, 4, 11)).astype(np.float32) * 2
  T, k = 1.5, 4
  indices = np.argsort(-teacher, -1)[:, :k]
  values = np.take_along_axis(teacher, indices, -1)
  p = np.exp(np_log_softmax(values / T))
  log_q = np.take_along_axis(np_log_softmax(student / T), indices, -1)
  want = (p * (np.log(p) - log_q)).sum(-1)
  got = losses.top_k_kl(jnp.asarray(student), jnp.asarray(values, jnp.float16), jnp.asarray(indices, jnp.uint16), T)
  np.testing.assert_allclose(got, want, rtol=2e-3)  # the values went through float16, as stored
  # With every logit kept it is the exact KL.
  full = np.argsort(-teacher, -1)
  exact = losses.top_k_kl(jnp.asarray(student), jnp.asarray(np.take_along_axis(teacher, full, -1)), full, T)
  np.testing.assert_allclose(exact, np_kl(teacher, student, T), rtol=1e-5)


def test_attention_and_hidden_terms():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(2, 2, 3, 3, 5))
  logits[..., 4] = -1e30  # a masked key: probability 0 in both, contributes nothing
  student, teacher = np.exp(np_log_softmax(logits))
  want = np.where(teacher > 0, teacher * (np.log(np.maximum(teacher, 1e-30)) - np.log(np.maximum(student, 1e-30))),
                  0).sum(-1).mean(1)
  np.testing.assert_allclose(losses.attention_kl(student, teacher), want, rtol=1e-5)
  assert np.isfinite(np.asarray(losses.attention_kl(student, teacher))).all()
  # Different head counts: head-averaged maps are compared.
  fewer = student[:, :1]
  np.testing.assert_allclose(losses.attention_kl(fewer, teacher)[0], np_kl_rows(teacher.mean(1), fewer.mean(1))[0],
                             rtol=1e-5)
  h_s, h_t = rng.normal(size=(2, 2, 3, 4))
  np.testing.assert_allclose(losses.hidden_mse(h_s, h_t), ((h_s - h_t) ** 2).mean(-1), rtol=1e-6)


def np_kl_rows(p, q):
  return np.where(p > 0, p * (np.log(np.maximum(p, 1e-30)) - np.log(np.maximum(q, 1e-30))), 0).sum(-1)


def test_student_layers_start_from_the_chosen_teacher_layers():
  teacher = {"embed": {"embedding": np.full((5, 4), 9.0)}, "ln_final": {"scale": np.ones(4)},
             **{f"layer_{i}": {"mlp": {"wi": {"kernel": np.full((4, 8), float(i))}}} for i in range(4)}}
  student = {"embed": {"embedding": np.zeros((5, 4))}, "ln_final": {"scale": np.zeros(4)},
             "distill_projection_0": np.full((4, 6), 3.0),
             **{f"layer_{i}": {"mlp": {"wi": {"kernel": np.zeros((4, 8))}}} for i in range(2)}}
  layer_init.check_shapes(student, teacher, [0, 2])
  out = layer_init.from_teacher(student, teacher, [0, 2])
  assert out["layer_0"]["mlp"]["wi"]["kernel"][0, 0] == 0 and out["layer_1"]["mlp"]["wi"]["kernel"][0, 0] == 2
  np.testing.assert_array_equal(out["embed"]["embedding"], teacher["embed"]["embedding"])
  np.testing.assert_array_equal(out["distill_projection_0"], student["distill_projection_0"])  # kept
  student["layer_1"]["mlp"]["wi"]["kernel"] = np.zeros((4, 16))
  with pytest.raises(ConfigError, match="layer_1/mlp/wi/kernel"):
    layer_init.check_shapes(student, teacher, [0, 2])


@pytest.mark.parametrize("field, value, expected", [
    ("alpha", 1.5, "config.distill.alpha=1.5"),
    ("temperature", 0.0, "config.distill.temperature=0.0"),
    ("layer_pairs", "1-0", "config.distill.layer_pairs='1-0'"),
    ("layer_pairs", "0:7", "student block 7"),
    ("init_student_layers", "0,2,4", "config.distill.init_student_layers='0,2,4'"),
    ("hidden_weight", 1.0, "needs layer pairs"),
])
def test_bad_distill_fields_fail_in_one_line(field, value, expected):
  c = base_config()
  c.task = "distill_lm"
  c.distill.teacher_workdir = "runs/teacher"
  c.distill[field] = value
  with pytest.raises(ConfigError) as e:
    validate(c)
  assert expected in str(e.value) and "\n" not in str(e.value)


# --- training runs --------------------------------------------------------------------------------------------

def run_jobs(*jobs):
  """Runs (config, workdir[, stop_at]) jobs one after another in one single-device subprocess; their final metrics."""
  payload = [{"config": c.to_dict(), "workdir": str(w), "stop_at": rest[0] if rest else None} for c, w, *rest in jobs]
  # Runs of one config (a stopped and a resumed run) compile the same programs: a persistent cache compiles once.
  cache = Path(jobs[0][1]).parent / "jax_cache"
  out = subprocess.run([sys.executable, __file__, json.dumps(payload), str(cache)], env=single_device_env(), cwd=REPO,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def lm_config(corpus, **train):
  c = tiny.get_config()
  c.data.update(source="files", paths=str(corpus), data_dir=str(corpus.parent / "data"))
  c.train.update(num_steps=60, eval_every=60, checkpoint_every=60, log_every=10, num_samples=0, plot=False,
                 tensorboard=False)
  c.train.update(train)
  return c


def student_config(corpus, teacher, **train):
  c = lm_config(corpus, **train)
  c.task = "distill_lm"
  c.distill.update(teacher_workdir=str(teacher), alpha=1.0, temperature=1.0)
  return c


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus") / "fox.txt"
  path.write_text(TEXT)
  return path


@pytest.fixture(scope="module")
def teacher(corpus):
  workdir = corpus.parent / "teacher"
  run_jobs((lm_config(corpus, num_steps=80, eval_every=80, checkpoint_every=80), workdir))
  return workdir


def train_rows(workdir):
  return [r for r in read_metrics(workdir) if r["split"] == "train"]


def test_student_converges_to_the_teacher_and_the_teacher_stays_frozen(corpus, teacher, tmp_path):
  """alpha = 1: the labels play no part, and a student of the teacher's shape moves to the teacher's distribution."""
  before = load_saved_state(teacher / "checkpoints")["params"]
  final, = run_jobs((student_config(corpus, teacher, num_steps=60, log_every=5), tmp_path / "student"))
  rows = train_rows(tmp_path / "student")
  assert rows[-1]["kd_loss"] < 0.15 * rows[0]["kd_loss"]
  assert final["teacher_kl"] < 0.15 * rows[0]["kd_loss"]
  after = load_saved_state(teacher / "checkpoints")["params"]
  for x, y in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after)):
    np.testing.assert_array_equal(x, y)
  # The student's checkpoint holds the student only: the teacher is reloaded from its workdir on every start.
  saved = load_saved_state(tmp_path / "student" / "checkpoints")
  assert set(saved) == {"step", "params", "opt_state", "rng", "nonfinite_streak", "skipped_steps"}
  assert sum(x.size for x in jax.tree_util.tree_leaves(saved["params"])) == sum(
      x.size for x in jax.tree_util.tree_leaves(before))  # same shape as the teacher, and nothing more


def test_teacher_is_a_jit_argument_and_gets_no_update(corpus, teacher):
  config = student_config(corpus, teacher)
  config.train.batch_size = 4
  tokenizer = prepare.prepare_tokenizer(config, teacher)
  progs = programs.build_without_data(config, tokenizer.vocab_size, devices=jax.devices()[:1])
  assert progs.frozen_shardings is not None
  with sharding.activate(progs.mesh, progs.rules):
    frozen = progs.task.load_frozen(progs.frozen_shardings)
    state = create_train_state(progs.model, progs.optimizer, config.seed, progs.task.init_args(),
                               progs.state_shardings)
    batches = progs.abstract_train_batches(config)
    lowered = progs.train_fn.lower(progs.abstract_state(config), batches, frozen)
    # Every teacher array is an input of the compiled step (with the teacher's sharding), none a constant in it.
    args = lowered.args_info[0]
    assert len(jax.tree_util.tree_leaves(args[2])) == len(jax.tree_util.tree_leaves(frozen))
    assert "stablehlo.constant dense<[" not in lowered.as_text()
    batch = {k: np.random.default_rng(0).integers(1, 20, s.shape).astype(s.dtype) for k, s in batches.items()}
    bound = progs.with_frozen(frozen)
    kept = jax.device_get(frozen)
    start = jax.device_get(state.params)
    for _ in range(3):
      state, _ = bound.train_fn(state, sharding.global_batch(batch, progs.mesh, progs.train_batch_spec))
  for x, y in zip(jax.tree_util.tree_leaves(kept), jax.tree_util.tree_leaves(jax.device_get(frozen))):
    np.testing.assert_array_equal(x, y)
  saved = load_saved_state(teacher / "checkpoints")["params"]
  for x, y in zip(jax.tree_util.tree_leaves(saved), jax.tree_util.tree_leaves(kept)):
    np.testing.assert_array_equal(x, y)
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(start),
                                                     jax.tree_util.tree_leaves(jax.device_get(state.params)))]
  assert all(moved)


def test_a_teacher_with_another_tokenizer_fails_in_one_line_before_compiling(corpus, teacher, tmp_path, monkeypatch):
  config = student_config(corpus, teacher)
  config.tokenizer.kind = "byte"
  monkeypatch.setattr(programs, "build", lambda *a, **k: pytest.fail("compiled despite a tokenizer mismatch"))
  with pytest.raises(ConfigError) as e:
    train.train_and_evaluate(config, tmp_path, devices=ONE_DEVICE)
  message = str(e.value)
  assert "\n" not in message and "config.distill.teacher_workdir" in message and "tokenizer" in message


def test_distillation_resumes_exactly(corpus, teacher, tmp_path):
  config = student_config(corpus, teacher, num_steps=12, checkpoint_every=6, eval_every=12, log_every=6)
  config.distill.update(alpha=0.5, temperature=2.0, hidden_weight=1.0, attention_weight=1.0, layer_pairs="1:0")
  config.model.update(num_layers=1, d_model=16, mlp_dim=32, dropout=0.1)  # a projection, and RNG to restore
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  run_jobs((config, straight), (config, resumed, 6), (config, resumed))
  a, b = (load_saved_state(w / "checkpoints")["params"] for w in (straight, resumed))
  assert "distill_projection_0" in a
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert {"kd_loss", "ce_loss", "hidden_loss", "attention_loss"} <= set(train_rows(resumed)[-1])


def test_offline_top_k_logits_train_a_student(corpus, teacher, tmp_path):
  from lmjax.distill.precompute import precompute
  config = student_config(corpus, teacher, num_steps=40, log_every=10)
  config.distill.update(offline_logits_dir=str(tmp_path / "top8"), top_k=8)
  store = precompute(config, tmp_path / "student")
  meta = json.loads((store / "meta.json").read_text())
  values = np.load(store / "lm_values.npy", mmap_mode="r")
  assert meta["num_batches"] == 40 and values.shape == (40, 8, 32, 8) and values.dtype == np.float16
  assert (np.diff(values.astype(np.float32), axis=-1) <= 0).all()  # the k largest, in order
  run_jobs((config, tmp_path / "student"))
  rows = train_rows(tmp_path / "student")
  assert rows[-1]["kd_loss"] < 0.6 * rows[0]["kd_loss"] and rows[-1]["ce_loss"] < rows[0]["ce_loss"]
  # A longer run than the store holds is refused in one line.
  config.train.num_steps = 41
  with pytest.raises(ConfigError, match="holds 40 batches"):
    train.train_and_evaluate(config, tmp_path / "longer", devices=ONE_DEVICE)


def test_a_bert_student_distils_masked_lm_with_hidden_and_attention_terms(corpus, tmp_path):
  def bert(**model):
    c = bert_tiny.get_config()
    c.data.update(source="files", paths=str(corpus), seq_len=32, data_dir=str(corpus.parent / "data"))
    c.model.update(num_layers=2, num_heads=2, d_model=32, mlp_dim=64, max_len=32)
    c.model.update(model)
    c.train.update(batch_size=8, num_steps=20, steps_per_call=1, log_every=10, eval_every=20, checkpoint_every=20,
                   eval_batches=2, plot=False, tensorboard=False)
    return c
  student = bert(num_layers=1)
  student.task = "distill_mlm"
  student.distill.update(teacher_workdir=str(tmp_path / "teacher"), hidden_weight=1.0, attention_weight=1.0,
                         layer_pairs="1:0", init_student_layers="1")
  _, final = run_jobs((bert(), tmp_path / "teacher"), (student, tmp_path / "student"))
  rows = train_rows(tmp_path / "student")
  assert {"kd_loss", "mlm_loss", "nsp_loss", "hidden_loss", "attention_loss"} <= set(rows[0])
  assert rows[-1]["loss"] < rows[0]["loss"]
  assert np.isfinite(final["teacher_kl"]) and "mlm_accuracy" in final


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
  """A fine-tuned BERT teacher on the cue-word sentiment data (tests/test_finetune.py), trained from scratch."""
  from test_finetune import finetune_config  # noqa: E402  (tests/ is on sys.path through conftest)
  tmp = tmp_path_factory.mktemp("sentiment")
  run_jobs((finetune_config(tmp, "classification"), tmp / "teacher"))
  return tmp


def classification_student(tmp, **overrides):
  from test_finetune import finetune_config  # noqa: E402
  c = finetune_config(tmp, "classification", **overrides)
  c.task = "distill_classification"
  c.model.num_layers = 1  # half the teacher's depth, its width
  c.train.update(num_steps=60, eval_every=60, checkpoint_every=60)
  c.distill.update(teacher_workdir=str(tmp / "teacher"), alpha=1.0, temperature=2.0)
  return c


def test_a_smaller_classifier_learns_the_teachers_decisions(classifier, tmp_path):
  """alpha = 1: the student never sees a label, yet scores like the teacher through the base task's metrics."""
  before = load_saved_state(classifier / "teacher" / "checkpoints")["params"]
  final, = run_jobs((classification_student(classifier), tmp_path / "student"))
  assert final["accuracy"] >= 0.9 and final["f1"] >= 0.9 and "mcc" in final, final
  assert np.isfinite(final["teacher_kl"])
  assert {"kd_loss", "ce_loss", "accuracy"} <= set(train_rows(tmp_path / "student")[0])
  after = load_saved_state(classifier / "teacher" / "checkpoints")["params"]
  for x, y in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after)):
    np.testing.assert_array_equal(x, y)


def test_a_classifier_teacher_with_other_classes_fails_in_one_line(classifier, tmp_path):
  config = classification_student(classifier, **{"finetune.labels": "neg,pos,neutral"})
  with pytest.raises(ConfigError) as e:
    train.train_and_evaluate(config, tmp_path, devices=ONE_DEVICE)
  message = str(e.value)
  assert "\n" not in message and "config.distill.teacher_workdir" in message and "2 classes, the student 3" in message


def test_a_regression_student_is_refused_in_one_line():
  config = bert_tiny.get_config()
  config.task = "distill_classification"
  config.finetune.update(train_file="t.tsv", eval_file="e.tsv", regression=True)
  config.distill.teacher_workdir = "unused"
  with pytest.raises(ConfigError, match="finetune.regression"):
    validate(config)


if __name__ == "__main__":  # the subprocess of run_jobs
  jax.config.update("jax_compilation_cache_dir", sys.argv[2])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  results = []
  for job in json.loads(sys.argv[1]):
    c = base_config()
    c.update_from_flattened_dict(flatten(job["config"]))
    results.append(train.train_and_evaluate(c, job["workdir"], stop_at=job["stop_at"]))
  print(json.dumps(results))
