"""The encoder-decoder and task='seq2seq': cached decoding equals full recomputation, beam size 1 equals greedy, a
tiny model learns to reverse strings (BLEU > 90), our metrics equal sacrebleu and rouge-score, parallel-data
readers fail in one line, and the generation CLI translates."""

import functools
import json
import logging
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from conftest import single_device_env
from lmjax import decode, text_metrics
from lmjax.config import ConfigError, base_config
from lmjax.config_validation import validate
from lmjax.models import model_config
from lmjax.data import parallel
from lmjax.data.text_files import DataError
from lmjax.data.tokenizers import EOS_ID, PAD_ID, CharTokenizer
from lmjax.models import build_model

REPO = Path(__file__).resolve().parents[1]
CFG = model_config(vocab_size=40, num_layers=2, num_heads=4, d_model=32, mlp_dim=64, max_len=16, init_std=0.3,
                  name="encdec")


def init(cfg):
  model = build_model(cfg)
  boxed = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5), jnp.int32), jnp.zeros((1, 4), jnp.int32))["params"]
  return model, jax.tree_util.tree_map(lambda x: getattr(x, "value", x), boxed, is_leaf=lambda x: hasattr(x, "value"))


SOURCES = [[9, 10, 11, 12, 13, EOS_ID], [14, 15, EOS_ID]]  # different lengths in one batch, right-padded


def sources_BS():
  source_BS = np.zeros((2, 6), np.int32)
  for b, s in enumerate(SOURCES):
    source_BS[b, :len(s)] = s
  return source_BS, np.asarray([len(s) for s in SOURCES], np.int32)


