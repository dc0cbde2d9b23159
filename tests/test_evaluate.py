"""lmjax.evaluate: harness tasks through lmjax's model class, strided perplexity, results in reports and sweeps.

No network: the tasks are YAMLs with local JSONL data (tests/fixtures/harness_tasks), the reference is the
harness's own transformers backend on a tiny GPT-2 that transformers builds here, and the hub is switched off.
"""

import functools
import json
import math
import os
import subprocess
import sys

for _var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
  os.environ[_var] = "1"  # before datasets and the harness read them

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # pylint: disable=wrong-import-position
from lm_eval.tasks import TaskManager  # pylint: disable=wrong-import-position

from conftest import ONE_DEVICE, REPO, single_device_env  # pylint: disable=wrong-import-position
from lmjax import eval_results, harness, report, sweep  # pylint: disable=wrong-import-position
from lmjax.config import ConfigError, base_config  # pylint: disable=wrong-import-position
from lmjax.config_validation import validate  # pylint: disable=wrong-import-position
from lmjax.data.tokenizers import BOS_ID, ByteTokenizer  # pylint: disable=wrong-import-position
from lmjax.models import model_config  # pylint: disable=wrong-import-position
from lmjax.scoring import Scorer, perplexity, strided_rows  # pylint: disable=wrong-import-position

TASKS_DIR = REPO / "tests" / "fixtures" / "harness_tasks"
TASKS = ["tiny_choice", "tiny_words", "tiny_rolling", "tiny_generate"]
WORDS = ("the quick brown fox jumps over the lazy dog it is and we see three dogs numbers really yes no maybe. "
         "Question: Answer: a b c d e f g of to in was")


