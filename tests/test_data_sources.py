"""Source kinds (local text, Hugging Face JSONL/Parquet, streamed), weighted mixtures, document separators, and
the fast tokenizing path: each against a plain reference, resumes exact, bad input in one line."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ONE_DEVICE
from lmjax.config import ConfigError, base_config

from lmjax.config_validation import validate
from lmjax.data import mixture, pipeline, sources, streaming, text_files
from lmjax.data.text_files import DataError
from lmjax.data.tokenizers import CharTokenizer, build_tokenizer
from lmjax.tasks import causal_lm

datasets = pytest.importorskip("datasets")

DOCS = [f"document {i}: " + " ".join(["alpha", "beta", "gamma"][i % 3] for _ in range(i % 11)) for i in range(120)]
VALIDATION = [f"held out {i} " + "delta " * (i % 4) for i in range(12)]
CHARS = sorted(set("".join(DOCS + VALIDATION + ["xyz \n"])))


def one_line(e: pytest.ExceptionInfo) -> str:
  message = str(e.value)
  assert "\n" not in message, message
  return message


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, str]:
  """The same documents as JSONL shards and as Parquet shards (3 train shards each, one validation shard)."""
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("shards")
  for s in range(3):
    part = DOCS[s * 40:(s + 1) * 40]
    (root / f"train-{s}.jsonl").write_text("".join(json.dumps({"body": d, "id": i}) + "\n" for i, d in enumerate(part)))
    pq.write_table(pa.table({"body": part, "id": list(range(len(part)))}), root / f"train-{s}.parquet")
  (root / "val.jsonl").write_text("".join(json.dumps({"body": d, "id": 0}) + "\n" for d in VALIDATION))
  pq.write_table(pa.table({"body": VALIDATION, "id": [0] * len(VALIDATION)}), root / "val.parquet")
  (root / "xs.txt").write_text("\n\n".join("xyz " * (i % 7 + 1) for i in range(200)))
  return {"json": f"train={root}/train-*.jsonl,validation={root}/val.jsonl",
          "parquet": f"train={root}/train-*.parquet,validation={root}/val.parquet", "xs": str(root / "xs.txt")}


@pytest.fixture(scope="module")
def tokenizer():
  return CharTokenizer(CHARS)


def hf_config(shards, fmt="json", streaming_=False, **data):
  c = base_config()
  c.data.source, c.data.hf_name, c.data.hf_data_files = "hf", fmt, shards[fmt]
  c.data.text_key, c.data.hf_streaming, c.data.seq_len = "body", streaming_, 16
  c.train.batch_size, c.train.eval_batches = 4, 2
  for key, value in data.items():
    c.data[key] = value
  validate(c)
  return c


def same_batches(a, b) -> bool:
  return len(a) == len(b) and all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
                                  for x, y in zip(a, b))


def checkpointed(dataset: grain.IterDataset, steps: int, directory: Path):
  """An iterator moved `steps` batches, saved through Orbax and restored into a fresh iterator."""
  it = iter(dataset)
  for _ in range(steps):
    next(it)
  manager = ocp.CheckpointManager(directory)
  manager.save(steps, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  restored = iter(dataset)
  manager.restore(steps, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  manager.close()
  return it, restored


# --- Hugging Face datasets: cached and streamed ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_hf_files_read_in_order_and_streamed_windows_equal_cached_ones(shards, tokenizer, tmp_path, fmt):
  cached = hf_config(shards, fmt)
  assert list(sources.iter_texts(cached.data, "train", tmp_path)) == DOCS
  assert [r["body"] for r in sources.iter_records(cached.data, "validation", tmp_path)] == VALIDATION
  data = causal_lm.CausalLmTask.prepare_data(cached, tokenizer, tmp_path)
  assert isinstance(data, causal_lm.LmData)
  tokens = data.train_tokens

  streamed = causal_lm.CausalLmTask.prepare_data(hf_config(shards, fmt, True), tokenizer, tmp_path)
  assert isinstance(streamed, causal_lm.MixedLmData) and not (tmp_path / "tokenized" / "hf-stream").exists()
  windows = (tokens.num_tokens - 1) // 16
  dataset = streamed.train_dataset(0, 1)
  it = iter(dataset)
  got = [next(it) for _ in range(windows // 4)]
  want = pipeline.window_batch(tokens, np.arange(len(got) * 4) * 16, 16)  # the stream's windows, in order
  assert all(np.array_equal(np.concatenate([b[k] for b in got]), want[k]) for k in want)

  # Exact resume, through the checkpoint, just before the stream ends and a new epoch starts.
  before, restored = checkpointed(dataset, windows // 4 - 1, tmp_path / f"ckpt-{fmt}")
  assert same_batches([next(restored) for _ in range(6)], [next(before) for _ in range(6)])
  eval_batches = streamed.eval_sets(0, 1)["eval"]
  assert len(eval_batches) == 2 and eval_batches[0]["loss_mask"].sum() > 0


def test_streaming_processes_read_their_own_shards_and_resume(shards, tokenizer, tmp_path):
  data = causal_lm.CausalLmTask.prepare_data(hf_config(shards, "parquet", True), tokenizer, tmp_path)
  first, second = iter(data.train_dataset(0, 2)), iter(data.train_dataset(1, 2))
  a, b = next(first), next(second)
  assert a["inputs"].shape == (2, 16) and not np.array_equal(a["inputs"], b["inputs"])
  for _ in range(20):  # past the end of this process's share: its second epoch
    next(second)
  state, want = second.get_state(), [next(second) for _ in range(8)]
  restored = iter(data.train_dataset(1, 2))
  restored.set_state(json.loads(json.dumps(state)))
  assert same_batches([next(restored) for _ in range(8)], want)


def test_cached_hf_resume_is_exact(shards, tokenizer, tmp_path):
  dataset = causal_lm.CausalLmTask.prepare_data(hf_config(shards, "parquet"), tokenizer, tmp_path).train_dataset(0, 1)
  before, restored = checkpointed(dataset, 9, tmp_path / "ckpt")
  assert same_batches([next(restored) for _ in range(5)], [next(before) for _ in range(5)])


def test_hf_bad_input_is_one_line(shards, tokenizer, tmp_path, monkeypatch):
  with pytest.raises(DataError) as e:
    list(sources.iter_texts(hf_config(shards, text_key="content").data, "train", tmp_path))
  assert "data.text_key='content'" in one_line(e) and "['body', 'id']" in str(e.value)
  with pytest.raises(DataError) as e:
    sources.open_split(hf_config(shards).data, "test", tmp_path)
  assert "split 'test'" in one_line(e) and "['train', 'validation']" in str(e.value)
  with pytest.raises(DataError) as e:
    sources.open_split(hf_config(shards, hf_data_files=str(tmp_path / "none*.jsonl")).data, "train", tmp_path)
  assert "matches no file" in one_line(e)

  import huggingface_hub  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
  c = base_config()
  c.data.source, c.data.hf_name = "hf", "someone/corpus"
  with pytest.raises(DataError) as e:
    sources.open_split(c.data, "train", tmp_path)
  assert "someone/corpus" in one_line(e) and "download it first" in str(e.value)

  short = hf_config(shards, streaming_=True)
  short.data.seq_len, short.train.batch_size = 512, 16  # one batch needs more than the whole stream
  data = causal_lm.CausalLmTask.prepare_data(short, tokenizer, tmp_path)
  with pytest.raises(DataError) as e:
    next(iter(data.train_dataset(0, 1)))
  assert "fewer than the" in one_line(e) and "first batch" in str(e.value)


def test_config_errors_are_one_line(shards):
  c = base_config()
  c.data.source = "hf"
  with pytest.raises(ConfigError, match="data.hf_name=''"):
    validate(c)
  c.data.hf_name = "json"
  with pytest.raises(ConfigError, match="data.hf_data_files"):
    validate(c)
  c = base_config()
  c.data.hf_name = "wikitext"
  with pytest.raises(ConfigError, match="only data.source='hf' reads it"):
    validate(c)
  for bad, says in [("web:0", "positive number"), ("web:x", "positive number"), ("web", "name:weight"),
                    ("a:1; a:2", "twice"), ("a:1 seq_len=3", "not field=value"),
                    ("a:1 source=nope", "choose one of embedded, files, tfds, hf"),
                    ("a:1 source=hf", "entry 'a'")]:
    c = base_config()
    c.data.mixture = bad
    with pytest.raises(ConfigError) as e:
      validate(c)
    assert says in one_line(e) and "data.mixture" in str(e.value)
  c = base_config()
  c.task, c.model.name = "mlm", "bert"
  c.data.mixture = f"a:1 source=hf hf_name=json hf_data_files={shards['xs']} hf_streaming=true"
  with pytest.raises(ConfigError, match="task='mlm'"):
    validate(c)


# --- mixtures ----------------------------------------------------------------------------------------------------


def test_allocation_is_house_monotone_and_within_a_row_of_the_weights():
  rng = np.random.default_rng(0)
  for weights in ([1, 1], [0.7, 0.3], [5, 1, 1], rng.random(6) + 0.01):
    w = np.asarray(weights, float) / np.sum(weights)
    previous = mixture.allocate(0, weights)
    for total in range(1, 400):
      counts = mixture.allocate(total, weights)
      assert counts.sum() == total and sorted(counts - previous) == [0] * (len(w) - 1) + [1]
      assert np.abs(counts - total * w).max() < 1.0 + 1e-9
      previous = counts


def test_mixture_rows_follow_the_weights_and_resume_exactly(shards, tokenizer, tmp_path):
  c = base_config()
  c.data.seq_len, c.train.batch_size, c.train.eval_batches = 8, 6, 2
  c.data.mixture = (f"xs:1 source=files paths={shards['xs']}; "
                    f"web:2 source=hf hf_name=json 'hf_data_files={shards['json']}' text_key=body; "
                    f"stream:3 source=hf hf_name=parquet 'hf_data_files={shards['parquet']}' text_key=body "
                    f"hf_streaming=true")
  validate(c)
  data = causal_lm.CausalLmTask.prepare_data(c, tokenizer, tmp_path)
  assert set(data.eval_sets(0, 1)) == {"eval", "eval/xs", "eval/web", "eval/stream"}
  dataset = data.train_dataset(0, 1)
  batches = [next(iter(dataset)) for _ in range(2)]
  assert same_batches(batches[:1], batches[1:])  # a fresh iterator starts over: batch k depends on k alone
  it, x = iter(dataset), tokenizer.encode("x")[0]
  rows = np.concatenate([(next(it)["inputs"] == x).any(1) for _ in range(100)])
  assert rows.sum() == 100  # 1/6 of 600 rows: the weights, exactly
  before, restored = checkpointed(dataset, 13, tmp_path / "ckpt")
  assert same_batches([next(restored) for _ in range(5)], [next(before) for _ in range(5)])

  cached = base_config()
  cached.data.seq_len, cached.train.batch_size = 8, 6
  cached.data.mixture = c.data.mixture.rsplit(";", 1)[0]  # without the stream: processes split the global batch
  data = causal_lm.CausalLmTask.prepare_data(cached, tokenizer, tmp_path)
  whole = iter(data.train_dataset(0, 1))
  halves = [iter(data.train_dataset(p, 2)) for p in range(2)]
  for _ in range(4):
    one, parts = next(whole), [next(h) for h in halves]
    assert all(np.array_equal(one[k], np.concatenate([p[k] for p in parts])) for k in one)


# --- documents as the corpus defines them --------------------------------------------------------------------------


def test_marker_and_regex_separators_split_documents(tmp_path):
  (tmp_path / "quotes.txt").write_text("First quote,\nin two lines.\n%\nSecond one.\n  %  \nThird.\n%\n")
  c = base_config()
  c.data.source, c.data.paths, c.data.document_split, c.data.document_separator = "files", str(
      tmp_path / "quotes.txt"), "marker", "%"
  c.data.validation_fraction = 0.34
  validate(c)
  docs = list(sources.iter_texts(c.data, "train", tmp_path / "d")) + list(
      sources.iter_texts(c.data, "validation", tmp_path / "d"))
  assert docs == ["First quote,\nin two lines.", "Second one.", "Third."]
  c.data.document_split, c.data.document_separator = "regex", r"^%+$|<\|endoftext\|>"
  (tmp_path / "quotes.txt").write_text("a<|endoftext|>b\n%%\nc\n%\nd")
  assert text_files.split_into_documents((tmp_path / "quotes.txt").read_text(), "regex",
                                         c.data.document_separator) == ["a", "b", "c", "d"]
  c.data.document_separator = ""
  with pytest.raises(ConfigError, match="data.document_separator"):
    validate(c)


def test_streamed_files_give_the_documents_of_the_whole_text(tmp_path):
  rng = random.Random(0)
  words = ["a", "bb", "%", "\n", "\n\n", "\r\n", " \n", "\n%\n", "é", "\u2028", "=="]
  for trial in range(60):
    text = "".join(rng.choice(words) for _ in range(rng.randint(0, 80)))
    path = tmp_path / f"t{trial}.txt"
    path.write_bytes(text.encode("utf-8") + (b"\xff" if trial % 5 == 0 else b""))
    whole = path.read_bytes().decode("utf-8", errors="replace")
    for split, separator in [("paragraph", ""), ("line", ""), ("marker", "%"), ("regex", r"\n?==\n?")]:
      streamed = list(text_files.iter_file_documents(path, split, separator, "replace", chunk_bytes=rng.randint(1, 9)))
      assert streamed == text_files.split_into_documents(whole, split, separator)
  assert text_files.split_into_documents("x\n\n \ny", "paragraph") == [p.strip() for p in re.split(
      r"\n[ \t\r\f\v]*\n", "x\n\n \ny")]


# --- fast tokenizing -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["byte", "char", "bpe", "unigram"])
def test_batch_encoding_gives_the_ids_of_encoding_each_text(kind, tmp_path):
  texts = DOCS[:60] + ["", "é\u2028ü \n\n tail", "xyz"]
  tok = build_tokenizer(kind, lambda: DOCS, tmp_path / kind, vocab_size=300)
  ids, lengths = tok.encode_batch(texts)
  singles = [tok.encode(t) for t in texts]
  assert lengths.tolist() == [len(s) for s in singles]
  np.testing.assert_array_equal(ids, np.concatenate(singles))
  packed, sizes = pipeline.pack_documents(ids, lengths, np.dtype(np.uint16))
  reference = np.concatenate([[1, *s, 2] for s in singles])  # [BOS] ids [EOS]
  np.testing.assert_array_equal(packed, reference)
  assert sizes.tolist() == [len(s) + 2 for s in singles]


def test_bpe_merges_each_distinct_word_once_and_keeps_sentencepieces_ids(tmp_path):
  tok = build_tokenizer("bpe", lambda: DOCS, tmp_path / "bpe", vocab_size=300)
  cache = tok._word_cache  # pylint: disable=protected-access
  assert cache is not None and build_tokenizer("unigram", lambda: DOCS, tmp_path / "uni", vocab_size=300)._word_cache is None
  merged = []
  encode_words = cache._encode_words  # pylint: disable=protected-access
  cache._encode_words = lambda words: merged.extend(words) or encode_words(words)  # pylint: disable=protected-access
  rng = random.Random(0)
  pieces = ["a", "b", "ab", "the", " ", "  ", "\n", "\t", "é", "日本", "\u2581", "\u00a0", "7", "42", ".", "\r\n"]
  texts = ["", " ", "  ", " lead", "trail ", "a  b", *DOCS[:40],
           *("".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))) for _ in range(400))]
  reference = [tok._sp.encode(t) for t in texts]  # pylint: disable=protected-access
  for _ in range(2):
    ids, lengths = tok.encode_batch(texts)
    assert lengths.tolist() == [len(r) for r in reference]
    np.testing.assert_array_equal(ids, np.concatenate([np.asarray(r, np.int32) for r in reference]))
  assert len(merged) == len(set(merged)) > 0  # the second pass found every word in the cache
  with_separator = ["x\x00y", "a b"]  # U+0000 joins documents inside the cache: such a batch is encoded whole
  ids, lengths = tok.encode_batch(with_separator)
  np.testing.assert_array_equal(ids, np.concatenate([tok.encode(t) for t in with_separator]))


def test_classification_and_seq2seq_read_hf_records(tmp_path):
  from lmjax.tasks import classification, seq2seq  # pylint: disable=import-outside-toplevel
  rows = [{"sentence": f"text {i}", "label": ["neg", "pos"][i % 2],
           "translation": {"de": f"hallo {i}", "en": f"hello {i}"}} for i in range(10)]
  (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  c = base_config()
  c.task, c.model.name = "classification", "bert"
  c.data.source, c.data.hf_name, c.data.hf_data_files = "hf", "json", f"train={tmp_path}/t.jsonl,validation={tmp_path}/t.jsonl"
  c.data.text_key, c.data.seq_len = "sentence", 16
  validate(c)
  data = classification.ClassificationTask.prepare_data(c, CharTokenizer(CHARS + ["o"]), tmp_path / "d")
  assert data.vocab.labels == ("neg", "pos") and data.train["labels"].tolist() == [0, 1] * 5
  c.task, c.model.name = "seq2seq", "encdec"
  c.seq2seq.source_lang, c.seq2seq.target_lang = "translation.de", "translation.en"
  validate(c)
  assert seq2seq.read_split_pairs(c, tmp_path / "d")["train"][3] == ("hallo 3", "hello 3")


@pytest.mark.slow
def test_training_on_a_mixture_with_a_stream_resumes_exactly_and_reports_each_source(shards, tmp_path):
  import jax  # pylint: disable=import-outside-toplevel
  from configs import tiny  # pylint: disable=import-outside-toplevel
  from lmjax import report, train  # pylint: disable=import-outside-toplevel
  from lmjax.checkpoint import load_saved_state  # pylint: disable=import-outside-toplevel
  from lmjax.writers import read_metrics  # pylint: disable=import-outside-toplevel
  c = tiny.get_config()
  c.data.seq_len = c.model.max_len = 16
  c.data.mixture = (f"xs:1 source=files paths={shards['xs']}; "
                    f"web:2 source=hf hf_name=json 'hf_data_files={shards['json']}' text_key=body hf_streaming=true")
  c.train.num_steps, c.train.checkpoint_every, c.train.eval_every, c.train.num_samples = 8, 4, 4, 0
  c.train.log_every = 4
  c.train.eval_batches, c.train.plot, c.train.tensorboard = 2, False, False
  c.data.data_dir = str(tmp_path / "data")
  straight, resumed = tmp_path / "runs" / "straight", tmp_path / "runs" / "resumed"
  train.train_and_evaluate(c, straight, devices=ONE_DEVICE)
  train.train_and_evaluate(c, resumed, stop_at=4, devices=ONE_DEVICE)
  train.train_and_evaluate(c, resumed, devices=ONE_DEVICE)
  a, b = (load_saved_state(w / "checkpoints")["params"] for w in (straight, resumed))
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)
  splits = {r["split"] for r in read_metrics(straight)}
  assert {"eval", "eval/xs", "eval/web"} <= splits
  table, _ = report.report(tmp_path / "runs")
  assert "eval/xs/loss" in table and "eval/web/loss" in table


def test_one_pass_over_local_text_gives_the_caches_of_each_split_alone(shards, tokenizer, tmp_path):
  c = base_config()
  c.data.source, c.data.paths, c.data.num_workers = "files", shards["xs"], 0
  assert len(sources.open_split(c.data, "train", tmp_path / "alone")) == 180  # counted first: each split alone
  for split in ("validation", "train"):  # in /one, the first call writes both caches in one pass
    one = pipeline.tokenize_split(c.data, split, tokenizer, tmp_path / "one")
    alone = pipeline.tokenize_split(c.data, split, tokenizer, tmp_path / "alone")
    assert one.name == alone.name
    np.testing.assert_array_equal(one.tokens, alone.tokens)
    np.testing.assert_array_equal(one.doc_starts, alone.doc_starts)
  assert json.loads(next((tmp_path / "one" / "local_text").glob("*/index.json")).read_text())["validation"] == 20
