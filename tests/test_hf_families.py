"""Llama, Mistral, Qwen2, Gemma and T5 checkpoints in and out of lmjax, against transformers: tiny random models that
transformers builds locally (no hub), their tokenizers trained here on a few sentences."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
spm = pytest.importorskip("sentencepiece")

from lmjax import decode  # pylint: disable=wrong-import-position
from lmjax.config import base_config  # pylint: disable=wrong-import-position
from lmjax.data.tokenizers import BOS_ID, EOS_ID, load_tokenizer  # pylint: disable=wrong-import-position
from lmjax.hf.export_checkpoint import export_run  # pylint: disable=wrong-import-position
from lmjax.hf.files import HfError  # pylint: disable=wrong-import-position
from lmjax.hf.import_checkpoint import import_checkpoint  # pylint: disable=wrong-import-position
from lmjax.saved_run import load_config, open_run  # pylint: disable=wrong-import-position
from test_hf import MIXED_TEXT, TRAINING_TEXT  # pylint: disable=wrong-import-position

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIAL_TEXT = ["<s>hello</s> world<unk>", "<|im_start|>user\nHi 🙂<|im_end|>\n", "a</s>b  <pad> c"]


def _sentencepiece(d: Path, name: str, model_type: str, **ids) -> Path:
  spm.SentencePieceTrainer.train(sentence_iterator=iter(TRAINING_TEXT * 5), model_prefix=str(d / "sp"),
                                 vocab_size=ids.pop("vocab_size"), model_type=model_type, character_coverage=1.0,
                                 hard_vocab_limit=False, minloglevel=2, **ids)
  (d / "sp.model").rename(d / name)
  (d / "sp.vocab").unlink()
  return d / name


@pytest.fixture(scope="module")
def sp_tokenizer_dir(tmp_path_factory) -> Path:
  """A Llama-2-style tokenizer: a SentencePiece BPE model with byte fallback, and the tokenizer.json transformers
  converts it to, with a chat template."""
  d = tmp_path_factory.mktemp("llama_tok")
  _sentencepiece(d, "tokenizer.model", "bpe", vocab_size=400, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                 byte_fallback=True, split_digits=True, normalization_rule_name="identity",
                 remove_extra_whitespaces=False, allow_whitespace_only_pieces=True)
  (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
  tok = transformers.AutoTokenizer.from_pretrained(d)
  tok.chat_template = CHATML
  tok.save_pretrained(d)
  return d


@pytest.fixture(scope="module")
def bytelevel_tokenizer_dir(tmp_path_factory) -> Path:
  """A Qwen2-style tokenizer: byte-level BPE with added chat tokens and no <bos>."""
  d = tmp_path_factory.mktemp("qwen_tok")
  bpe = tokenizers.ByteLevelBPETokenizer()
  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  bpe.train_from_iterator(TRAINING_TEXT * 3, vocab_size=380, min_frequency=1, special_tokens=specials)
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|im_end|>",
                                             pad_token="<|endoftext|>")
  tok.chat_template = CHATML
  tok.save_pretrained(d)
  return d


def _perturb(model, seed: int = 1) -> None:
  """Non-trivial norms and biases, so that a swapped or transposed weight shows."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or name.endswith("bias"):
        p.add_(torch.randn_like(p) * 0.2)


def _llama_family(kind: str, tok_dir: Path, d: Path):
  common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=128, rms_norm_eps=1e-5)
  vocab = len(transformers.AutoTokenizer.from_pretrained(tok_dir))
  if kind == "llama":  # Llama 3.1: grouped-query attention, llama3 rope scaling, its own output head
    config = transformers.LlamaConfig(vocab_size=vocab, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                                      rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                                      tie_word_embeddings=False, **common)
    model = transformers.LlamaForCausalLM(config)
  elif kind == "mistral":  # linear rope scaling, a sliding window as long as the context
    config = transformers.MistralConfig(vocab_size=vocab, num_key_value_heads=1, sliding_window=128,
                                        rope_scaling={"rope_type": "linear", "factor": 2.0}, bos_token_id=1,
                                        eos_token_id=2, **common)
    model = transformers.MistralForCausalLM(config)
  elif kind == "qwen2":  # q/k/v biases, one key/value head per query head, tied embeddings
    config = transformers.Qwen2Config(vocab_size=vocab + 5, num_key_value_heads=4, tie_word_embeddings=True,
                                      rope_theta=1e6, **common)
    model = transformers.Qwen2ForCausalLM(config)
  else:  # gemma: its own head width, embedding scale, norms around 1 + scale
    config = transformers.GemmaConfig(vocab_size=vocab, num_key_value_heads=1, head_dim=16, pad_token_id=None,
                                      bos_token_id=1, eos_token_id=2, **common)
    model = transformers.GemmaForCausalLM(config)
  torch.manual_seed(0)
  model = type(model)(config).eval()
  _perturb(model)
  model.save_pretrained(d)
  for f in tok_dir.iterdir():
    shutil.copy(f, d / f.name)
  return d


