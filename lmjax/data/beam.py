"""Token caches prepared by Apache Beam, for corpora too big for one host (pip install 'lmjax[beam]').

The pipeline has one element per input file: a worker reads the file's documents exactly as the one-process path
reads them (lmjax.data.local_text for text files; JSONL lines and Parquet rows in file order for data.source='hf'
with hf_name 'json' or 'parquet'), tokenizes them with the run's tokenizer and writes the file's packed tokens as a
shard under `shards_dir` (any filesystem Beam knows: a local or mounted path, gs://, s3://, hdfs://). A short
merge on one host then concatenates the shards in file order into the caches that training reads
(data_dir/tokenized/<split fingerprint>-<tokenizer>/, the same directories and bytes as lmjax.data.pipeline
writes), splitting local text into train and validation by documents as the one-process path does. The merge only
copies bytes, so its memory is a few buffers whatever the corpus size.

Beam runs it anywhere: the DirectRunner on this machine (--direct_num_workers), or Dataflow, Spark and Flink with
their usual pipeline options (docs/data.md). Workers need lmjax installed (a container image or --setup_file).
"""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from lmjax.data import local_text, pipeline, sources, text_files
from lmjax.data.hf_datasets import parse_data_files
from lmjax.data.text_files import DataError
from lmjax.data.tokenizers import Tokenizer

READERS = ("text", "json", "parquet")


@dataclasses.dataclass(frozen=True)
class ShardInput:
  """One input file and how to read its documents; `index` orders the shards of one output."""
  output: str  # which cache the documents go to (a split of a source)
  index: int
  path: str
  reader: str  # 'text', 'json' or 'parquet'
  document_split: str = "paragraph"
  separator: str = ""
  invalid_utf8: str = "replace"
  text_key: str = "text"


def read_documents(shard: ShardInput) -> Iterator[str]:
  """The documents of one file, in order, as the one-process path reads them."""
  if shard.reader == "text":
    yield from text_files.iter_file_documents(Path(shard.path), shard.document_split, shard.separator,
                                              shard.invalid_utf8)
  elif shard.reader == "json":
    with open(shard.path, encoding="utf-8") as f:
      for line_no, line in enumerate(f, start=1):
        if line.strip():
          yield sources.text_of(json.loads(line), shard.text_key, f"{shard.path}:{line_no}")
  elif shard.reader == "parquet":
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
    column = shard.text_key.split(".")[0]
    for batch in pq.ParquetFile(shard.path).iter_batches(columns=[column]):
      for row in batch.to_pylist():
        yield sources.text_of(row, shard.text_key, shard.path)
  else:
    raise DataError(f"{shard.path}: no reader {shard.reader!r}; use one of {READERS}")


def _shard_name(shards_dir: str, shard: ShardInput) -> str:
  return f"{shards_dir.rstrip('/')}/{shard.output}/shard-{shard.index:06d}"


class TokenizeShard:
  """A Beam Map function: reads and tokenizes one file and writes its shard (tokens, document sizes, counts)."""

  def __init__(self, tokenizer: Tokenizer, shards_dir: str):
    self.tokenizer_bytes, self.shards_dir = pickle.dumps(tokenizer), shards_dir
    self._encode: Any = None

  def __call__(self, shard: ShardInput) -> tuple[str, int, int, int]:
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
    if self._encode is None:
      tokenizer = pickle.loads(self.tokenizer_bytes)
      self._encode = pipeline.EncodeChunk(tokenizer, pipeline._token_dtype(tokenizer.vocab_size))  # pylint: disable=protected-access
    name = _shard_name(self.shards_dir, shard)
    sizes, num_tokens = [], 0
    with FileSystems.create(name + ".tokens") as out:
      for chunk in pipeline.chunked(read_documents(shard)):
        tokens, chunk_sizes = self._encode(chunk)
        out.write(tokens.tobytes())
        sizes.append(chunk_sizes)
        num_tokens += int(tokens.shape[0])
    buffer = io.BytesIO()
    np.save(buffer, np.concatenate(sizes) if sizes else np.zeros(0, np.int64))
    with FileSystems.create(name + ".sizes.npy") as out:
      out.write(buffer.getvalue())
    return shard.output, shard.index, sum(s.shape[0] for s in sizes), num_tokens


def run_pipeline(shards: Sequence[ShardInput], tokenizer: Tokenizer, shards_dir: str,
                 beam_args: Sequence[str] = ()) -> list[tuple[str, int, int, int]]:
  """Tokenizes every shard with Beam; returns (output, index, documents, tokens) of each."""
  import apache_beam as beam  # pylint: disable=import-outside-toplevel
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
  summary = f"{shards_dir.rstrip('/')}/summary.json"
  with beam.Pipeline(options=PipelineOptions(list(beam_args))) as p:
    _ = (p
         | "Files" >> beam.Create(list(shards))
         | "Spread" >> beam.Reshuffle()
         | "Tokenize" >> beam.Map(TokenizeShard(tokenizer, shards_dir))
         | "Collect" >> beam.combiners.ToList()
         | "Summary" >> beam.Map(lambda rows: _write(summary, json.dumps(sorted(rows)).encode())))
  with FileSystems.open(summary) as f:
    return [tuple(row) for row in json.loads(f.read())]


def _write(path: str, data: bytes) -> None:
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
  with FileSystems.create(path) as f:
    f.write(data)


# --- what to prepare, and the merge -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Output:
  """One cache to write: the documents [first, end) of the concatenated shards of `shards_of`."""
  name: str
  directory: Path
  shards_of: str
  first: int = 0
  end: int | None = None


