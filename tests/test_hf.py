"""Hugging Face interoperability: tiny random GPT-2 and BERT models built with transformers, imported into lmjax,
exported back, and their tokenizers, all compared with transformers on HF ids. No network: vocabularies are trained
here on a few sentences."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from conftest import REPO, single_device_env  # pylint: disable=wrong-import-position
from lmjax.config import base_config  # pylint: disable=wrong-import-position
from lmjax.data.tokenizers import CLS_ID, EOS_ID, MASK_ID, PAD_ID, SEP_ID, UNK_ID, load_tokenizer  # noqa
from lmjax.hf import architectures  # pylint: disable=wrong-import-position
from lmjax.hf.export_checkpoint import export_run, report  # pylint: disable=wrong-import-position
from lmjax.hf.files import HfError  # pylint: disable=wrong-import-position
from lmjax.hf.import_checkpoint import import_checkpoint  # pylint: disable=wrong-import-position
from lmjax.hf.tokenizers import read_wordpiece_tokenizer  # pylint: disable=wrong-import-position
from lmjax.saved_run import open_run  # pylint: disable=wrong-import-position

TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog. It's 12:45, and we'll see 3 dogs!",
    "Café naïve résumé: Ölçü façade — ÀÉÎÕÜ ñ ç ß; Москва, Ελλάδα, 日本語のテキスト, 中文字符.",
    "Numbers 0123456789, 3.14159 and 1,000,000; e-mail: someone@example.com (really?) [yes] {no} <maybe>",
    "Tabs\tand  double  spaces,\n\nnew lines, trailing spaces   \n and emoji 🙂👍 with ½ ² Ⅻ x².",
]
MIXED_TEXT = TRAINING_TEXT + [
    "  leading and trailing whitespace runs    ", "don't, can't, I'M, they'RE you've it'd", "unseen words: zyx qwv",
    "ÅNGSTRÖM Straße İstanbul ΣΟΦΙΑ", "a\u00a0b\u2003c\u200bd\x00e\ufffdf\x07g", "", "\n\n\t \u3000 x",
    "mixed日本English中文123abc", "!!!???...,,,;;", "WORD" * 40,
]


def _rng_ids(vocab_size: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
  return np.random.RandomState(seed).randint(0, vocab_size, shape)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
  """A GPT2LMHeadModel with a byte-level BPE vocabulary trained on TRAINING_TEXT, saved as transformers saves."""
  d = tmp_path_factory.mktemp("gpt2")
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(TRAINING_TEXT * 3, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"])
  bpe.save_model(str(d))
  # The vocabulary's specials at the end, as in GPT-2 (<|endoftext|> = 50256, the last id).
  vocab = json.loads((d / "vocab.json").read_text())
  order = sorted(vocab, key=lambda piece: (piece == "<|endoftext|>", vocab[piece]))
  (d / "vocab.json").write_text(json.dumps({piece: i for i, piece in enumerate(order)}))
  eot = len(order) - 1
  torch.manual_seed(0)
  config = transformers.GPT2Config(vocab_size=len(order), n_positions=48, n_embd=32, n_layer=2, n_head=4,
                                   bos_token_id=eot, eos_token_id=eot)
  model = transformers.GPT2LMHeadModel(config).eval()
  with torch.no_grad():  # non-trivial norms and biases, so a swapped or transposed weight shows
    for name, p in model.named_parameters():
      if "ln" in name or name.endswith("bias"):
        p.add_(torch.randn_like(p) * 0.2)
  model.save_pretrained(d)
  transformers.GPT2Tokenizer.from_pretrained(str(d)).save_pretrained(d)  # tokenizer_config.json, as on the hub
  return d


def _bert_vocab(d: Path) -> None:
  wp = tokenizers.BertWordPieceTokenizer(lowercase=True)
  wp.train_from_iterator(TRAINING_TEXT * 3, vocab_size=300, min_frequency=1)
  wp.save_model(str(d))
  # Specials where bert-base-uncased has them: [PAD] 0, [UNK] 100 would need a large vocabulary; here they move
  # to the middle, so the id map is not the identity.
  pieces = (d / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
  specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  rest = [p for p in pieces if p not in specials]
  pieces = ["[PAD]"] + rest[:20] + specials[1:] + rest[20:]
  (d / "vocab.txt").write_text("".join(p + "\n" for p in pieces), encoding="utf-8")


def _perturb(model) -> None:
  torch.manual_seed(1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "LayerNorm" in name or name.endswith("bias"):
        p.add_(torch.randn_like(p) * 0.2)


def _bert_config(vocab_size: int):
  return transformers.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, max_position_embeddings=40)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
  d = tmp_path_factory.mktemp("bert")
  _bert_vocab(d)
  vocab_size = len((d / "vocab.txt").read_text(encoding="utf-8").split("\n")) - 1
  torch.manual_seed(0)
  model = transformers.BertForPreTraining(_bert_config(vocab_size)).eval()
  _perturb(model)
  model.save_pretrained(d)
  transformers.BertTokenizer.from_pretrained(str(d)).save_pretrained(d)
  return d


@pytest.fixture(scope="module")
def gpt2_run(gpt2_dir, tmp_path_factory) -> Path:
  workdir = tmp_path_factory.mktemp("runs") / "gpt2"
  corpus = workdir.parent / "corpus.txt"
  corpus.write_text("\n\n".join(TRAINING_TEXT * 10), encoding="utf-8")
  base = base_config()
  base.data.source, base.data.paths, base.data.seq_len = "files", str(corpus), 16
  result = import_checkpoint(gpt2_dir, workdir, base)
  assert result.fresh == [] and result.unused == []
  return workdir


@pytest.fixture(scope="module")
def bert_run(bert_dir, tmp_path_factory) -> Path:
  workdir = tmp_path_factory.mktemp("runs") / "bert"
  result = import_checkpoint(bert_dir, workdir)
  assert result.fresh == [] and result.unused == []
  return workdir


def _gpt2_logits(model, ids_BL, mask_BL):
  with torch.no_grad():
    return model(torch.tensor(ids_BL), attention_mask=torch.tensor(mask_BL)).logits.numpy()


def _lmjax_gpt_logits(workdir: Path, ids_hf_BL: np.ndarray, mask_BL: np.ndarray) -> np.ndarray:
  """The lmjax model's logits for HF ids, over HF ids (the comparison happens in the HF id space)."""
  run = open_run(workdir)
  params, _ = run.load_params()
  vocab = run.tokenizer.vocab_map
  apply = jax.jit(run.model().apply)  # one compile instead of one per operation
  logits = apply({"params": params}, vocab.lmjax_of_hf[ids_hf_BL].astype(np.int32),
                 segment_ids_BL=mask_BL.astype(np.int32))
  return np.asarray(logits)[..., vocab.lmjax_of_hf]


