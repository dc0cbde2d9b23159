"""Imported Llama and T5 checkpoints are ordinary runs: a sharded checkpoint placed on 8 devices, `lmjax.aot`,
`lmjax.generate --chat`, continued pretraining, classification fine-tuning from `finetune.init_from`, and
distillation from an imported teacher."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import ONE_DEVICE, REPO, single_device_env  # pylint: disable=wrong-import-position
from lmjax import init_from, train  # pylint: disable=wrong-import-position
from lmjax.config import base_config  # pylint: disable=wrong-import-position
from lmjax.hf.import_checkpoint import import_checkpoint  # pylint: disable=wrong-import-position
from lmjax.saved_run import load_config, open_run  # pylint: disable=wrong-import-position
from lmjax.writers import read_metrics  # pylint: disable=wrong-import-position
from test_finetune import write_sentiment  # pylint: disable=wrong-import-position
from test_hf import TRAINING_TEXT  # pylint: disable=wrong-import-position
from test_hf_families import _llama_family  # pylint: disable=wrong-import-position
from test_hf_families import bytelevel_tokenizer_dir, sp_tokenizer_dir  # noqa: F401 pylint: disable=unused-import


@pytest.fixture(scope="module")
def qwen_dir(bytelevel_tokenizer_dir, tmp_path_factory):  # noqa: F811
  d = _llama_family("qwen2", bytelevel_tokenizer_dir, tmp_path_factory.mktemp("qwen2"))
  model = transformers.AutoModelForCausalLM.from_pretrained(d)
  (d / "model.safetensors").unlink()
  model.save_pretrained(d, max_shard_size="40KB")  # several safetensors shards and an index
  assert (d / "model.safetensors.index.json").exists()
  return d


@pytest.fixture(scope="module")
def qwen_run(qwen_dir, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("qwen_run")
  corpus = tmp / "corpus.txt"
  corpus.write_text("\n\n".join(TRAINING_TEXT * 20), encoding="utf-8")
  base = base_config()
  base.data.source, base.data.paths, base.data.seq_len = "files", str(corpus), 32
  base.mesh.data, base.mesh.fsdp = 1, -1  # every parameter sharded over the 8 devices
  base.train.batch_size = 8
  result = import_checkpoint(qwen_dir, tmp / "run", base)
  assert result.fresh == [] and result.unused == []
  return tmp / "run"


def test_sharded_checkpoint_goes_straight_to_the_mesh(qwen_dir):
  """A checkpoint in several shards, placed on an fsdp mesh of 8 devices: each parameter sharded, equal to the
  checkpoint."""
  from lmjax import programs, sharding
  from lmjax.hf.adapter import Plan
  from lmjax.hf.architectures import ARCHITECTURES
  from lmjax.hf.files import CheckpointWeights, read_config, read_weights
  from lmjax.hf.import_checkpoint import derive_config, load_params
  from lmjax.registry import TASKS
  from lmjax.tasks.base import VocabInfo
  arch = ARCHITECTURES["qwen2"]
  weights = CheckpointWeights(qwen_dir)
  assert len(weights.files) > 2
  tokenizer = arch.read_tokenizer(qwen_dir, read_config(qwen_dir)["vocab_size"])
  base = base_config()
  base.mesh.data, base.mesh.fsdp = 1, -1
  config = derive_config(read_config(qwen_dir), qwen_dir, tokenizer, base, weights.names)
  plan = Plan(weights.names, arch.family)
  fields = arch.model_fields(read_config(qwen_dir), weights.names)
  arch.plan(plan, fields, tokenizer.vocab_map)
  task = TASKS.get(config.task).create(config, VocabInfo(tokenizer.vocab_size))
  progs = programs.build(config, task, sharding.make_mesh(config.mesh))
  with sharding.activate(progs.mesh, progs.rules):
    params = load_params(weights, plan, progs.abstract_state(config).params, 0, 0.02, [])
  embedding = params["embed"]["embedding"]
  assert len(embedding.sharding.device_set) == 8 and not embedding.sharding.is_fully_replicated
  shard_rows = {s.data.shape[1] for s in embedding.addressable_shards}
  assert shard_rows == {embedding.shape[1] // 8}  # the width is split over the fsdp axis
  hf = read_weights(qwen_dir)
  np.testing.assert_array_equal(np.asarray(params["ln_final"]["scale"]), hf["model.norm.weight"])


def test_aot_compiles_an_imported_run(qwen_run):
  from lmjax.memory_check import check
  config = load_config(qwen_run)
  result = check(config, config.tokenizer.vocab_size)
  assert result["devices"] == 8 and result["params"] == sum(
      int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(open_run(qwen_run).load_params()[0]))


@pytest.mark.slow
def test_generate_chat_matches_transformers(qwen_dir, qwen_run):
  """`lmjax.generate --chat` renders the checkpoint's template and replies as transformers' generate does."""
  result = subprocess.run([sys.executable, "-m", "lmjax.generate", f"--workdir={qwen_run}", "--chat",
                           "--system=Be brief.", "--user=The quick brown", "--temperature=0", "--max_new_tokens=8"],
                          cwd=REPO, env=single_device_env(), capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  tok = transformers.AutoTokenizer.from_pretrained(qwen_dir)
  messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The quick brown"}]
  ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
  ids = ids["input_ids"] if isinstance(ids, dict) else ids
  model = transformers.AutoModelForCausalLM.from_pretrained(qwen_dir).eval()
  with torch.no_grad():
    out = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
  reply = tok.decode(out[0, len(ids):], skip_special_tokens=True)
  rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
  text = result.stdout.split("--- prompt 1 sample 1 ---\n", 1)[1].rstrip("\n")
  assert text == rendered + reply  # the rendered conversation as it was, then the reply


@pytest.mark.slow
def test_continued_pretraining_and_last_token_classification(qwen_run, tmp_path):
  """Training resumes from the imported step-0 checkpoint; a classifier on the decoder's last token starts from
  its parameters (finetune.init_from) and learns a cue word."""
  config = load_config(qwen_run)
  config.train.update(num_steps=4, steps_per_call=2, log_every=2, eval_every=4, checkpoint_every=4, eval_batches=1,
                      batch_size=8, tensorboard=False, plot=False, num_samples=0)
  train.train_and_evaluate(config, qwen_run, devices=ONE_DEVICE)
  assert open_run(qwen_run).steps == [0, 4]

  c = load_config(qwen_run)
  c.task = "classification"
  c.data.seq_len = 24
  for name, n, seed in (("train", 200, 0), ("eval", 32, 1)):
    write_sentiment(tmp_path / f"{name}.tsv", n, seed)
    c.finetune[f"{name}_file"] = str(tmp_path / f"{name}.tsv")
  c.finetune.update(init_from=str(qwen_run), labels="neg,pos")  # its latest checkpoint: step 4
  c.optim.update(learning_rate=3e-3, warmup_steps=5)
  c.train.update(num_steps=60, steps_per_call=10, log_every=10, eval_every=60, checkpoint_every=60, eval_batches=0,
                 batch_size=16, tensorboard=False, plot=False, num_samples=0)
  from lmjax.models import model_config
  model = model_config(c, open_run(qwen_run).tokenizer.vocab_size).sequence_classifier(2)
  fresh = model.init(jax.random.PRNGKey(0), *[np.zeros((1, 24), np.int32)] * 2, np.ones((1, 24), np.int32))
  fresh = jax.tree_util.tree_map(lambda x: getattr(x, "value", x), fresh["params"],
                                 is_leaf=lambda x: hasattr(x, "value"))
  params, copied = init_from.pretrained_params(c, fresh)
  assert copied == ["decoder"]
  saved = open_run(qwen_run).load_params()[0]
  np.testing.assert_array_equal(params["decoder"]["embed"]["embedding"], np.asarray(saved["embed"]["embedding"]))
  final = train.train_and_evaluate(c, tmp_path / "cls", devices=ONE_DEVICE)
  assert final["accuracy"] >= 0.9


def test_a_student_distils_an_imported_teacher(qwen_run, tmp_path):
  """distill_lm with an imported Qwen2 as the teacher: the student adopts the teacher's tokenizer (a kind lmjax
  cannot train from data), and its distance to the teacher's distribution falls."""
  c = load_config(qwen_run)  # the teacher's data, tokenizer kind and model family
  c.task = "distill_lm"
  c.model.num_layers = 1  # a smaller student of the same family
  c.distill.update(teacher_workdir=str(qwen_run), alpha=1.0, temperature=1.0)
  c.optim.update(learning_rate=3e-3, warmup_steps=2)
  c.train.update(num_steps=30, steps_per_call=5, log_every=5, eval_every=30, checkpoint_every=30, eval_batches=1,
                 batch_size=8, tensorboard=False, plot=False, num_samples=0)
  student = tmp_path / "student"
  train.train_and_evaluate(c, student, devices=ONE_DEVICE)
  for name in sorted(p.name for p in (qwen_run / "tokenizer").iterdir()):
    assert (student / "tokenizer" / name).read_bytes() == (qwen_run / "tokenizer" / name).read_bytes(), name
  rows = [r for r in read_metrics(student) if r["split"] == "train"]
  assert rows[-1]["kd_loss"] < 0.8 * rows[0]["kd_loss"]