VARIANTS = {
    "learned_unshared": dict(position="learned", share_embeddings=False, tie_embeddings=False),
    "rope_gqa": dict(position="rope", num_kv_heads=2, num_decoder_layers=3),
    "t5_postnorm_remat": dict(position="t5", relative_buckets=8, relative_max_distance=12, remat="full",
                              pre_norm=False, norm="rmsnorm", activation="swiglu"),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_cached_decoding_equals_full_recomputation(name):
  cfg = CFG.replace(**VARIANTS[name])
  model, params = init(cfg)
  decoder = decode.step_decoder(model)
  assert decoder.takes_encoder_inputs
  source_BS, lengths_S = sources_BS()
  encoder_inputs = {"tokens": source_BS, "lengths": lengths_S}
  new = 8
  bos_B1, ones_B = np.ones((2, 1), np.int32), np.ones((2,), np.int32)
  # Greedy decoding driven through the interface (generate's own loop is checked in test_beam_size_one_is_greedy).
  # Everything jitted: op-by-op Flax compiles each small primitive separately, which is slower here.
  cache = jax.jit(decoder.init_cache, static_argnums=(1, 2))(params, 2, 1 + new, encoder_inputs)
  logits_BV, cache = jax.jit(decoder.prefill)(params, cache, bos_B1, ones_B)
  stepped, step, tokens = [np.asarray(logits_BV)], jax.jit(decoder.step), [bos_B1[:, 0]]
  for i in range(new - 1):
    tokens.append(stepped[-1].argmax(-1).astype(np.int32))
    logits_BV, cache = step(params, cache, jnp.asarray(tokens[-1]), jnp.full((2,), 1 + i, jnp.int32))
    stepped.append(np.asarray(logits_BV))
  tokens.append(stepped[-1].argmax(-1).astype(np.int32))
  tokens_BT = np.stack(tokens, axis=1)

  # Each row alone, its source unpadded, the whole target at once (teacher forcing): the same logits.
  apply = jax.jit(model.apply)
  for b, source in enumerate(SOURCES):
    full_LV = np.asarray(apply({"params": params}, jnp.asarray([source]), jnp.asarray(tokens_BT[b:b + 1])))[0]
    np.testing.assert_array_equal(full_LV[:-1].argmax(-1), tokens_BT[b, 1:])
    np.testing.assert_allclose(np.stack([s[b] for s in stepped]), full_LV[:-1], atol=2e-4, rtol=2e-4)


def test_the_source_matters_and_padding_does_not():
  model, params = init(CFG)
  source_BS, lengths_S = sources_BS()
  logits = lambda src: np.asarray(model.apply({"params": params}, jnp.asarray(src), jnp.ones((len(src), 3), jnp.int32),
                                              jnp.asarray((np.asarray(src) > 0).astype(np.int32))))
  padded = logits(source_BS)
  np.testing.assert_allclose(padded[1], logits([SOURCES[1]])[0], atol=1e-5)
  assert np.abs(padded[0] - padded[1]).max() > 1e-2


def test_beam_size_one_is_greedy():
  model, params = init(CFG.replace(position="alibi"))
  decoder = decode.step_decoder(model)
  source_BS, lengths_S = sources_BS()
  inputs = {"tokens": source_BS, "lengths": lengths_S}
  bos_B1, ones_B = jnp.ones((2, 1), jnp.int32), jnp.ones((2,), jnp.int32)
  generate = jax.jit(functools.partial(decode.generate, decoder, max_new_tokens=10, temperature=0.0))
  greedy = generate(params, bos_B1, ones_B, jax.random.PRNGKey(0), encoder_inputs=inputs)
  beam = lambda **kw: jax.jit(functools.partial(decode.beam_search, decoder, max_new_tokens=10, **kw))(
      params, bos_B1, ones_B, encoder_inputs=inputs)
  beams_BWT, _ = beam(beam_size=1, alpha=0.0)
  np.testing.assert_array_equal(beams_BWT[:, 0], greedy)
  wide_BWT, scores_BW = beam(beam_size=3, alpha=0.6)
  assert wide_BWT.shape == (2, 3, 11) and (np.diff(np.asarray(scores_BW), axis=1) <= 1e-6).all()


def test_decoding_needs_the_source():
  model, params = init(CFG)
  with pytest.raises(ValueError, match="needs encoder_inputs"):
    decode.generate(decode.step_decoder(model), params, jnp.ones((1, 1), jnp.int32), jnp.ones((1,), jnp.int32),
                    jax.random.PRNGKey(0), max_new_tokens=3)


# --- metrics -----------------------------------------------------------------------------------------------------

HYPS = ["The cat sat on the mat.", "A quick brown fox jumps over the dog", "Hallo Welt", "",
        "Das ist ein kleiner Test, oder?"]
REFS = ["The cat is sitting on the mat.", "The quick brown fox jumps over the lazy dog.", "Hallo, Welt!", "Nothing",
        "Das ist ein kleiner Test."]


def test_bleu_and_chrf_equal_sacrebleu():
  import sacrebleu
  for tokenize in ("13a", "intl", "char"):
    score, signature = text_metrics.bleu(HYPS, REFS, tokenize)
    assert score == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS], tokenize=tokenize).score, abs=1e-9)
    assert f"tok:{tokenize}" in signature and f"version:{sacrebleu.__version__}" in signature
  score, signature = text_metrics.chrf(HYPS, REFS)
  assert score == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score, abs=1e-9)
  assert signature.startswith("nrefs:1") and "nc:6" in signature


def test_rouge_equals_rouge_score():
  rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
  ours = text_metrics.rouge(HYPS, REFS)
  for key in ("rouge1", "rouge2", "rougeL"):
    theirs = np.mean([scorer.score(r, h)[key].fmeasure for h, r in zip(HYPS, REFS)])
    assert ours[key] == pytest.approx(100 * theirs, abs=1e-9)