def test_gpt2_import_matches_transformers_logits(gpt2_dir, gpt2_run):
  hf_model = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
  V = hf_model.config.vocab_size
  ids = _rng_ids(V, (3, 20))
  mask = np.ones_like(ids)
  mask[1, 13:] = 0  # right padding: logits at real positions must not change
  ref = _gpt2_logits(hf_model, ids, mask)
  ours = _lmjax_gpt_logits(gpt2_run, ids, mask)
  real = mask.astype(bool)
  np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=0)
  config = json.loads((gpt2_run / "config.json").read_text())
  assert config["model"]["activation"] == "gelu" and config["model"]["norm_eps"] == 1e-5
  assert config["tokenizer"]["kind"] == "hf_bpe" and config["task"] == "causal_lm"


def test_gpt2_export_reloads_in_transformers(gpt2_dir, gpt2_run, tmp_path):
  out = tmp_path / "exported"
  result = export_run(gpt2_run, out)
  assert result.architecture == "gpt2" and "vocab.json" in result.tokenizer_files
  original = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  ids = _rng_ids(original.config.vocab_size, (2, 24), seed=1)
  mask = np.ones_like(ids)
  np.testing.assert_allclose(_gpt2_logits(reloaded, ids, mask), _gpt2_logits(original, ids, mask), atol=1e-5, rtol=0)
  hf_tok = transformers.AutoTokenizer.from_pretrained(out)
  reference = transformers.GPT2Tokenizer.from_pretrained(str(gpt2_dir))
  for text in MIXED_TEXT:
    assert hf_tok(text)["input_ids"] == reference(text)["input_ids"], text