@pytest.fixture(scope="module")
def native():
  """A small random lmjax GPT over bytes, learned positions up to 64: (config, model, params, tokenizer)."""
  config = base_config()
  config.tokenizer.kind = "byte"
  config.data.seq_len = 64
  for field, value in dict(num_layers=2, num_heads=2, d_model=32, mlp_dim=64, max_len=64, dropout=0.0).items():
    config.model[field] = value
  tokenizer = ByteTokenizer()
  model = model_config(config, tokenizer.vocab_size).build()
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
  return config, model, params, tokenizer


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
  """(HF directory, lmjax workdir): a GPT2LMHeadModel with its own byte-level BPE vocabulary, and its import."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  tokenizers = pytest.importorskip("tokenizers")
  from lmjax.hf.import_checkpoint import import_checkpoint  # pylint: disable=import-outside-toplevel
  d = tmp_path_factory.mktemp("gpt2")
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator([WORDS] * 5, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
  bpe.save_model(str(d))
  vocab = json.loads((d / "vocab.json").read_text())
  order = sorted(vocab, key=lambda piece: (piece == "<|endoftext|>", vocab[piece]))  # <|endoftext|> last, as GPT-2
  (d / "vocab.json").write_text(json.dumps({piece: i for i, piece in enumerate(order)}))
  torch.manual_seed(0)
  config = transformers.GPT2Config(vocab_size=len(order), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                   bos_token_id=len(order) - 1, eos_token_id=len(order) - 1)
  transformers.GPT2LMHeadModel(config).eval().save_pretrained(d)
  transformers.GPT2Tokenizer.from_pretrained(str(d)).save_pretrained(d)
  workdir = tmp_path_factory.mktemp("runs") / "gpt2"
  import_checkpoint(d, workdir)
  return d, workdir


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, inputs_1L, bias_V):
  return jax.nn.log_softmax(model.apply({"params": params}, inputs_1L)[0] + bias_V, axis=-1)


def _direct_logp(model, params, tokens, scored, bias_V=None):
  """Sum of the last `scored` targets' log-probabilities, and whether each was the argmax: one row, alone (padded
  on the right to the model's 64 positions, which a causal model's earlier positions never see)."""
  n = len(tokens) - 1
  inputs = np.zeros((1, 64), np.int32)
  inputs[0, :n] = tokens[:-1]
  bias_V = jnp.zeros(model.cfg.vocab_size) if bias_V is None else bias_V
  logp = np.asarray(_forward(model, params, jnp.asarray(inputs), bias_V))[:n]
  targets = np.asarray(tokens[1:])
  picked = logp[np.arange(n), targets][-scored:]
  greedy = (logp.argmax(-1) == targets)[-scored:]
  return float(picked.sum()), bool(greedy.all())


def test_loglikelihoods_equal_a_direct_computation(native):
  config, model, params, tokenizer = native
  lm = harness.LmjaxLM(model, params, tokenizer, config, batch_tokens=256)
  rng = np.random.default_rng(0)
  pairs = [("", "the fox"), ("Question: what?", " Answer"), ("a" * 70, " b c"), ("x", "y"), ("a" * 60, " b c d")]
  pairs += [("Question: which?", choice) for choice in (" yes", " no", " maybe so", "!")]  # one shared context
  pairs += [(" ".join(rng.choice(WORDS.split(), rng.integers(1, 12))), " " + str(rng.choice(WORDS.split())))
            for _ in range(20)]
  requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
  got = lm.loglikelihood(requests, disable_tqdm=True)
  for (context, continuation), (logp, greedy) in zip(pairs, got):
    # lmjax's tokenizers start requests with <bos>; a context beyond the 64-token context is cut from the left.
    tokens = [BOS_ID, *tokenizer.encode(context + continuation).tolist()][-65:]
    want, want_greedy = _direct_logp(model, params, tokens, len(tokenizer.encode(continuation)))
    assert logp == pytest.approx(want, abs=1e-4) and greedy == want_greedy
  kinds = [shape[0] for shape in lm.scorer.shapes]
  assert "continue" in kinds and "score" in kinds  # shared contexts ran once; the others alone
  assert lm.compilations <= 8

  text = " ".join(WORDS.split() * 3)  # longer than the context: several rolling windows
  (rolling,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
  ids, total, done = tokenizer.encode(text).tolist(), 0.0, 0
  seq = [BOS_ID, *ids]
  while done < len(ids):  # the harness's recipe: each window predicts up to 64 new tokens from the 64 before them
    end = min(done + 64, len(ids))
    total += _direct_logp(model, params, seq[max(0, end - 64):end + 1], end - done)[0]
    done = end
  assert rolling == pytest.approx(total, abs=1e-3)


def _hand_strided_nll(model, params, ids, window, stride):
  """The usual strided recipe, one window at a time: windows start every `stride` tokens of [<bos>] + ids and
  score what the previous window did not."""
  seq, n, nll, prev_end = [BOS_ID, *ids], len(ids), 0.0, 0
  for begin in range(0, n, stride):
    end = min(begin + window, n)
    nll -= _direct_logp(model, params, seq[begin:end + 1], end - prev_end)[0]
    prev_end = end
    if end == n:
      break
  return nll


@pytest.mark.parametrize("window, stride", [(16, 8), (16, 16), (64, 5)])
def test_strided_perplexity_equals_a_hand_computation_at_any_batch_size(native, window, stride):
  _, model, params, tokenizer = native
  texts = ["In the beginning was the word, and the word was with the fox. " * 2, "short one", "naïve café ½"]
  hand = sum(_hand_strided_nll(model, params, tokenizer.encode(t).tolist(), window, stride) for t in texts)
  results = [perplexity(Scorer(model, params, max_length=64, batch_tokens=b), texts,
                        lambda t: tokenizer.encode(t).tolist(), window=window, stride=stride) for b in (16, 4096)]
  tokens = sum(len(tokenizer.encode(t)) for t in texts)
  for r in results:
    assert r["tokens"] == tokens  # every token scored once
    assert r["perplexity"] == pytest.approx(math.exp(hand / tokens), rel=1e-5)
    assert r["bits_per_byte"] == pytest.approx(hand / math.log(2) / sum(len(t.encode()) for t in texts), rel=1e-5)
    assert r["bits_per_char"] == pytest.approx(hand / math.log(2) / sum(map(len, texts)), rel=1e-5)
  assert results[0]["perplexity"] == pytest.approx(results[1]["perplexity"], rel=1e-6)
  rows = strided_rows(list(range(10, 50)), window, stride)
  assert sum(r.scored for r in rows) == 40 and all(len(r.tokens) - 1 <= window for r in rows)


@pytest.mark.slow
def test_harness_scores_through_lmjax_equal_the_transformers_backend(gpt2):
  from lm_eval.models.huggingface import HFLM  # pylint: disable=import-outside-toplevel
  from lmjax.saved_run import open_run  # pylint: disable=import-outside-toplevel
  hf_dir, workdir = gpt2
  manager = harness.task_manager(str(TASKS_DIR), TASKS)
  run = open_run(workdir)
  params, _ = run.load_params()
  ours = harness.run_tasks(harness.LmjaxLM(run.model(), params, run.tokenizer, run.config),
                           harness.load_tasks(manager, TASKS), log_samples=True)
  theirs = lm_eval.simple_evaluate(model=HFLM(pretrained=str(hf_dir), device="cpu", batch_size=4),
                                   tasks=list(harness.load_tasks(manager, TASKS).values()), log_samples=True,
                                   bootstrap_iters=0, task_manager=TaskManager(include_defaults=False))
  for task in TASKS:
    a = [s["resps"] for s in sorted(ours["samples"][task], key=lambda s: s["doc_id"])]
    b = [s["resps"] for s in sorted(theirs["samples"][task], key=lambda s: s["doc_id"])]
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
      if task == "tiny_generate":
        assert x == y  # greedy generations, cut at the same stop sequences
      else:
        logp = lambda resps: [r[0] if task == "tiny_rolling" else r[0][0] for r in resps]
        np.testing.assert_allclose(logp(x), logp(y), atol=1e-4)
        if task != "tiny_rolling":
          assert [r[0][1] for r in x] == [r[0][1] for r in y]
    mine, reference = harness.headline_metrics(ours)[task], harness.headline_metrics(theirs)[task]
    assert mine.keys() == reference.keys()
    for metric in mine:
      assert mine[metric] == pytest.approx(reference[metric], rel=1e-4, abs=1e-4), (task, metric)


def test_bad_input_is_one_line(native, tmp_path):
  config, model, params, tokenizer = native
  own = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
  with pytest.raises(harness.HarnessError, match=r"'tiny_choise' is not a harness task.*did you mean tiny_choice"):
    harness.check_task_names(own, ["tiny_choise"])

  hub = tmp_path / "hub_task"
  hub.mkdir()
  (hub / "needs_hub.yaml").write_text("task: needs_hub\ndataset_path: allenai/ai2_arc\ndataset_name: ARC-Easy\n"
                                      "output_type: multiple_choice\ntest_split: test\ndoc_to_text: q\n"
                                      "doc_to_choice: ['a']\ndoc_to_target: 0\n")
  with pytest.raises(harness.HarnessError) as e:
    harness.load_tasks(harness.task_manager(str(hub), ["needs_hub"]), ["needs_hub"])
  message = str(e.value)
  assert "\n" not in message and "load_dataset('allenai/ai2_arc', 'ARC-Easy')" in message
  assert "HF_DATASETS_OFFLINE=1" in message and "--include_path" in message

  bert = base_config()
  bert.task, bert.model.name, bert.tokenizer.kind = "mlm", "bert", "byte"
  encoder = model_config(bert, tokenizer.vocab_size).build()
  with pytest.raises(harness.HarnessError, match="'bert' is an encoder-only model.*cannot generate text"):
    harness.check_scores_text(bert, encoder, generates=True)

  with pytest.raises(harness.HarnessError, match="max_length=128 exceeds model.max_len=64, the size of the learned"):
    harness.LmjaxLM(model, params, tokenizer, config, max_length=128)
  for error in (harness.HarnessError, ConfigError):
    assert issubclass(error, ValueError)  # lmjax's commands print these as one line


def test_eval_tasks_config_is_checked(native):
  config = base_config()
  config.train.eval_tasks_limit = 5
  with pytest.raises(ConfigError, match="train.eval_tasks_limit=5 is invalid: train.eval_tasks is empty"):
    validate(config)
  config = base_config()
  config.train.eval_tasks, config.task, config.model.name = "tiny_choice", "mlm", "bert"
  with pytest.raises(ConfigError, match="train.eval_tasks='tiny_choice' is invalid: harness tasks score"):
    validate(config)
  config = base_config()
  config.train.eval_tasks, config.train.eval_tasks_every = "tiny_choice", 750
  with pytest.raises(ConfigError, match="must be a multiple of train.eval_every=500"):
    validate(config)


def _fake_run(path, num_steps=10, evals=None):
  path.mkdir(parents=True)
  config = base_config()
  config.train.num_steps = num_steps
  (path / "config.json").write_text(json.dumps(config.to_dict()))
  (path / "metrics.jsonl").write_text(json.dumps({"step": num_steps, "split": "eval", "loss": 1.5}) + "\n")
  (path / "checkpoints" / str(num_steps)).mkdir(parents=True)
  for name, record in (evals or {}).items():
    eval_results.write(path, name, record)


def test_report_shows_evaluations_as_columns(tmp_path):
  _fake_run(tmp_path / "a", evals={"tiny_choice": {"step": 10, "metrics": {"tiny_choice": {"acc": 0.25}},
                                                   "perplexity": {"ppl-wiki": {"bits_per_byte": 1.5,
                                                                               "perplexity": 9.0}}}})
  _fake_run(tmp_path / "b", evals={"tiny_choice": {"step": 10, "metrics": {"tiny_choice": {"acc": np.float64(0.5)}}}})
  text, _ = report.report(tmp_path)
  lines = text.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith("| run |"))  # the table of every run
  header, _, row_a, row_b = lines[start:start + 4]
  assert "tiny_choice/acc" in header and "ppl-wiki/bits_per_byte" in header
  assert "0.2500" in row_a and "1.5000" in row_a and "0.5000" in row_b and row_b.count(report.MISSING) >= 2
  assert "tiny_choice/acc" in (tmp_path / "report.csv").read_text().splitlines()[0]


def test_sweep_evaluates_every_finished_point(tmp_path):
  points = [sweep.SweepPoint(n, {}, tmp_path / n, (), 10) for n in ("done", "unfinished")]
  _fake_run(tmp_path / "done")
  (tmp_path / "unfinished").mkdir()
  calls = []
  statuses = sweep.evaluate_points(points, "--tasks=tiny_choice --include_path=tasks",
                                   lambda command, workdir: calls.append((command, workdir)) or 0, log=lambda _: None)
  assert statuses == {"done": 0}
  [(command, workdir)] = calls
  assert workdir == tmp_path / "done" and command[1:3] == ["-m", "lmjax.evaluate"]
  assert command[3:] == [f"--workdir={tmp_path / 'done'}", "--tasks=tiny_choice", "--include_path=tasks",
                         "--skip_existing"]


@pytest.mark.slow
def test_the_command_scores_an_imported_run_and_refuses_bad_input(gpt2, tmp_path):
  _, workdir = gpt2
  text = tmp_path / "held_out.txt"
  text.write_text(" ".join(WORDS.split() * 6), encoding="utf-8")
  env = single_device_env(PYTHONPATH=str(REPO))
  base = [sys.executable, "-m", "lmjax.evaluate", f"--workdir={workdir}", f"--include_path={TASKS_DIR}"]
  done = subprocess.run(base + ["--tasks=tiny_choice,tiny_generate", f"--perplexity={text}", "--stride=16",
                                "--name=check"], capture_output=True, text=True, env=env, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  record = json.loads((workdir / "evals" / "check.json").read_text())
  assert record["step"] == 0 and set(record["metrics"]) == {"tiny_choice", "tiny_generate"}
  assert record["harness"]["versions"]["tiny_choice"] == 1.0 and "tiny_choice" in record["harness"]["configs"]
  ppl = record["perplexity"]["ppl-held_out.txt"]
  assert ppl["stride"] == 16 and ppl["window"] == 64 and ppl["bits_per_byte"] > 0
  assert f"{record['lmjax']['compilations']} programs compiled" in done.stderr
  assert "tiny_choice | acc" in done.stdout

  bad = subprocess.run(base + [f"--perplexity={text}", "--max_length=128"], capture_output=True, text=True, env=env,
                       timeout=600)
  assert bad.returncode == 2
  [line] = [l for l in bad.stderr.splitlines() if l.startswith("error:")]
  assert "max_length=128 exceeds model.max_len=64" in line and bad.stderr.strip().endswith(line)


@pytest.mark.slow
def test_training_runs_harness_tasks_at_its_evaluations(tmp_path):
  from lmjax import train  # pylint: disable=import-outside-toplevel
  from lmjax.writers import read_metrics  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, str(REPO))
  from configs import tiny  # pylint: disable=import-outside-toplevel
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n\n".join([WORDS] * 40))
  c = tiny.get_config()
  c.data.source, c.data.paths = "files", str(corpus)
  c.train.num_steps, c.train.eval_every, c.train.checkpoint_every, c.train.num_samples = 20, 10, 20, 0
  c.train.eval_tasks, c.train.eval_tasks_include_path = "tiny_choice,tiny_words", str(TASKS_DIR)
  c.train.eval_tasks_every, c.train.eval_tasks_limit, c.train.plot = 20, 4, False
  train.train_and_evaluate(c, tmp_path / "run", devices=ONE_DEVICE)
  records = [r for r in read_metrics(tmp_path / "run") if r["split"].startswith("harness/")]
  assert sorted((r["split"], r["step"]) for r in records) == [("harness/tiny_choice", 20), ("harness/tiny_words", 20)]
  by_split = {r["split"]: r for r in records}
  assert all(0 <= r["acc"] <= 1 for r in records)
  assert "acc_norm" in by_split["harness/tiny_choice"] and "perplexity" in by_split["harness/tiny_words"]
