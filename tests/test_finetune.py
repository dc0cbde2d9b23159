"""Fine-tuning the BERT encoder: classification, tagging and QA through the trainer; init_from; frozen layers."""

import json
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ONE_DEVICE
from configs import bert_tiny
from lmjax import init_from, train
from lmjax.checkpoint import load_saved_state
from lmjax.config import ConfigError, base_config
from lmjax.data import example_arrays
from lmjax.optim import make_optimizer

WORDS = "the a cat dog sat ran on mat log big small red blue house tree river".split()


def write_sentiment(path, n, seed):
  """Random words with one cue word: 'great' (pos) or 'awful' (neg) somewhere in the sentence."""
  rng = random.Random(seed)
  lines = ["sentence\tlabel"]
  for _ in range(n):
    label = rng.choice(["pos", "neg"])
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
    words.insert(rng.randrange(len(words) + 1), "great" if label == "pos" else "awful")
    lines.append(f"{' '.join(words)}\t{label}")
  path.write_text("\n".join(lines) + "\n")


def write_conll(path, n, seed):
  """Names (B-PER I-PER) and places (B-LOC) among filler words (O)."""
  rng = random.Random(seed)
  firsts, lasts, places = ["ann", "bob", "eve"], ["smith", "jones"], ["paris", "rome", "oslo"]
  lines = []
  for _ in range(n):
    tokens = [(w, "O") for w in rng.sample(WORDS, 4)]
    at = rng.randrange(len(tokens) + 1)
    tokens[at:at] = [(rng.choice(firsts), "B-PER"), (rng.choice(lasts), "I-PER")]
    at = rng.randrange(len(tokens) + 1)
    tokens.insert(at, (rng.choice(places), "B-LOC"))
    lines += [f"{w} NN {t}" for w, t in tokens] + [""]
  path.write_text("\n".join(lines))


def write_squad(path, n, seed):
  """'... the code is <word> ...': the answer to 'what is the code?' is the word after 'code is'."""
  rng = random.Random(seed)
  qas = []
  for i in range(n):
    answer = rng.choice(["zebra", "lemon", "piano", "tiger", "mango", "ruby"])
    before = " ".join(rng.sample(WORDS, 3))
    context = f"{before} the code is {answer} {' '.join(rng.sample(WORDS, 3))}."
    qas.append({"context": context, "qas": [{"id": f"q{i}", "question": "what is the code?",
                                             "answers": [{"text": answer, "answer_start": context.index(answer)}]}]})
  path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": qas}]}))


def finetune_config(tmp_path, task, **overrides):
  c = bert_tiny.get_config()
  c.task = task
  c.model.num_layers = 2
  c.model.d_model = 64
  c.model.mlp_dim = 128
  c.optim.learning_rate = 2e-3
  c.optim.warmup_steps = 10
  c.train.update(batch_size=16, num_steps=60, steps_per_call=10, log_every=10, eval_every=30,
                 checkpoint_every=30, eval_batches=0, tensorboard=False, plot=False)
  files = {"classification": ("tsv", write_sentiment), "tagging": ("conll", write_conll),
           "qa": ("json", write_squad)}
  ext, write = files[task]
  for name, n, seed in (("train", 300, 0), ("eval", 48, 1)):
    path = tmp_path / f"{name}.{ext}"
    if not path.exists():
      write(path, n, seed)
    c.finetune[f"{name}_file"] = str(path)
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  return c


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """A few steps of masked-LM pretraining with the fine-tuning tests' encoder shape."""
  tmp = tmp_path_factory.mktemp("pretrain")
  c = finetune_config(tmp, "classification")
  c.task = "mlm"
  c.train.update(num_steps=10, eval_every=10, checkpoint_every=10, eval_batches=2)
  workdir = tmp / "run"
  train.train_and_evaluate(c, workdir, devices=ONE_DEVICE)
  return workdir


def test_classification_learns_a_cue_word_and_writes_predictions(tmp_path):
  final = train.train_and_evaluate(finetune_config(tmp_path, "classification"), tmp_path / "run", devices=ONE_DEVICE)
  assert final["accuracy"] >= 0.95 and final["f1"] >= 0.95 and final["mcc"] >= 0.9
  records = [json.loads(line) for line in (tmp_path / "run/predictions/eval_step000060.jsonl").read_text().splitlines()]
  assert len(records) == 48  # every eval example once, the padding rows of the last batch dropped
  assert np.mean([r["prediction"] == r["label"] for r in records]) == pytest.approx(final["accuracy"])