def plan(data_cfg: ml_collections.ConfigDict, tokenizer: Tokenizer,
         data_dir: Path) -> tuple[list[ShardInput], list[Output], dict[str, Any]]:
  """The shards and caches of every source of a run (each data.mixture entry, or the one source); the third value
  holds what the merge needs to split local text ({shards_of: local corpus})."""
  shard_inputs: list[ShardInput] = []
  outputs: list[Output] = []
  corpora: dict[str, Any] = {}
  for name, _, section in sources.named_sources(data_cfg):
    splits = [section.train_split, section.eval_split]
    if section.source in ("embedded", "files"):
      corpus = sources.local_corpus(section, data_dir)
      key = f"{name}-{corpus.name}"
      corpora[key] = corpus
      shard_inputs += [ShardInput(key, i, f, "text", section.document_split, section.document_separator,
                                  section.invalid_utf8) for i, f in enumerate(corpus.config.files)]
      for split in splits:
        if split not in sources.LOCAL_SPLITS:
          raise DataError(f"split {split!r}: the Beam path prepares the local splits {sources.LOCAL_SPLITS}, "
                          f"without slices")
        source = sources.LocalSplit(corpus, split, section.source)
        outputs.append(Output(split, pipeline.cache_directory(data_dir, source, tokenizer), key))
    elif section.source == "hf" and section.hf_name in ("json", "parquet") and not section.hf_streaming:
      files = parse_data_files(section.hf_data_files)
      for split in splits:
        if split not in files:
          raise DataError(f"split {split!r} is not in data.hf_data_files={section.hf_data_files!r}; it has "
                          f"{sorted(files)}")
        key = f"{name}-{split}"
        shard_inputs += [ShardInput(key, i, f, section.hf_name, text_key=section.text_key)
                         for i, f in enumerate(files[split])]
        source = sources.open_split(section, split, data_dir)
        outputs.append(Output(split, pipeline.cache_directory(data_dir, source, tokenizer), key))
    else:
      raise DataError(f"data.source={section.source!r} (entry {name!r}): the Beam path reads local text files "
                      f"(files, embedded) and data.source='hf' with hf_name 'json' or 'parquet' and "
                      f"data.hf_data_files, not streamed")
  return shard_inputs, outputs, corpora


def merge(outputs: Sequence[Output], corpora: dict[str, Any], summary: Sequence[tuple[str, int, int, int]],
          shards_dir: str, dtype: np.dtype) -> list[Path]:
  """Concatenates the shards into the caches, in file order; local text is split by documents."""
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
  docs_of: dict[str, list[tuple[int, int]]] = {}
  for output, index, num_docs, num_tokens in summary:
    docs_of.setdefault(output, []).append((index, num_docs))
  written = []
  for out in outputs:
    if out.directory.joinpath("tokens.npy").exists():
      written.append(out.directory)
      continue
    shards = sorted(docs_of.get(out.shards_of, []))
    total_docs = sum(n for _, n in shards)
    first, end = 0, total_docs
    if out.shards_of in corpora:
      corpus = corpora[out.shards_of]
      fraction = corpus.config.validation_fraction
      if not local_text._by_documents(total_docs, fraction):  # pylint: disable=protected-access
        raise DataError(f"{total_docs} documents are too few to split by documents with data.validation_fraction="
                        f"{fraction}; prepare this corpus in one process (it is small), or split it finer")
      boundary = total_docs - round(total_docs * fraction)
      first, end = (0, boundary) if out.name == "train" else (boundary, total_docs)
    with pipeline.atomic_directory(out.directory) as tmp:
      writer = pipeline.TokenWriter(tmp, dtype)
      try:
        seen = 0
        for index, num_docs in shards:
          lo, hi = max(first - seen, 0), min(end - seen, num_docs)
          seen += num_docs
          if lo >= hi:
            continue
          name = f"{shards_dir.rstrip('/')}/{out.shards_of}/shard-{index:06d}"
          with FileSystems.open(name + ".sizes.npy") as f:
            sizes = np.load(io.BytesIO(f.read()))
          offsets = np.concatenate([[0], np.cumsum(sizes)]) * dtype.itemsize
          with FileSystems.open(name + ".tokens") as f:
            f.seek(int(offsets[lo]))
            remaining = int(offsets[hi] - offsets[lo])
            while remaining:
              block = f.read(min(remaining, 16 << 20))
              writer.raw.write(block)
              remaining -= len(block)
          writer.add_sizes(sizes[lo:hi])
      finally:
        writer.raw.close()
      writer.finish(out.directory.name)
    written.append(out.directory)
  return written


def prepare(data_cfg: ml_collections.ConfigDict, tokenizer: Tokenizer, data_dir: str | Path, shards_dir: str,
            beam_args: Sequence[str] = ()) -> list[Path]:
  """Every train and eval cache of the run's sources, tokenized by Beam; returns the cache directories."""
  data_dir = Path(data_dir)
  shard_inputs, outputs, corpora = plan(data_cfg, tokenizer, data_dir)
  missing = [o for o in outputs if not o.directory.joinpath("tokens.npy").exists()]
  needed = {o.shards_of for o in missing}
  summary = run_pipeline([s for s in shard_inputs if s.output in needed], tokenizer, shards_dir, beam_args) \
      if needed else []
  return merge(outputs, corpora, summary, shards_dir, pipeline._token_dtype(tokenizer.vocab_size))  # pylint: disable=protected-access
