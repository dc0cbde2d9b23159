"""Local text builder, sources, tokenized cache and the window/batch pipeline."""

from __future__ import annotations

import time
from pathlib import Path

import grain
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lmjax.config import base_config
from lmjax.data import local_text, pipeline, sources, text_files
from lmjax.data.text_files import DataError
from lmjax.data.pipeline import TokenizedSplit
from lmjax.data.tokenizers import BOS_ID, EOS_ID, build_tokenizer


def data_config(**overrides) -> ml_collections.ConfigDict:
  cfg = base_config().data
  cfg.update(dict(source="files", seq_len=16))
  cfg.update(overrides)
  return cfg


def write_docs(path: Path, docs: list[str]) -> Path:
  path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
  return path


def read_split(cfg, split, data_dir) -> list[str]:
  return list(sources.iter_texts(cfg, split, data_dir))


def one_line(e: pytest.ExceptionInfo) -> str:
  message = str(e.value)
  assert "\n" not in message
  return message


DOCS = [f"document {i} says {'hello ' * (i % 5)}world." for i in range(40)]


@pytest.fixture
def corpus(tmp_path):
  write_docs(tmp_path / "a.txt", DOCS[:25])
  write_docs(tmp_path / "b.txt", DOCS[25:])
  return data_config(paths=str(tmp_path / "*.txt"))


# --- local text builder -------------------------------------------------------------------------------------


def test_split_is_deterministic_tail_in_file_order(tmp_path, corpus):
  train, val = read_split(corpus, "train", tmp_path / "d1"), read_split(corpus, "validation", tmp_path / "d1")
  assert train == DOCS[:36] and val == DOCS[36:]
  again = read_split(corpus, "train", tmp_path / "d2"), read_split(corpus, "validation", tmp_path / "d2")
  assert again == (train, val)
  source = sources.open_split(corpus, "validation", tmp_path / "d1")
  assert len(source) == 4 and [r["text"] for r in source.records()] == DOCS[36:]


def test_single_document_is_split_at_a_line_boundary(tmp_path):
  text = "".join(f"line {i:03d} of the only document\n" for i in range(100))
  (tmp_path / "one.txt").write_text(text)
  cfg = data_config(paths=str(tmp_path / "one.txt"), document_split="file")
  (train,), (val,) = read_split(cfg, "train", tmp_path), read_split(cfg, "validation", tmp_path)
  assert train + val == text and val.startswith("line 090") and len(val) == len(text) // 10


def test_line_and_paragraph_documents():
  assert text_files.split_into_documents("a\n\n \nb\nc\n\n", "paragraph") == ["a", "b\nc"]
  assert text_files.split_into_documents("a\n\n b \nc", "line") == ["a", "b", "c"]


def test_changing_a_file_invalidates_the_cache(tmp_path, corpus):
  before = sources.open_split(corpus, "train", tmp_path / "data")
  assert len(before) == 36  # counted once, kept in the index
  write_docs(tmp_path / "a.txt", ["a new first document"] + DOCS[1:25])
  after = sources.open_split(corpus, "train", tmp_path / "data")
  assert after.fingerprint != before.fingerprint and next(after.documents()) == "a new first document"
  assert len(list((tmp_path / "data" / "local_text").iterdir())) == 2  # both versions side by side
  assert sources.open_split(corpus, "train", tmp_path / "data").fingerprint == after.fingerprint


def test_missing_and_empty_files_fail_naming_data_paths(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    text_files.resolve_paths(f"{tmp_path}/nope*.txt")
  assert "data.paths" in one_line(e) and "nope*.txt" in str(e.value)
  write_docs(tmp_path / "ok.txt", ["text"])
  with pytest.raises(FileNotFoundError) as e:  # one bad entry in a list is an error, not silently dropped
    text_files.resolve_paths(f"{tmp_path}/ok.txt, {tmp_path}/missing.txt")
  assert "missing.txt" in one_line(e)
  (tmp_path / "empty.txt").write_text("")
  with pytest.raises(DataError) as e:
    text_files.resolve_paths(str(tmp_path / "empty.txt"))
  assert "data.paths" in one_line(e) and "empty" in str(e.value)
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "e1.txt").write_text("")
  (tmp_path / "sub" / "e2.txt").write_text("")
  with pytest.raises(DataError) as e:
    text_files.resolve_paths(f"{tmp_path}/sub/*.txt")
  assert "data.paths" in one_line(e) and "all 2" in str(e.value)
  assert text_files.resolve_paths(f"{tmp_path}/sub/*.txt,{tmp_path}/ok.txt") == [(tmp_path / "ok.txt").resolve()]
  (tmp_path / "blank.txt").write_text("  \n\n\t\n")
  with pytest.raises(DataError) as e:
    read_split(data_config(paths=str(tmp_path / "blank.txt")), "train", tmp_path / "data")
  assert "data.paths" in one_line(e) and "no text" in str(e.value)