def test_sentence_pair_regression_from_jsonl(tmp_path):
  """The target counts the cue word "great" over both sentences of a pair, which a trained model tracks."""
  rng = random.Random(0)
  for name, n in (("train", 300), ("eval", 48)):
    with open(tmp_path / f"{name}.jsonl", "w") as f:
      for _ in range(n):
        sides = []
        for _ in range(2):
          words = [rng.choice(WORDS) for _ in range(rng.randint(2, 5))]
          for _ in range(rng.randint(0, 2)):
            words.insert(rng.randrange(len(words) + 1), "great")
          sides.append(words)
        f.write(json.dumps({"a": " ".join(sides[0]), "b": " ".join(sides[1]),
                            "score": sum(w.count("great") for w in sides)}) + "\n")
  config = finetune_config(tmp_path, "classification", **{
      "finetune.train_file": str(tmp_path / "train.jsonl"), "finetune.eval_file": str(tmp_path / "eval.jsonl"),
      "finetune.text_fields": "a,b", "finetune.label_field": "score", "finetune.regression": True})
  config.train.update(num_steps=100, eval_every=100, checkpoint_every=100)
  final = train.train_and_evaluate(config, tmp_path / "run", devices=ONE_DEVICE)
  assert final["pearson"] > 0.75 and final["spearman"] > 0.75, final  # untrained: about 0


def test_tagging_reaches_high_entity_f1(tmp_path):
  config = finetune_config(tmp_path, "tagging")
  config.train.update(num_steps=150, eval_every=150, checkpoint_every=150)
  final = train.train_and_evaluate(config, tmp_path / "run", devices=ONE_DEVICE)
  assert final["entity_f1"] >= 0.9, final


def test_qa_finds_the_span(tmp_path):
  config = finetune_config(tmp_path, "qa", **{"data.seq_len": 64, "finetune.max_query_len": 16,
                                             "finetune.doc_stride": 32})
  config.train.num_steps = 90
  final = train.train_and_evaluate(config, tmp_path / "run", devices=ONE_DEVICE)
  assert final["exact_match"] >= 0.8 and final["f1"] >= 0.8, final


def test_init_from_restores_the_encoder_exactly_and_freezing_keeps_it(pretrained, tmp_path):
  saved = load_saved_state(pretrained / "checkpoints")["params"]
  config = finetune_config(tmp_path, "classification", **{
      "finetune.init_from": str(pretrained), "finetune.freeze_embeddings": True, "finetune.freeze_layers": 2})
  config.train.update(num_steps=10, eval_every=10, checkpoint_every=10)
  train.train_and_evaluate(config, tmp_path / "run", devices=ONE_DEVICE)
  tuned = load_saved_state(tmp_path / "run/checkpoints")["params"]
  # Every encoder parameter is frozen here, so after training it is still exactly the pretrained one ...
  for a, b in zip(jax.tree_util.tree_leaves(saved["encoder"]), jax.tree_util.tree_leaves(tuned["encoder"])):
    np.testing.assert_array_equal(a, b)
  # ... while the pooler (pretrained, not frozen) and the new head trained.
  assert not np.array_equal(saved["pooler"]["dense"]["kernel"], tuned["pooler"]["dense"]["kernel"])
  assert "classifier" in tuned and "mlm_head" not in tuned
  assert (tmp_path / "run/tokenizer").is_dir()


def test_init_from_copies_encoder_and_pooler_and_keeps_the_fresh_head(pretrained, tmp_path):
  from lmjax import programs
  from lmjax.data.tokenizers import load_tokenizer
  config = finetune_config(tmp_path, "classification", **{"finetune.init_from": str(pretrained),
                                                          "finetune.labels": "neg,pos"})
  tokenizer = load_tokenizer(pretrained / "tokenizer")
  progs = programs.build_without_data(config, tokenizer.vocab_size, devices=jax.devices()[:1])
  fresh = progs.model.init(jax.random.PRNGKey(0), *progs.task.init_args())["params"]
  fresh = jax.tree_util.tree_map(lambda x: getattr(x, "value", x), fresh,
                                 is_leaf=lambda x: hasattr(x, "value"))
  params, copied = init_from.pretrained_params(config, fresh)
  saved = load_saved_state(pretrained / "checkpoints")["params"]
  assert copied == ["encoder", "pooler"]
  for name in copied:
    jax.tree_util.tree_map(np.testing.assert_array_equal, params[name], jax.device_get(saved[name]))
  jax.tree_util.tree_map(np.testing.assert_array_equal, params["classifier"], jax.device_get(fresh["classifier"]))