FAMILIES = ("llama", "mistral", "qwen2", "gemma")


@pytest.fixture(scope="module", params=FAMILIES)
def family_run(request, sp_tokenizer_dir, bytelevel_tokenizer_dir, tmp_path_factory):
  kind = request.param
  tok_dir = bytelevel_tokenizer_dir if kind == "qwen2" else sp_tokenizer_dir
  d = _llama_family(kind, tok_dir, tmp_path_factory.mktemp(kind))
  workdir = tmp_path_factory.mktemp("runs") / kind
  result = import_checkpoint(d, workdir)
  assert result.fresh == [] and result.unused == [], (result.fresh, result.unused)
  return kind, d, workdir


def _hf_logits(model, ids_BL, mask_BL) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(ids_BL), attention_mask=torch.tensor(mask_BL)).logits.float().numpy()


def _lmjax_logits(workdir: Path, ids_hf_BL: np.ndarray, mask_BL: np.ndarray) -> np.ndarray:
  """The lmjax model's log-probabilities over the whole lmjax vocabulary, for HF ids."""
  run = open_run(workdir)
  params, _ = run.load_params()
  vocab = run.tokenizer.vocab_map
  logits = jax.jit(run.model().apply)({"params": params}, vocab.lmjax_of_hf[ids_hf_BL].astype(np.int32),
                                      segment_ids_BL=mask_BL.astype(np.int32))
  return np.asarray(logits)


def _ragged(vocab_size: int, seed: int = 0):
  ids = np.random.RandomState(seed).randint(3, vocab_size, (3, 24))
  mask = np.ones_like(ids)
  mask[1, 15:] = 0
  mask[2, 5:] = 0
  return ids, mask


def test_logits_and_log_probabilities_match_transformers(family_run):
  """Logits equal on ragged batches; log-probabilities too: the rows the checkpoint lacks hold no mass."""
  kind, d, workdir = family_run
  hf = transformers.AutoModelForCausalLM.from_pretrained(d).eval()
  ids, mask = _ragged(hf.config.vocab_size)
  ref = _hf_logits(hf, ids, mask)
  ours = _lmjax_logits(workdir, ids, mask)
  vocab = open_run(workdir).tokenizer.vocab_map
  real = mask.astype(bool)
  np.testing.assert_allclose(ours[..., vocab.lmjax_of_hf][real], ref[real], atol=1e-4, rtol=0)
  ref_logp = jax.nn.log_softmax(ref, axis=-1)
  our_logp = np.asarray(jax.nn.log_softmax(ours, axis=-1))
  np.testing.assert_allclose(our_logp[..., vocab.lmjax_of_hf][real], ref_logp[real], atol=1e-4, rtol=0)
  extra = vocab.hf_of_lmjax < 0
  assert extra.any() and np.exp(our_logp[..., extra][real]).max() == 0.0
  model = open_run(workdir).config.model
  expected = {"llama": ("llama3", 2, 0, False), "mistral": ("linear", 1, 0, False), "qwen2": ("none", 0, 0, True),
              "gemma": ("none", 1, 16, True)}[kind]
  assert (model.rope_scaling, model.num_kv_heads, model.head_width, model.tie_embeddings) == expected