def test_invalid_utf8_replace_or_fail(tmp_path):
  cfg = data_config(paths=str(tmp_path / "bad.txt"), validation_fraction=0.5, document_split="line")
  (tmp_path / "bad.txt").write_bytes(b"hello\xff world\nsecond line\n")
  assert read_split(cfg, "train", tmp_path / "r") == ["hello\ufffd world"]
  cfg.invalid_utf8 = "fail"
  with pytest.raises(DataError) as e:
    read_split(cfg, "train", tmp_path / "f")
  assert "bad.txt" in one_line(e) and "byte offset 5" in str(e.value) and "data.invalid_utf8" in str(e.value)
  assert not list((tmp_path / "f").glob("local_text/*/*"))  # nothing half-prepared is left to reuse


def test_embedded_source_is_read_like_local_files(tmp_path):
  cfg = data_config(source="embedded")
  train = sources.open_split(cfg, "train", tmp_path)
  val = sources.open_split(cfg, "validation", tmp_path)
  assert len(train) > 0 and len(val) > 0 and train.fingerprint.startswith("embedded-")
  assert sources.open_split(cfg, "train", tmp_path).fingerprint == train.fingerprint  # not rewritten
  assert list(sources.iter_texts(cfg, "train", tmp_path, max_docs=3)) == list(train.documents())[:3]


def test_tfds_source_reads_prepared_and_explains_unprepared(tmp_path, corpus):
  builder = local_text.prepare(text_files.resolve_paths(corpus.paths), tmp_path)
  cfg = data_config(source="tfds", tfds_name=f"local_text/{builder.builder_config.name}")
  assert read_split(cfg, "validation", tmp_path) == DOCS[36:]
  with pytest.raises(DataError) as e:
    sources.open_split(data_config(source="tfds", tfds_name="lm1b"), "train", tmp_path)
  assert "tfds build lm1b" in one_line(e) and "data.data_dir" in str(e.value)


# --- tokenized stream and windows ---------------------------------------------------------------------------


@pytest.fixture
def tokenizer(tmp_path, corpus):
  return build_tokenizer("char", lambda: sources.iter_texts(corpus, "train", tmp_path / "data"),
                         tmp_path / "tokenizer")


def test_tokenize_split_layout_and_cache(tmp_path, corpus, tokenizer):
  split = pipeline.tokenize_split(corpus, "train", tokenizer, tmp_path / "data")
  docs = DOCS[:36]
  assert split.num_documents == len(docs) and split.tokens.dtype == np.uint16
  ends = list(split.doc_starts[1:]) + [split.num_tokens]
  for doc, start, end in zip(docs, split.doc_starts, ends):
    assert split.tokens[start] == BOS_ID and split.tokens[end - 1] == EOS_ID
    assert tokenizer.decode(split.tokens[start + 1:end - 1].astype(np.int32)) == doc
  cached = pipeline.tokenize_split(corpus, "train", tokenizer, tmp_path / "data")
  assert isinstance(cached.tokens.base, np.memmap) and cached.name == split.name
  np.testing.assert_array_equal(cached.tokens, split.tokens)
  assert len(list((tmp_path / "data" / "tokenized").iterdir())) == 1


def test_tokenize_with_worker_processes_matches_in_process(tmp_path, corpus, tokenizer):
  in_process = pipeline.tokenize_split(corpus, "train", tokenizer, tmp_path / "a")
  workers = pipeline.tokenize_split(data_config(paths=corpus.paths, num_workers=2), "train", tokenizer,
                                    tmp_path / "b")
  np.testing.assert_array_equal(in_process.tokens, workers.tokens)
  np.testing.assert_array_equal(in_process.doc_starts, workers.doc_starts)


def stream(num_docs: int = 30, seed: int = 0) -> TokenizedSplit:
  rng = np.random.default_rng(seed)
  docs = [np.concatenate([[BOS_ID], rng.integers(7, 50, rng.integers(0, 40)), [EOS_ID]]) for _ in range(num_docs)]
  starts = np.cumsum([0] + [len(d) for d in docs[:-1]])
  return TokenizedSplit(np.concatenate(docs).astype(np.uint16), starts.astype(np.int64), "synthetic")