@pytest.mark.parametrize("override, expected", [
    ({"model.d_model": 32}, "model.d_model=32 (the run has 64)"),
    ({"tokenizer.kind": "byte"}, "tokenizer.kind='byte' (the run has 'char')"),
    ({"finetune.init_step": 7}, "no checkpoint there"),
])
def test_init_from_mismatch_is_one_line_before_the_workdir_is_touched(pretrained, tmp_path, override, expected):
  config = finetune_config(tmp_path, "classification", **{"finetune.init_from": str(pretrained), **override})
  with pytest.raises(ConfigError) as error:
    train.train_and_evaluate(config, tmp_path / "run", devices=ONE_DEVICE)
  assert expected in str(error.value) and "\n" not in str(error.value)
  assert not (tmp_path / "run").exists()


def test_init_from_a_missing_run_is_one_line(tmp_path):
  config = finetune_config(tmp_path, "classification", **{"finetune.init_from": str(tmp_path / "nothing")})
  with pytest.raises(ConfigError, match="no such directory"):
    train.train_and_evaluate(config, tmp_path / "run", devices=ONE_DEVICE)


def test_head_learning_rate_multiplier_and_frozen_groups():
  optim = base_config().optim
  optim.update(warmup_steps=0, schedule="constant", weight_decay=0.0, grad_clip_norm=0.0, learning_rate=0.01)
  params = {"encoder": {"embed": jnp.ones((3, 2)), "layer_0": jnp.ones(2), "layer_1": jnp.ones(2)},
            "classifier": jnp.ones(2)}
  groups = {"encoder": {"embed": "frozen", "layer_0": "frozen", "layer_1": "body"}, "classifier": "head"}
  tx = make_optimizer(optim, 100, lambda p: groups, head_lr_multiplier=10.0)
  grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.5), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["encoder"]["layer_1"], -0.01, rtol=1e-4)  # Adam's first step: -lr * sign(g)
  np.testing.assert_allclose(updates["classifier"], -0.1, rtol=1e-4)
  np.testing.assert_array_equal(updates["encoder"]["embed"], 0.0)
  np.testing.assert_array_equal(updates["encoder"]["layer_0"], 0.0)


def test_frozen_gradients_do_not_count_towards_clipping():
  optim = base_config().optim
  # eps=1 makes Adam's first update g / (|g| + 1): it shows the gradient's scale after clipping.
  optim.update(warmup_steps=0, schedule="constant", weight_decay=0.0, grad_clip_norm=1.0, learning_rate=1.0, eps=1.0)
  params = {"encoder": {"layer_0": jnp.ones(2), "layer_1": jnp.ones(2)}}
  tx = make_optimizer(optim, 100, lambda p: {"encoder": {"layer_0": "frozen", "layer_1": "body"}})
  grads = {"encoder": {"layer_0": jnp.full(2, 100.0), "layer_1": jnp.full(2, 0.5)}}  # body norm 0.71: no clipping
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["encoder"]["layer_1"], -0.5 / 1.5, rtol=1e-4)


def test_train_batches_are_epoch_permutations_and_eval_batches_cover_each_example_once():
  arrays = {"x": np.arange(10, dtype=np.int32)}
  it = iter(example_arrays.train_dataset(arrays, 4, seed=3))
  seen = np.concatenate([next(it)["x"] for _ in range(5)])  # 20 rows: two epochs
  assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
  assert seen[:10].tolist() != seen[10:].tolist()
  halves = [example_arrays.eval_batches(arrays, 4, 0, p, 2) for p in range(2)]
  index = np.concatenate([np.concatenate([h[k]["index"] for h in halves]) for k in range(len(halves[0]))])
  assert sorted(index[index >= 0].tolist()) == list(range(10)) and (index == -1).sum() == 2


@pytest.mark.parametrize("override, expected", [
    ({"finetune.train_file": ""}, "config.finetune.train_file"),
    ({"finetune.freeze_layers": 3}, "config.finetune.freeze_layers=3"),
    ({"finetune.text_fields": "a,b,c"}, "config.finetune.text_fields"),
    ({"finetune.head_lr_multiplier": 0.0}, "config.finetune.head_lr_multiplier"),
])
def test_bad_finetune_config_is_one_line(tmp_path, override, expected):
  config = finetune_config(tmp_path, "classification", **override)
  with pytest.raises(ConfigError) as error:
    train.train_and_evaluate(config, tmp_path / "run", devices=ONE_DEVICE)
  assert str(error.value).startswith(expected) and not (tmp_path / "run").exists()