def test_score_detokenizes_and_writes_predictions(tmp_path, caplog):
  """The task's score path: token ids -> text (cut at EOS), corpus assembly in index order, files, signature."""
  from lmjax.tasks.seq2seq import Seq2seqData
  config = base_config()
  config.task, config.model.name = "seq2seq", "encdec"
  config.seq2seq.metrics, config.seq2seq.eval_decode_examples = "bleu,chrf,rouge", 4
  tokenizer = CharTokenizer("".join(HYPS + REFS) + "xyz")
  pairs = [(f"source {i}", ref) for i, ref in enumerate(REFS)]
  data = Seq2seqData(config, tokenizer, {}, {"eval": pairs}, {})
  tokens_NT = np.full((5, 40), PAD_ID, np.int32)
  for i, h in enumerate(HYPS):
    ids = [*tokenizer.encode(h).tolist(), EOS_ID, *tokenizer.encode("xyz").tolist()]  # after EOS: ignored
    tokens_NT[i, :len(ids)] = ids
  order = np.asarray([3, 1, 4, 0, 2])  # predictions arrive in any order; index 4 is past eval_decode_examples
  with caplog.at_level(logging.INFO):
    scores = data.score("eval", order, {"tokens": tokens_NT[order]}, step=7, out_dir=tmp_path)
  import sacrebleu
  assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS[:4], [REFS[:4]]).score)
  assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS[:4], [REFS[:4]]).score)
  assert scores["rouge1"] == pytest.approx(text_metrics.rouge(HYPS[:4], REFS[:4])["rouge1"])
  assert scores["decoded"] == 4
  records = [json.loads(line) for line in (tmp_path / "eval_step7.jsonl").read_text().splitlines()]
  assert [r["hypothesis"] for r in records] == HYPS[:4] and records[2]["source"] == "source 2"
  summary = json.loads((tmp_path / "eval_step7.scores.json").read_text())
  assert summary["signatures"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
  assert "signature nrefs:1|case:mixed|eff:no|tok:13a" in caplog.text


# --- data ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("a\tb\nc\td\te\n", ":2: expected 'source<TAB>target' (2 tab-separated fields), found 3"),
    ("a\tb\nno tab here\n", ":2: expected 'source<TAB>target' (2 tab-separated fields), found 1"),
    ("a\tb\n\t  x\n", ":2: the source side is empty"),
    ("a\tb\nc\t \n", ":2: the target side is empty"),
    ("\n\n", "holds no pairs"),
])
def test_tsv_errors_are_one_line(tmp_path, text, expected):
  path = tmp_path / "pairs.tsv"
  path.write_text(text)
  with pytest.raises(DataError) as e:
    parallel.read_pairs(str(path))
  assert str(path) in str(e.value) and expected in str(e.value) and "\n" not in str(e.value)


def test_aligned_files(tmp_path):
  de, en = tmp_path / "train.de", tmp_path / "train.en"
  de.write_text("Hallo\nWelt\n\n")
  en.write_text("Hello\nworld\n\n")
  assert parallel.read_pairs(f"{de},{en}") == [("Hallo", "Hello"), ("Welt", "world")]
  en.write_text("Hello\n")
  with pytest.raises(DataError, match=r"train.de has 3 lines but .*train.en has 1"):
    parallel.read_pairs(f"{de},{en}")
  en.write_text("Hello\n\nx\n")
  with pytest.raises(DataError, match=r"train.en:2: empty line where the other file has text"):
    parallel.read_pairs(f"{de},{en}")
  with pytest.raises(DataError, match="does not exist"):
    parallel.read_pairs(f"{de},{tmp_path / 'missing.en'}")


def test_tfds_records_and_held_out_split():
  records = [{"de": "Hallo".encode(), "en": b"Hello"}, {"de": b"", "en": b"skipped"}, {"de": b"Welt", "en": b"world"}]
  assert parallel.tfds_pairs(records, "de", "en") == [("Hallo", "Hello"), ("Welt", "world")]
  with pytest.raises(DataError, match=r"record 0: feature 'fr' \(seq2seq.target_lang\) is missing"):
    parallel.tfds_pairs(records, "de", "fr", "wmt14_translate/de-en")
  pairs = [(str(i), str(i)) for i in range(100)]
  train, held = parallel.hold_out(pairs, 0.1, seed=0)
  assert len(held) == 10 and sorted(train + held) == sorted(pairs) and held == parallel.hold_out(pairs, 0.1, 0)[1]