@pytest.mark.slow
def test_greedy_generation_matches_transformers(family_run):
  kind, d, workdir = family_run
  if kind in ("mistral", "gemma"):
    pytest.skip("decoding is the same program for every family; llama and qwen2 (no <bos> of its own) cover it")
  hf = transformers.AutoModelForCausalLM.from_pretrained(d).eval()
  run = open_run(workdir)
  vocab = run.tokenizer.vocab_map
  start = vocab.owned.get("bos", vocab.copies.get("bos"))  # lmjax's <bos> is this HF token's row
  prompts = [[5, 17, 30, 9], [44, 8]]
  never = [vocab.owned[r] for r in ("pad", "bos") if r in vocab.owned]  # lmjax never emits <pad> or <bos>
  params, _ = run.load_params()
  decoder = decode.step_decoder(run.model())
  prompt_BP = np.zeros((2, 5), np.int32)
  for r, p in enumerate(prompts):
    prompt_BP[r, :len(p) + 1] = [BOS_ID, *vocab.lmjax_of_hf[p]]
  tokens = jax.jit(lambda p, t, n: decode.generate(decoder, p, t, n, jax.random.PRNGKey(0), max_new_tokens=32,
                                                   temperature=0.0, eos_id=None))(
                                                       params, jnp.asarray(prompt_BP),
                                                       jnp.asarray([len(p) + 1 for p in prompts]))
  for r, p in enumerate(prompts):
    with torch.no_grad():
      out = hf.generate(torch.tensor([[start, *p]]), max_new_tokens=32, do_sample=False, eos_token_id=None,
                        pad_token_id=0, suppress_tokens=never or None)
    ours = vocab.hf_of_lmjax[np.asarray(tokens[r, len(p) + 1:len(p) + 33])].tolist()
    assert ours == out[0, len(p) + 1:].tolist(), kind


def test_export_reloads_in_transformers_and_round_trips_exactly(family_run, tmp_path):
  kind, d, workdir = family_run
  out = tmp_path / "exported"
  result = export_run(workdir, out)
  assert result.architecture == kind and "tokenizer.json" in result.tokenizer_files
  original = transformers.AutoModelForCausalLM.from_pretrained(d).eval()
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  ids, mask = _ragged(original.config.vocab_size, seed=1)
  np.testing.assert_allclose(_hf_logits(reloaded, ids, mask), _hf_logits(original, ids, mask), atol=1e-5, rtol=0)
  again = import_checkpoint(out, tmp_path / "again")
  assert again.fresh == [] and again.unused == []
  first, second = open_run(workdir).load_params()[0], open_run(tmp_path / "again").load_params()[0]
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), first, second)
  assert json.loads((tmp_path / "again" / "config.json").read_text())["model"] == \
      json.loads((workdir / "config.json").read_text())["model"]
  assert transformers.AutoTokenizer.from_pretrained(out)(MIXED_TEXT[1])["input_ids"] == \
      transformers.AutoTokenizer.from_pretrained(d)(MIXED_TEXT[1])["input_ids"]


@pytest.mark.parametrize("which", ["sentencepiece_json", "bytelevel_json"])
def test_checkpoint_tokenizers_match_autotokenizer(which, sp_tokenizer_dir, bytelevel_tokenizer_dir, tmp_path):
  """tokenizer.json through the tokenizers library: AutoTokenizer's ids on mixed text, special tokens included;
  lmjax's <bos> is the checkpoint's where it has one; lossless decoding and byte lengths."""
  from lmjax.hf.llama import read_tokenizer
  d = sp_tokenizer_dir if which == "sentencepiece_json" else bytelevel_tokenizer_dir
  reference = transformers.AutoTokenizer.from_pretrained(d)
  ours = read_tokenizer(d, 0)
  ours.save(tmp_path / "saved")
  ours = load_tokenizer(tmp_path / "saved")
  assert ours.kind == "hf_tokenizer"
  vocab = ours.vocab_map
  for text in MIXED_TEXT + SPECIAL_TEXT:
    ids = ours.encode(text)
    assert vocab.hf_of_lmjax[ids].tolist() == reference(text, add_special_tokens=False)["input_ids"], text
  if which == "sentencepiece_json":
    assert vocab.lmjax_of_hf[reference.bos_token_id] == BOS_ID
  else:
    assert "bos" not in vocab.owned and vocab.copies == {"bos": reference.convert_tokens_to_ids("<|im_end|>")}
  lengths = ours.token_byte_lengths()
  for text in TRAINING_TEXT:
    ids = ours.encode(text)
    assert ours.decode(ids).strip() == text.strip()
    if which == "bytelevel_json":
      assert lengths[ids].sum() == len(text.encode("utf-8"))


def test_sentencepiece_model_file_tokenizer(sp_tokenizer_dir, tmp_path):
  """A checkpoint with only tokenizer.model reads it with sentencepiece: transformers' ids, specials parsed, except
  where its on-the-fly conversion treats a leading space differently (documented in lmjax/hf/tokenizers.py)."""
  from lmjax.hf.llama import read_tokenizer
  d = tmp_path / "sp_only"
  d.mkdir()
  for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
    if (sp_tokenizer_dir / name).exists():
      shutil.copy(sp_tokenizer_dir / name, d / name)
  ours = read_tokenizer(d, 0)
  assert ours.kind == "hf_sentencepiece"
  reference = transformers.AutoTokenizer.from_pretrained(sp_tokenizer_dir)
  for text in MIXED_TEXT + SPECIAL_TEXT:
    if text[:1].isspace():
      continue
    ids = ours.vocab_map.hf_of_lmjax[ours.encode(text)].tolist()
    assert ids == reference(text, add_special_tokens=False)["input_ids"], text
  assert ours.decode(ours.encode("The quick brown fox")) == "The quick brown fox"