def naive_window(split: TokenizedSplit, start: int, seq_len: int) -> dict[str, list]:
  """Per-token reference for window_batch."""
  doc_of = np.zeros(split.num_tokens, np.int64)
  for d, s in enumerate(split.doc_starts):
    doc_of[s:] = d
  out = {k: [] for k in ("inputs", "targets", "segment_ids", "positions", "loss_mask")}
  segment, position = 0, 0
  for j in range(seq_len):
    t = start + j
    if t + 1 >= split.num_tokens:  # no target: padding
      for k in out:
        out[k].append(0)
      continue
    if j == 0 or doc_of[t] != doc_of[t - 1]:
      segment, position = segment + 1, 0
    out["inputs"].append(int(split.tokens[t]))
    out["targets"].append(int(split.tokens[t + 1]))
    out["segment_ids"].append(segment)
    out["positions"].append(position)
    out["loss_mask"].append(float(doc_of[t + 1] == doc_of[t]))
    position += 1
  return out


def test_window_fields_on_hand_made_three_documents():
  tokens = [BOS_ID, 10, 11, 12, EOS_ID, BOS_ID, 20, EOS_ID, BOS_ID, 30, 31, 32, 33, EOS_ID]
  split = TokenizedSplit(np.asarray(tokens, np.uint16), np.asarray([0, 5, 8], np.int64))
  batch = pipeline.window_batch(split, np.asarray([0, 3, 10]), 8)
  np.testing.assert_array_equal(batch["segment_ids"][0], [1, 1, 1, 1, 1, 2, 2, 2])
  np.testing.assert_array_equal(batch["positions"][0], [0, 1, 2, 3, 4, 0, 1, 2])
  np.testing.assert_array_equal(batch["loss_mask"][0], [1, 1, 1, 1, 0, 1, 1, 0])
  np.testing.assert_array_equal(batch["segment_ids"][1], [1, 1, 2, 2, 2, 3, 3, 3])
  np.testing.assert_array_equal(batch["positions"][1], [0, 1, 0, 1, 2, 0, 1, 2])
  np.testing.assert_array_equal(batch["inputs"][2], [31, 32, 33, 0, 0, 0, 0, 0])  # the final EOS has no target
  np.testing.assert_array_equal(batch["targets"][2], [32, 33, EOS_ID, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(batch["loss_mask"][2], [1, 1, 1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(batch["segment_ids"][2], [1, 1, 1, 0, 0, 0, 0, 0])
  for row, start in enumerate([0, 3, 10]):
    for key, want in naive_window(split, start, 8).items():
      np.testing.assert_array_equal(batch[key][row], want, err_msg=f"{key} at start {start}")
  assert {k: v.dtype for k, v in batch.items()} == {"inputs": np.int32, "targets": np.int32,
                                                   "segment_ids": np.int32, "positions": np.int32,
                                                   "loss_mask": np.float32}


def test_window_fields_match_naive_reference_on_random_stream():
  split, seq_len = stream(), 24
  starts = np.arange(0, split.num_tokens - 1, 7)
  batch = pipeline.window_batch(split, starts, seq_len)
  for row, start in enumerate(starts):
    for key, want in naive_window(split, int(start), seq_len).items():
      np.testing.assert_array_equal(batch[key][row], want, err_msg=f"{key} at start {start}")


def take(dataset, n: int) -> list[dict[str, np.ndarray]]:
  it = iter(dataset)
  return [next(it) for _ in range(n)]


def test_train_batches_are_exact_windows_and_each_epoch_a_permutation():
  split, seq_len, batch_size = stream(), 16, 4
  num_windows = (split.num_tokens - 1) // seq_len - 1  # one window is given up for the per-epoch grid shift
  batches = take(pipeline.make_train_dataset(split, seq_len, batch_size, seed=3), 3 * num_windows // batch_size)
  starts = []
  for batch in batches:
    assert batch["inputs"].shape == (batch_size, seq_len)
    for inputs, targets in zip(batch["inputs"], batch["targets"]):
      matches = [s for s in range(split.num_tokens - seq_len) if np.array_equal(split.tokens[s:s + seq_len], inputs)]
      start = matches[0]
      np.testing.assert_array_equal(targets, split.tokens[start + 1:start + seq_len + 1])
      starts.append(start)
  epochs = [starts[i * num_windows:(i + 1) * num_windows] for i in range(len(starts) // num_windows)]
  shifts = []
  for epoch in epochs:
    shift = min(epoch) % seq_len
    shifts.append(shift)
    assert sorted(epoch) == [shift + k * seq_len for k in range(num_windows)]  # the whole grid, each window once
  assert epochs[0] != epochs[1]  # reshuffled each epoch
  assert len(set(shifts)) > 1  # and the grid moves between epochs


def test_train_batches_depend_only_on_seed():
  split = stream()
  a, b = (take(pipeline.make_train_dataset(split, 16, 4, seed=1), 5) for _ in range(2))
  c = take(pipeline.make_train_dataset(split, 16, 4, seed=2), 5)
  assert all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, b))
  assert not all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, c))


def test_processes_together_see_the_global_batch():
  split = stream()
  whole = take(pipeline.make_train_dataset(split, 16, 6, seed=0), 8)
  parts = [take(pipeline.make_train_dataset(split, 16, 6, seed=0, process_index=p, process_count=2), 8)
           for p in range(2)]
  for k, batch in enumerate(whole):
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([parts[0][k][key], parts[1][k][key]]), batch[key])
  with pytest.raises(DataError, match="train.batch_size"):
    pipeline.make_train_dataset(split, 16, 5, seed=0, process_count=2)
  with pytest.raises(DataError, match="data.seq_len"):
    pipeline.make_train_dataset(split, split.num_tokens, 2, seed=0)


def test_iterator_state_restores_the_exact_continuation(tmp_path):
  dataset = pipeline.make_train_dataset(stream(), 16, 4, seed=0)
  it = iter(dataset)
  for _ in range(7):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(5)]

  fresh = iter(dataset)
  fresh.set_state(state)
  for want in expected:
    got = next(fresh)
    assert all(np.array_equal(got[k], want[k]) for k in want)

  manager = ocp.CheckpointManager(tmp_path / "ckpt")
  it = iter(dataset)
  for _ in range(7):
    next(it)
  manager.save(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  restored = iter(dataset)
  manager.restore(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  manager.close()
  for want in expected:
    got = next(restored)
    assert all(np.array_equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_cover_every_target_once(process_count):
  split, seq_len, batch_size = stream(), 16, 4
  per_process = [pipeline.make_eval_batches(split, seq_len, batch_size, process_index=p,
                                            process_count=process_count) for p in range(process_count)]
  assert len({len(b) for b in per_process}) == 1  # every process runs the same number of eval steps
  rows = [{k: np.concatenate([p[i][k] for p in per_process]) for k in per_process[0][i]}
          for i in range(len(per_process[0]))]
  targets = np.concatenate([b["targets"][b["segment_ids"] > 0] for b in rows])
  np.testing.assert_array_equal(targets, split.tokens[1:])
  boundaries = np.isin(np.arange(1, split.num_tokens), split.doc_starts)
  assert sum(b["loss_mask"].sum() for b in rows) == split.num_tokens - 1 - boundaries.sum()
  assert rows[-1]["loss_mask"][-1].sum() == 0  # the last batch is padded
  assert len(pipeline.make_eval_batches(split, seq_len, batch_size, max_batches=2)) == 2


def test_batch_fetch_is_fast():
  split = TokenizedSplit(np.random.default_rng(0).integers(7, 256, 200_000).astype(np.uint16),
                         np.arange(0, 200_000, 300, dtype=np.int64))
  it = iter(pipeline.make_train_dataset(split, 64, 12, seed=0))
  for _ in range(50):
    next(it)
  start = time.perf_counter()
  for _ in range(500):
    next(it)
  per_batch = (time.perf_counter() - start) / 500
  assert per_batch < 1e-3, f"{per_batch * 1e6:.0f} us per batch"


def test_random_sampling_is_deterministic_exact_and_covers_offsets(tmp_path):
  split, seq_len = stream(), 16
  a, b = (take(pipeline.make_train_dataset(split, seq_len, 8, seed=5, sampling="random"), 20) for _ in range(2))
  starts = set()
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["inputs"], y["inputs"])
    for inputs, targets in zip(x["inputs"], x["targets"]):
      start = next(s for s in range(split.num_tokens - seq_len) if np.array_equal(split.tokens[s:s + seq_len], inputs))
      np.testing.assert_array_equal(targets, split.tokens[start + 1:start + seq_len + 1])
      starts.add(start % seq_len)
  assert len(starts) > seq_len // 2  # not tied to a grid
  it = iter(pipeline.make_train_dataset(split, seq_len, 8, seed=5, sampling="random"))
  next(it)
  state = it.get_state()
  expected = next(it)
  it2 = iter(pipeline.make_train_dataset(split, seq_len, 8, seed=5, sampling="random"))
  it2.set_state(state)
  np.testing.assert_array_equal(next(it2)["inputs"], expected["inputs"])


def test_unknown_sampling_is_rejected():
  with pytest.raises(DataError, match="data.sampling"):
    pipeline.make_train_dataset(stream(), 16, 4, seed=0, sampling="shuffled")