def test_gpt2_tokenizer_matches_transformers(gpt2_dir, gpt2_run):
  reference = transformers.GPT2Tokenizer.from_pretrained(str(gpt2_dir))
  ours = load_tokenizer(gpt2_run / "tokenizer")  # the saved copy, as generation and training load it
  vocab = ours.vocab_map
  eot = reference.convert_tokens_to_ids("<|endoftext|>")
  assert vocab.lmjax_of_hf[eot] == EOS_ID and vocab.copies == {"bos": eot}
  assert ours.vocab_size == reference.vocab_size + 6  # <pad> <bos> <unk> <mask> <sep> <cls> are extra rows
  byte_lengths = ours.token_byte_lengths()
  for text in MIXED_TEXT:
    ids = ours.encode(text)
    assert vocab.hf_of_lmjax[ids].tolist() == reference(text)["input_ids"], text
    assert ids.min(initial=7) >= 7  # text never produces specials
    assert ours.decode(ids) == text  # byte-level BPE is lossless
    assert byte_lengths[ids].sum() == len(text.encode("utf-8"))
    assert ours.token_char_lengths()[ids].sum() == len(text)


def test_generate_cli_greedy_matches_transformers(gpt2_dir, gpt2_run):
  """`lmjax.generate` runs unchanged on an imported run; greedy text equals transformers' greedy decoding of
  <|endoftext|> + prompt (GPT-2's document start, which lmjax's <bos> copies)."""
  prompt = "The quick brown"
  result = subprocess.run([sys.executable, "-m", "lmjax.generate", f"--workdir={gpt2_run}", f"--prompt={prompt}",
                           "--temperature=0", "--max_new_tokens=12"], cwd=REPO, env=single_device_env(),
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  text = result.stdout.split("--- prompt 1 sample 1 ---\n", 1)[1].rstrip("\n")
  model = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
  tok = transformers.GPT2Tokenizer.from_pretrained(str(gpt2_dir))
  eot = tok.convert_tokens_to_ids("<|endoftext|>")
  ids = torch.tensor([[eot] + tok(prompt)["input_ids"]])
  # No early stop: when <|endoftext|> is the argmax, lmjax picks its <bos> copy and goes on with the same input.
  with torch.no_grad():
    out = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=eot)
  assert text == prompt + tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_imported_checkpoint_restores_as_training_resumes_it(gpt2_run):
  """The trainer's restore on the imported workdir: the same state structure (built from the run's config as
  lmjax.train builds it), the imported parameters, and a data iterator left at its start (the step-0 checkpoint
  has no data position)."""
  import grain
  from lmjax.checkpoint import Checkpointer, load_saved_state
  from lmjax.optim import make_optimizer
  from lmjax.state import abstract_train_state
  from lmjax.tasks import get_task
  from lmjax.tasks.base import VocabInfo
  spec = importlib.util.spec_from_file_location("workdir_config", REPO / "lmjax/hf/workdir_config.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(str(gpt2_run))  # what `lmjax.main --config=lmjax/hf/workdir_config.py:RUN` runs
  run = open_run(gpt2_run)
  task = get_task(config.task).create(config, VocabInfo(run.tokenizer.vocab_size))
  target = abstract_train_state(task.model, make_optimizer(config.optim, config.train.num_steps), config.seed,
                                task.init_args())
  iterator = iter(grain.MapDataset.range(10).to_iter_dataset())
  next(iterator)
  position = iterator.get_state()
  checkpointer = Checkpointer(gpt2_run / "checkpoints", keep=3, every=1, async_save=False)
  state, step = checkpointer.restore_latest(target, iterator)
  checkpointer.close()
  assert step == 0 and int(state.step) == 0 and iterator.get_state() == position
  imported = load_saved_state(gpt2_run / "checkpoints")["params"]
  np.testing.assert_array_equal(np.asarray(state.params["embed"]["embedding"]), imported["embed"]["embedding"])


def _bert_inputs(vocab_size: int):
  ids = _rng_ids(vocab_size, (3, 16), seed=2)
  mask = np.ones_like(ids)
  mask[1, 9:] = 0
  mask[2, 4:] = 0
  types = np.zeros_like(ids)
  types[:, 8:] = 1
  return ids, mask, types * mask


def test_bert_import_matches_transformers_logits(bert_dir, bert_run):
  hf_model = transformers.BertForPreTraining.from_pretrained(bert_dir).eval()
  ids, mask, types = _bert_inputs(hf_model.config.vocab_size)
  with torch.no_grad():
    ref = hf_model(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
  run = open_run(bert_run)
  params, _ = run.load_params()
  vocab = run.tokenizer.vocab_map
  out = jax.jit(run.model().apply)({"params": params}, vocab.lmjax_of_hf[ids].astype(np.int32),
                                   types.astype(np.int32), mask.astype(np.int32))
  real = mask.astype(bool)
  mlm = np.asarray(out["mlm_logits"])[..., vocab.lmjax_of_hf]
  np.testing.assert_allclose(mlm[real], ref.prediction_logits.numpy()[real], atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(out["nsp_logits"]), ref.seq_relationship_logits.numpy(), atol=1e-4, rtol=0)
  config = run.config.model
  assert (config.activation, config.norm_eps, config.pre_norm) == ("gelu_exact", 1e-12, False)
  tok = transformers.BertTokenizer.from_pretrained(str(bert_dir))
  for role_id, token in ((PAD_ID, "[PAD]"), (UNK_ID, "[UNK]"), (CLS_ID, "[CLS]"), (SEP_ID, "[SEP]"),
                         (MASK_ID, "[MASK]")):
    assert vocab.lmjax_of_hf[tok.convert_tokens_to_ids(token)] == role_id


@pytest.mark.parametrize("head", ["BertForMaskedLM", "BertModel"])
def test_bert_other_layouts_import(head, bert_dir, tmp_path):
  """BertForMaskedLM (no pooler, no NSP head) and BertModel (no heads) import their parts; the rest is fresh."""
  from lmjax.models.encoder import Encoder
  d = tmp_path / head
  d.mkdir()
  for name in ("vocab.txt", "tokenizer_config.json"):
    (d / name).write_bytes((bert_dir / name).read_bytes())
  vocab_size = len(read_wordpiece_tokenizer(d, 0).vocab)
  torch.manual_seed(3)
  hf_model = getattr(transformers, head)(_bert_config(vocab_size)).eval()
  _perturb(hf_model)
  hf_model.save_pretrained(d)
  result = import_checkpoint(d, tmp_path / "run")
  assert result.fresh == (["nsp_head", "pooler"] if head == "BertForMaskedLM" else ["mlm_head", "nsp_head"])
  ids, mask, types = _bert_inputs(vocab_size)
  run = open_run(tmp_path / "run")
  params, _ = run.load_params()
  lm_ids = run.tokenizer.vocab_map.lmjax_of_hf[ids].astype(np.int32)
  real = mask.astype(bool)
  with torch.no_grad():
    ref = hf_model(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
  if head == "BertModel":
    hidden = jax.jit(Encoder(run.model_config()).apply)({"params": params["encoder"]}, lm_ids,
                                                        types.astype(np.int32), mask.astype(np.int32))
    np.testing.assert_allclose(np.asarray(hidden)[real], ref.last_hidden_state.numpy()[real], atol=1e-4, rtol=0)
  else:
    out = jax.jit(run.model().apply)({"params": params}, lm_ids, types.astype(np.int32), mask.astype(np.int32))
    mlm = np.asarray(out["mlm_logits"])[..., run.tokenizer.vocab_map.lmjax_of_hf]
    np.testing.assert_allclose(mlm[real], ref.logits.numpy()[real], atol=1e-4, rtol=0)
  assert jax.tree_util.tree_leaves(params["nsp_head"])  # present, freshly initialized


def test_bert_export_reloads_in_transformers(bert_dir, bert_run, tmp_path):
  out = tmp_path / "exported"
  export_run(bert_run, out)
  original = transformers.BertForPreTraining.from_pretrained(bert_dir).eval()
  ids, mask, types = _bert_inputs(original.config.vocab_size)
  inputs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
  with torch.no_grad():
    ref = original(**inputs)
    pretraining = transformers.AutoModelForPreTraining.from_pretrained(out).eval()(**inputs)
    masked_lm = transformers.BertForMaskedLM.from_pretrained(out).eval()(**inputs)
  for got in (pretraining.prediction_logits, masked_lm.logits):
    np.testing.assert_allclose(got.numpy(), ref.prediction_logits.numpy(), atol=1e-5, rtol=0)
  np.testing.assert_allclose(pretraining.seq_relationship_logits.numpy(), ref.seq_relationship_logits.numpy(),
                             atol=1e-5, rtol=0)
  hf_tok = transformers.AutoTokenizer.from_pretrained(out)
  assert hf_tok("Café naïve, don't!")["input_ids"] == \
      transformers.BertTokenizer.from_pretrained(str(bert_dir))("Café naïve, don't!")["input_ids"]


@pytest.mark.parametrize("cased", [False, True])
def test_wordpiece_tokenizer_matches_transformers(cased, bert_dir, tmp_path):
  d = tmp_path / "tok"
  d.mkdir()
  (d / "vocab.txt").write_bytes((bert_dir / "vocab.txt").read_bytes())
  (d / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": not cased}))
  reference = transformers.BertTokenizer.from_pretrained(str(d), do_lower_case=not cased)
  ours = read_wordpiece_tokenizer(d, 0)
  ours.save(tmp_path / "saved")
  ours = load_tokenizer(tmp_path / "saved")
  vocab = ours.vocab_map
  for text in MIXED_TEXT:
    ids = ours.encode(text)
    assert vocab.hf_of_lmjax[ids].tolist() == reference(text, add_special_tokens=False)["input_ids"], text
  if not cased:  # pieces join back into the normalized words: lowercased, accents stripped
    assert ours.decode(ours.encode("Café NAÏVE, façade!")) == "cafe naive , facade !"
  lengths = ours.token_byte_lengths()
  assert lengths[:7].sum() == 0 and (lengths[7:] >= 0).all()


def _native_gpt_run(workdir: Path, **model_fields) -> None:
  """A run with an lmjax byte tokenizer, written the way training writes one (config, tokenizer, step checkpoint)."""
  from lmjax.checkpoint import Checkpointer
  from lmjax.models import model_config
  from lmjax.data.tokenizers import ByteTokenizer
  from lmjax.models import build_model
  from lmjax.state import strip_boxes
  config = base_config()
  config.tokenizer.kind = "byte"
  config.model.update(dict(num_layers=1, d_model=32, num_heads=4, mlp_dim=64, max_len=32, **model_fields))
  config.data.seq_len = 32
  workdir.mkdir(parents=True)
  (workdir / "config.json").write_text(json.dumps(config.to_dict()))
  ByteTokenizer().save(workdir / "tokenizer")
  model = build_model(model_config(config, ByteTokenizer.vocab_size))
  # Only the parameters matter to export (it reads nothing else of the state).
  state = {"params": strip_boxes(jax.jit(model.init)(jax.random.PRNGKey(0), np.zeros((1, 8), np.int32))["params"])}
  checkpointer = Checkpointer(workdir / "checkpoints", keep=1, every=1, async_save=False)
  checkpointer.save(5, state, force=True)
  checkpointer.close()


def test_export_native_tokenizer_run(tmp_path):
  """An lmjax-native GPT exports weights and config; HF ids are lmjax ids; the CLI says the tokenizer is lmjax's."""
  workdir = tmp_path / "native"
  _native_gpt_run(workdir, activation="gelu_exact", norm_eps=1e-6)
  result = export_run(workdir, tmp_path / "out")
  assert result.step == 5 and result.tokenizer_files == []
  lines = report(result, workdir)  # what the CLI prints
  assert len(lines) == 2 and "lmjax-specific" in lines[1] and "'byte'" in lines[1]
  assert json.loads((tmp_path / "out" / "lmjax_special_ids.json").read_text())["<eos>"] == EOS_ID
  hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
  assert hf_model.config.activation_function == "gelu" and hf_model.config.layer_norm_epsilon == 1e-6
  ids = _rng_ids(263, (2, 10), seed=4)
  run = open_run(workdir)
  params, _ = run.load_params()
  ours = np.asarray(jax.jit(run.model().apply)({"params": params}, ids.astype(np.int32)))
  np.testing.assert_allclose(_gpt2_logits(hf_model, ids, np.ones_like(ids)), ours, atol=1e-4, rtol=0)


@pytest.mark.parametrize("field,value", [("position", "rope"), ("position", "alibi"), ("norm", "rmsnorm"),
                                         ("activation", "swiglu"), ("num_kv_heads", 2), ("pre_norm", False),
                                         ("use_bias", False), ("name", "lstm")])
def test_export_refuses_what_hf_cannot_represent(field, value):
  model = base_config().model
  model[field] = value
  with pytest.raises(HfError, match=rf"config\.model\.{field}=") as err:
    architectures.for_export(model)
  assert "\n" not in str(err.value)


def test_import_errors_are_one_line(gpt2_dir, tmp_path):
  def error(hf_dir) -> str:
    with pytest.raises(HfError) as err:
      import_checkpoint(hf_dir, tmp_path / "unused")
    assert "\n" not in str(err.value)
    return str(err.value)

  assert "huggingface-cli download bert-base-uncased" in error("bert-base-uncased")
  assert "no such directory" in error(str(tmp_path / "missing"))
  assert "config.json is missing" in error(tmp_path)
  d = tmp_path / "neox"
  d.mkdir()
  (d / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
  assert "model_type='gpt_neox' is not supported" in error(d)
  d = tmp_path / "noweights"
  d.mkdir()
  for name in ("config.json", "vocab.json", "merges.txt"):
    (d / name).write_bytes((gpt2_dir / name).read_bytes())
  assert "has no weights" in error(d) and "model.safetensors" in error(d)
  (d / "vocab.json").unlink()
  assert "vocab.json and merges.txt" in error(d)
  d = tmp_path / "rotary"
  d.mkdir()
  (d / "config.json").write_text(json.dumps({"model_type": "bert", "position_embedding_type": "relative_key"}))
  assert "position_embedding_type='relative_key'" in error(d)


def test_import_cli_hub_name_is_one_line_error(tmp_path):
  result = subprocess.run([sys.executable, "-m", "lmjax.hf.import_checkpoint", "--hf_dir=gpt2",
                           f"--workdir={tmp_path / 'run'}"], cwd=REPO, env=single_device_env(), capture_output=True,
                          text=True, timeout=120, check=False)
  assert result.returncode == 2
  assert result.stderr.strip().count("\n") == 0 and "huggingface-cli download gpt2" in result.stderr


def test_import_from_pytorch_bin(bert_dir, tmp_path):
  """pytorch_model.bin (through torch) imports to the same parameters as model.safetensors."""
  from lmjax.hf.files import read_weights
  d = tmp_path / "bin"
  d.mkdir()
  for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
    (d / name).write_bytes((bert_dir / name).read_bytes())
  model = transformers.BertForPreTraining.from_pretrained(bert_dir)
  torch.save(model.state_dict(), d / "pytorch_model.bin")
  from_bin, from_safetensors = read_weights(d), read_weights(bert_dir)
  assert set(from_safetensors) <= set(from_bin)
  for name, value in from_safetensors.items():
    np.testing.assert_array_equal(from_bin[name], value)