@pytest.mark.slow
def test_t5_encoder_classification(tmp_path):
  """finetune.init_from an imported T5: its encoder (shared embedding, relative bias, layers) starts the classifier."""
  from test_hf_families import _sentencepiece
  d = tmp_path / "t5"
  d.mkdir()
  _sentencepiece(d, "spiece.model", "unigram", vocab_size=150, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
  (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 0}))
  tok = transformers.AutoTokenizer.from_pretrained(d)
  tok.save_pretrained(d)
  config = transformers.T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                 feed_forward_proj="gated-gelu")
  torch.manual_seed(0)
  transformers.T5ForConditionalGeneration(config).save_pretrained(d)
  pairs = tmp_path / "pairs.tsv"
  pairs.write_text("".join(f"{a}\t{a}\n" for a in TRAINING_TEXT), encoding="utf-8")
  base = base_config()
  base.data.source, base.data.paths = "files", str(pairs)
  import_checkpoint(d, tmp_path / "run", base)
  c = load_config(tmp_path / "run")
  c.task, c.data.source, c.data.seq_len = "classification", "embedded", 24
  for name, n, seed in (("train", 200, 0), ("eval", 32, 1)):
    write_sentiment(tmp_path / f"{name}.tsv", n, seed)
    c.finetune[f"{name}_file"] = str(tmp_path / f"{name}.tsv")
  c.finetune.update(init_from=str(tmp_path / "run"), labels="neg,pos")
  c.optim.update(learning_rate=3e-3, warmup_steps=5)
  c.model.dropout = 0.0
  c.train.update(num_steps=60, steps_per_call=10, log_every=10, eval_every=60, checkpoint_every=60, eval_batches=0,
                 batch_size=16, tensorboard=False, plot=False, num_samples=0)
  final = train.train_and_evaluate(c, tmp_path / "cls", devices=ONE_DEVICE)
  assert final["accuracy"] >= 0.9