def test_refusals_name_the_field(tmp_path):
  from lmjax.hf import llama
  base = {"model_type": "mistral", "hidden_size": 32, "num_attention_heads": 4, "max_position_embeddings": 4096}
  for hf, field in (({**base, "sliding_window": 512}, "sliding_window=512"),
                    ({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling type 'yarn'"),
                    ({**base, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 64},
                     "sliding_window=64"),
                    ({**base, "hidden_act": "relu2"}, "hidden_act='relu2'")):
    with pytest.raises(HfError, match=field) as err:
      llama.model_fields(hf)
    assert "\n" not in str(err.value)
  assert llama.model_fields({**base, "sliding_window": 4096})["rope_scaling"] == "none"  # the window covers it all


# --- T5 ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["v1_1", "v1_0"])
def t5_run(request, tmp_path_factory):
  """T5 v1.1 / Flan-T5 (gated GELU, own head, d_kv not d_model / heads) and v1.0 (ReLU, tied and scaled head)."""
  d = tmp_path_factory.mktemp("t5_" + request.param)
  _sentencepiece(d, "spiece.model", "unigram", vocab_size=150, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
  (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 0}))
  tok = transformers.AutoTokenizer.from_pretrained(d)
  tok.save_pretrained(d)
  v11 = request.param == "v1_1"
  config = transformers.T5Config(vocab_size=len(tok), d_model=32, d_kv=6 if v11 else 8, d_ff=48, num_layers=2,
                                 num_decoder_layers=3 if v11 else 2, num_heads=4, relative_attention_num_buckets=8,
                                 relative_attention_max_distance=20,
                                 feed_forward_proj="gated-gelu" if v11 else "relu", decoder_start_token_id=0)
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(config).eval()
  _perturb(model)
  model.save_pretrained(d)
  if v11:  # a separate output head, as the hub's v1.1 checkpoints store it
    from safetensors.torch import load_file, save_file
    weights = load_file(d / "model.safetensors")
    weights["lm_head.weight"] = torch.randn_like(weights["shared.weight"])
    save_file(weights, d / "model.safetensors", metadata={"format": "pt"})
    hf = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**hf, "tie_word_embeddings": False, "scale_decoder_outputs": False}))
  workdir = tmp_path_factory.mktemp("runs") / "t5"
  pairs = workdir.parent / "pairs.tsv"  # a seq2seq run reads parallel text
  pairs.write_text("".join(f"{a}\t{b}\n" for a, b in zip(TRAINING_TEXT, TRAINING_TEXT[1:] * 2)), encoding="utf-8")
  base = base_config()
  base.data.source, base.data.paths = "files", str(pairs)
  result = import_checkpoint(d, workdir, base)
  assert result.fresh == [] and result.unused == [], (result.fresh, result.unused)
  return request.param, d, workdir


def _t5_inputs(vocab_size: int):
  rng = np.random.RandomState(3)
  source = rng.randint(3, vocab_size, (3, 12))
  source_mask = np.ones_like(source)
  source_mask[1, 7:] = 0
  source_mask[2, 3:] = 0
  target = rng.randint(3, vocab_size, (3, 9))
  target[:, 0] = 0  # T5's decoder start
  target_mask = np.ones_like(target)
  target_mask[0, 6:] = 0
  return source, source_mask, target, target_mask