class FakeTranslate(tfds.core.GeneratorBasedBuilder):
  """Shaped like TFDS's wmt14_translate/de-en: a Translation feature with one text per language."""
  VERSION = tfds.core.Version("1.0.0")
  pkg_dir_path = epath.Path(__file__).parent  # a test module is not a package; TFDS looks for metadata files here

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.Translation(languages=["de", "en"]))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i, (de, en) in enumerate([("eins", "one"), ("zwei", "two"), ("drei", "three"), ("vier", "four")]):
      yield i, {"de": de, "en": en}


def test_tfds_translation_dataset_by_name(tmp_path):
  """A translation dataset prepared as array_record in data_dir, read by name like wmt14_translate/de-en."""
  builder = FakeTranslate(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  pairs = parallel.open_tfds_pairs("fake_translate", "train", tmp_path, "de", "en")
  assert sorted(pairs) == [("drei", "three"), ("eins", "one"), ("vier", "four"), ("zwei", "two")]
  with pytest.raises(DataError, match=r"seq2seq.source_lang='fr' is not a feature of fake_translate"):
    parallel.open_tfds_pairs("fake_translate", "train", tmp_path, "fr", "en")


def test_encode_pairs_layout():
  tok = CharTokenizer("abcdef")
  out = parallel.encode_pairs([("abc", "de"), ("abcdef", "fedcba")], tok, source_len=4, target_len=4)
  a, d, e = (int(tok.encode(c)[0]) for c in "ade")
  assert out["inputs"][0].tolist() == [*tok.encode("abc").tolist(), EOS_ID]
  assert out["inputs"][1].tolist() == [*tok.encode("abc").tolist(), EOS_ID]  # cut, EOS kept
  assert out["decoder_inputs"][0].tolist() == [1, d, e, 0] and out["targets"][0].tolist() == [d, e, EOS_ID, 0]
  assert out["target_segment_ids"][0].tolist() == [1, 1, 1, 0] and out["targets"][1, -1] != EOS_ID
  assert a > 0


PAIRS = [("abc", "cba"), ("abcdef", "fedcba"), ("de", "ed"), ("f", "f"), ("bead", "daeb"), ("cafe", "efac")]


@pytest.mark.parametrize("position", ["learned", "t5"])
def test_packed_rows_give_each_pair_its_own_loss(position):
  """Several pairs in one row: every target token gets the logits it gets alone (masks and positions per pair)."""
  model, params = init(CFG.replace(position=position))
  tok = CharTokenizer("abcdef")
  single = parallel.encode_pairs(PAIRS, tok, source_len=12, target_len=12)
  rows = parallel.pack_rows((single["input_segment_ids"] > 0).sum(1), (single["target_segment_ids"] > 0).sum(1),
                            np.arange(len(PAIRS)), 12, 12)
  assert rows == [[0, 1], [2, 3, 4], [5]]
  packed = parallel.packed_batch(single, rows)
  logits = lambda b: np.asarray(model.apply(
      {"params": params}, b["inputs"], b["decoder_inputs"], b["input_segment_ids"], b["target_segment_ids"],
      source_positions_BS=b["input_positions"], target_positions_BL=b["target_positions"]))
  single_NTV, packed_RTV = logits(single), logits(packed)
  for r, row in enumerate(rows):
    at = 0
    for i in row:
      n = int((single["target_segment_ids"][i] > 0).sum())
      np.testing.assert_allclose(packed_RTV[r, at:at + n], single_NTV[i, :n], atol=1e-4, rtol=1e-4)
      at += n


def test_packed_train_stream_visits_every_pair_once_per_epoch():
  from lmjax.tasks.seq2seq import _PackedBatches
  tok = CharTokenizer("abcdef")
  arrays = parallel.encode_pairs(PAIRS * 5, tok, source_len=8, target_len=8)
  stream = _PackedBatches(arrays, 4, seed=0, process_index=0, process_count=1)
  sources = []
  for k in range(6):
    batch = stream(k)
    for row, seg in zip(batch["inputs"], batch["input_segment_ids"]):
      sources += [tuple(row[seg == s]) for s in range(1, seg.max() + 1)]
  first_epoch = sum(len(r) for r in stream._rows(0))
  assert first_epoch == 30 and len(sources) >= 30
  expected = sorted(tuple(r[s > 0]) for r, s in zip(arrays["inputs"], arrays["input_segment_ids"]))
  assert sorted(sources[:30]) == expected
  again = _PackedBatches(arrays, 4, seed=0, process_index=0, process_count=1)
  np.testing.assert_array_equal(again(5)["targets"], stream(5)["targets"])  # a pure function of the index


@pytest.mark.parametrize("overrides, expected", [
    ({"data.source": "embedded"}, "task='seq2seq' needs parallel data"),
    ({"data.source": "tfds", "data.tfds_name": "wmt14_translate/de-en"}, "config.seq2seq.source_lang=''"),
    ({"seq2seq.metrics": "bleu,meteor"}, "config.seq2seq.metrics='bleu,meteor'"),
    ({"seq2seq.source_max_len": 100}, "exceeds model.max_len=32"),
    ({"seq2seq.label_smoothing": 1.0}, "config.seq2seq.label_smoothing=1.0"),
    ({"model.name": "gpt"}, "task='seq2seq' trains one of: encdec"),
])
def test_config_errors(overrides, expected):
  from configs import seq2seq_tiny
  c = seq2seq_tiny.get_config()
  for field, value in overrides.items():
    section, key = field.split(".")
    c[section][key] = value
  with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
    validate(c)


# --- training and the CLI -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reverse_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("reverse")
  rng = np.random.default_rng(0)
  letters = np.asarray(list("abcdefghij"))
  lines = ["".join(rng.choice(letters, rng.integers(3, 9))) for _ in range(2000)]
  (root / "pairs.tsv").write_text("".join(f"{s}\t{s[::-1]}\n" for s in lines))
  workdir = root / "run"
  # The shipped config's recipe at half its 800 steps: the model reverses every eval string by step 400.
  cmd = [sys.executable, "-m", "lmjax.main", f"--config=configs/seq2seq_tiny.py:{root / 'pairs.tsv'}",
         f"--workdir={workdir}", *(f"--config.train.{k}=400" for k in ("num_steps", "eval_every", "checkpoint_every"))]
  result = subprocess.run(cmd, cwd=REPO, env=single_device_env(optimize=True), capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def test_learns_to_reverse_strings(reverse_run):
  records = [json.loads(line) for line in (reverse_run / "metrics.jsonl").read_text().splitlines()]
  final = [r for r in records if r["split"] == "eval"][-1]
  assert final["bleu"] > 90 and final["chrf"] > 90 and final["perplexity"] < 1.2, final
  decoded = [json.loads(line) for line in (reverse_run / "predictions" / f"eval_step{final['step']}.jsonl")
             .read_text().splitlines()]
  assert len(decoded) == 64 and sum(r["hypothesis"] == r["source"][::-1] for r in decoded) >= 60
  assert "tok:char" in json.loads((reverse_run / "predictions" / f"eval_step{final['step']}.scores.json")
                                  .read_text())["signatures"]["bleu"]


def test_cli_translates(reverse_run, tmp_path):
  sources = tmp_path / "sources.txt"
  sources.write_text("abcde\njihgf\n")
  cmd = [sys.executable, "-m", "lmjax.generate", f"--workdir={reverse_run}", f"--input={sources}", "--sheet=rev"]
  result = subprocess.run(cmd, cwd=REPO, env=single_device_env(), capture_output=True, text=True, timeout=180)
  assert result.returncode == 0, result.stderr[-3000:]
  records = [json.loads(line) for line in (reverse_run / "samples" / "rev.jsonl").read_text().splitlines()]
  assert [r["text"] for r in records] == ["edcba", "fghij"]
  assert records[0]["settings"]["strategy"] == "beam" and "abcde\n=> edcba" in result.stdout
  assert "abcde\n=> edcba" in (reverse_run / "samples" / "rev.md").read_text()