def test_t5_encoder_and_decoder_match_transformers(t5_run):
  version, d, workdir = t5_run
  hf = transformers.T5ForConditionalGeneration.from_pretrained(d).eval()
  source, source_mask, target, target_mask = _t5_inputs(hf.config.vocab_size)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(source), attention_mask=torch.tensor(source_mask),
             decoder_input_ids=torch.tensor(target), decoder_attention_mask=torch.tensor(target_mask))
  run = open_run(workdir)
  params, _ = run.load_params()
  vocab = run.tokenizer.vocab_map
  model = run.model()
  to_ours = lambda ids: vocab.lmjax_of_hf[ids].astype(np.int32)
  target_ours = to_ours(target)
  target_ours[:, 0] = BOS_ID  # lmjax's decoder start, whose row is T5's pad
  encoded = jax.jit(lambda p, s, m: model.apply({"params": p}, s, m, method="encode"))(
      params, to_ours(source), source_mask.astype(np.int32))
  real = source_mask.astype(bool)
  np.testing.assert_allclose(np.asarray(encoded)[real], ref.encoder_last_hidden_state.numpy()[real], atol=1e-4)
  logits = np.asarray(jax.jit(model.apply)({"params": params}, to_ours(source), target_ours,
                                           source_mask.astype(np.int32), target_mask.astype(np.int32)))
  real = target_mask.astype(bool)
  np.testing.assert_allclose(logits[..., vocab.lmjax_of_hf][real], ref.logits.numpy()[real], atol=1e-4, rtol=0)
  logp = np.asarray(jax.nn.log_softmax(logits, -1))[..., vocab.lmjax_of_hf]
  np.testing.assert_allclose(logp[real], jax.nn.log_softmax(ref.logits.numpy(), -1)[real], atol=1e-4, rtol=0)
  m = run.config.model
  assert (m.tie_embeddings, m.scale_decoder_output, m.activation) == (
      (False, False, "geglu") if version == "v1_1" else (True, True, "relu"))


def test_t5_beam_search_matches_transformers(t5_run):
  _, d, workdir = t5_run
  hf = transformers.T5ForConditionalGeneration.from_pretrained(d).eval()
  run = open_run(workdir)
  params, _ = run.load_params()
  vocab = run.tokenizer.vocab_map
  sources = [[5, 9, 14, 22, 1], [31, 7, 1]]  # ending with </s>, as T5's tokenizer writes them
  source_BS = np.zeros((2, 5), np.int32)
  for r, s in enumerate(sources):
    source_BS[r, :len(s)] = vocab.lmjax_of_hf[s]
  decoder = decode.step_decoder(run.model())
  inputs = {"tokens": jnp.asarray(source_BS), "lengths": jnp.asarray([len(s) for s in sources], jnp.int32)}
  tokens, scores = jax.jit(lambda p, t, n, e: decode.beam_search(decoder, p, t, n, beam_size=3, max_new_tokens=10,
                                                                 alpha=0.0, encoder_inputs=e))(
      params, jnp.full((2, 1), BOS_ID, jnp.int32), jnp.ones((2,), jnp.int32), inputs)
  for r, s in enumerate(sources):
    with torch.no_grad():
      out = hf.generate(torch.tensor([s]), num_beams=3, max_new_tokens=10, length_penalty=0.0, do_sample=False,
                        suppress_tokens=[0], output_scores=True, return_dict_in_generate=True,
                        use_cache=False)  # transformers 5 caches num_layers layers, not num_decoder_layers
    best = vocab.hf_of_lmjax[np.asarray(tokens[r, 0, 1:])].tolist()
    want = out.sequences[0, 1:].tolist()
    assert best[:len(want)] == want
    assert float(scores[r, 0]) == pytest.approx(float(out.sequences_scores[0]), abs=1e-4)


def test_t5_export_reloads_and_round_trips(t5_run, tmp_path):
  _, d, workdir = t5_run
  export_run(workdir, tmp_path / "out")
  original = transformers.T5ForConditionalGeneration.from_pretrained(d).eval()
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
  source, source_mask, target, target_mask = _t5_inputs(original.config.vocab_size)
  inputs = dict(input_ids=torch.tensor(source), attention_mask=torch.tensor(source_mask),
                decoder_input_ids=torch.tensor(target), decoder_attention_mask=torch.tensor(target_mask))
  with torch.no_grad():
    np.testing.assert_allclose(reloaded(**inputs).logits.numpy(), original(**inputs).logits.numpy(), atol=1e-5)
  import_checkpoint(tmp_path / "out", tmp_path / "again", load_config(workdir))
  first, second = open_run(workdir).load_params()[0], open_run(tmp_path / "again").load_params()[0]
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), first, second)
  tok = load_tokenizer(workdir / "tokenizer")
  reference = transformers.AutoTokenizer.from_pretrained(d)
  for text in MIXED_TEXT + ["a </s> b <unk>"]:
    assert tok.vocab_map.hf_of_lmjax[tok.encode(text)].tolist() + [1] == reference(text)["input_ids"], text
  assert tok.vocab_map.lmjax_of_hf[1] == EOS_ID
