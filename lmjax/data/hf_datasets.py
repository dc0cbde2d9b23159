"""data.source='hf': datasets read through the Hugging Face `datasets` library (pip install 'lmjax[data]').

`data.hf_name` is a hub name ('wikitext'), a local directory holding a dataset, or one of the file formats
`datasets` reads ('json' for JSONL, 'parquet', 'text', 'csv') with `data.hf_data_files` naming the files:
'shards/*.jsonl' (the train split) or 'train=shards/train-*.parquet,validation=shards/val.parquet'.
`data.hf_config` picks a configuration (subset) and `data.text_key` the text column ('a.b' for a nested one).

Without streaming the split is loaded (downloaded once into data_dir/hf/, then memory-mapped Arrow files) and read
like any other source: tokenized once into a cache, batches drawn by index. With `data.hf_streaming=True` nothing
is downloaded ahead: causal-LM training reads documents from the stream as it goes (lmjax/data/streaming.py), and
the checkpoint records the stream's position (`IterableDataset.state_dict`).
"""

from __future__ import annotations

import copy
import glob
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import ml_collections

from lmjax import config as config_lib
from lmjax.data.text_files import DataError
from lmjax.data.sources import Record, SourceKind, Split, text_of
from lmjax.registry import SOURCES

# The builders `datasets` packages for plain files: their data comes from data.hf_data_files.
FILE_FORMATS = ("json", "parquet", "text", "csv", "arrow")
INSTALL = "the Hugging Face datasets library (pip install 'lmjax[data]')"


def datasets_module() -> Any:
  try:
    import datasets  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise DataError(f"data.source='hf' needs {INSTALL}") from None
  datasets.disable_progress_bars()
  datasets.logging.set_verbosity_error()
  return datasets


def parse_data_files(text: str) -> dict[str, list[str]]:
  """'a/*.jsonl' -> {'train': [...]}; 'train=a/*.jsonl,validation=b.jsonl' -> both splits. Globs are expanded
  here (sorted), so a pattern matching nothing fails in one line before `datasets` starts."""
  files: dict[str, list[str]] = {}
  for entry in (e.strip() for e in text.split(",") if e.strip()):
    split, eq, pattern = entry.partition("=")
    split, pattern = (split.strip(), pattern.strip()) if eq else ("train", entry)
    matches = sorted(m for m in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(m))
    if not matches:
      raise DataError(f"data.hf_data_files entry {entry!r} matches no file; fix the path or glob")
    files.setdefault(split, []).extend(matches)
  return files


def _check_split(data_cfg: ml_collections.ConfigDict, split: str, available: list[str]) -> None:
  base = split.split("[", 1)[0].strip()
  if base not in available:
    raise DataError(f"split {split!r} (data.train_split / data.eval_split) is not in data.hf_name="
                    f"{data_cfg.hf_name!r}; it has {available}")


def _no_network(data_cfg: ml_collections.ConfigDict, error: Exception) -> DataError:
  name = data_cfg.hf_name
  cause = " ".join(str(error).split())[:200]
  return DataError(f"data.hf_name={name!r} cannot be loaded: the hub is not reachable ({type(error).__name__}: "
                   f"{cause}); download it first (`huggingface-cli download --repo-type dataset {name} "
                   f"--local-dir DIR`) and set data.hf_name=DIR, or 'parquet'/'json' with data.hf_data_files, or "
                   f"mount it and point HF_DATASETS_CACHE at it")


def load(data_cfg: ml_collections.ConfigDict, split: str, data_dir: Path, *, streaming: bool) -> Any:
  """The `datasets` Dataset (or IterableDataset when streaming) of `split`; one-line DataErrors otherwise."""
  datasets = datasets_module()
  files = parse_data_files(data_cfg.hf_data_files) if data_cfg.hf_data_files.strip() else None
  if files is not None:
    _check_split(data_cfg, split, sorted(files))
  try:
    return datasets.load_dataset(data_cfg.hf_name, data_cfg.hf_config or None, data_files=files, split=split,
                                 streaming=streaming, cache_dir=os.fspath(data_dir / "hf"))
  except ValueError as e:
    message = str(e)
    if "split" in message.lower() and ("Unknown split" in message or "Bad split" in message):
      available = message.split("[", 1)[-1].rsplit("]", 1)[0] if "[" in message else "?"
      raise DataError(f"split {split!r} (data.train_split / data.eval_split) is not in data.hf_name="
                      f"{data_cfg.hf_name!r}; it has [{available}]") from None
    if "config" in message.lower() and data_cfg.hf_config:
      raise DataError(f"data.hf_config={data_cfg.hf_config!r} is not a configuration of data.hf_name="
                      f"{data_cfg.hf_name!r}: {' '.join(message.split())[:300]}") from None
    raise DataError(f"data.hf_name={data_cfg.hf_name!r}: {' '.join(message.split())[:300]}") from None
  except (ConnectionError, TimeoutError) as e:
    raise _no_network(data_cfg, e) from None
  except Exception as e:  # pylint: disable=broad-except
    kind = type(e).__name__
    if "Offline" in kind or "Connection" in kind or "Timeout" in kind or "HTTP" in kind:
      raise _no_network(data_cfg, e) from None
    if kind in ("DatasetNotFoundError", "FileNotFoundError", "DataFilesNotFoundError", "EmptyDatasetError"):
      raise DataError(f"data.hf_name={data_cfg.hf_name!r} is not a dataset here or on the hub ({kind}: "
                      f"{' '.join(str(e).split())[:200]}); check the name, or give a local directory or "
                      f"'json'/'parquet' with data.hf_data_files") from None
    raise


def columns_of(dataset: Any) -> list[str] | None:
  names = dataset.column_names
  return list(names) if names is not None else None


def check_column(data_cfg: ml_collections.ConfigDict, dataset: Any, key: str, field: str = "data.text_key") -> None:
  columns = columns_of(dataset)
  if columns is not None and key.split(".")[0] not in columns:
    raise DataError(f"{field}={key!r} is not a column of data.hf_name={data_cfg.hf_name!r}; it has {columns}")


class HfSplit(Split):
  """A loaded (memory-mapped) split: records in order. Loaded on first read, so a cache built from it (named by
  the fingerprint alone) is found without loading: with data.hf_data_files the fingerprint comes from the files'
  paths, sizes and times, like local text's; a hub dataset's from `datasets`' own fingerprint."""

  def __init__(self, data_cfg: ml_collections.ConfigDict, split: str, data_dir: Path):
    self.data_cfg, self.split, self.data_dir = data_cfg, split, data_dir
    self._dataset = None
    if data_cfg.hf_data_files.strip():
      files = parse_data_files(data_cfg.hf_data_files)
      _check_split(data_cfg, split, sorted(files))
      content = [(os.path.abspath(f), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files[split.split("[")[0]]]
    else:
      content = self.dataset._fingerprint  # pylint: disable=protected-access
    key = json.dumps([data_cfg.hf_name, data_cfg.hf_config, split, data_cfg.text_key, content])
    self.fingerprint = (f"hf-{_safe(data_cfg.hf_name)}-{_safe(split)}-"
                        f"{hashlib.sha256(key.encode()).hexdigest()[:12]}")

  @property
  def dataset(self) -> Any:
    if self._dataset is None:
      self._dataset = load(self.data_cfg, self.split, self.data_dir, streaming=False)
    return self._dataset

  def __len__(self) -> int:
    return len(self.dataset)

  def records(self) -> Iterator[Record]:
    return iter(self.dataset)

  def texts(self, key: str) -> Iterator[str]:
    check_column(self.data_cfg, self.dataset, key)
    if "." in key:
      for record in self.dataset:
        yield text_of(record, key, f"data.hf_name={self.data_cfg.hf_name!r}")
      return
    for batch in self.dataset.select_columns([key]).iter(batch_size=1024):  # Arrow batches: far faster than rows
      for value in batch[key]:
        yield value if isinstance(value, str) else str(value)

  def __repr__(self) -> str:
    return f"data.hf_name={self.data_cfg.hf_name!r} split {self.split!r}"


class HfStream(Split):
  """A streamed split. `dataset(process_index, process_count)` is the IterableDataset of one process's share."""

  streaming = True

  def __init__(self, data_cfg: ml_collections.ConfigDict, dataset: Any, split: str):
    self.data_cfg, self._dataset, self.split = data_cfg, dataset, split
    self._start = copy.deepcopy(dataset.state_dict())
    self.fingerprint = f"hf-stream-{_safe(data_cfg.hf_name)}-{_safe(split)}"

  def dataset(self, process_index: int = 0, process_count: int = 1) -> Any:
    """A fresh IterableDataset at the start of the stream (each reader moves its own); with several processes,
    this process's share."""
    dataset = copy.deepcopy(self._dataset)
    dataset.load_state_dict(copy.deepcopy(self._start))
    if process_count == 1:
      return dataset
    from datasets.distributed import split_dataset_by_node  # pylint: disable=import-outside-toplevel
    return split_dataset_by_node(dataset, rank=process_index, world_size=process_count)

  def records(self) -> Iterator[Record]:
    return iter(self.dataset())

  def texts(self, key: str) -> Iterator[str]:
    check_column(self.data_cfg, self._dataset, key)
    where = f"data.hf_name={self.data_cfg.hf_name!r}"
    return (text_of(record, key, where) for record in self.dataset())

  def __repr__(self) -> str:
    return f"data.hf_name={self.data_cfg.hf_name!r} split {self.split!r} (streaming)"


def _safe(text: str) -> str:
  return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


@SOURCES.register("hf")
class HfSource(SourceKind):
  """A Hugging Face dataset: data.hf_name, hf_config, hf_data_files, hf_streaming; text in data.text_key."""

  owned_fields: ClassVar[tuple[str, ...]] = ("hf_name", "hf_config", "hf_data_files", "hf_streaming")

  @classmethod
  def validate(cls, cfg: ml_collections.ConfigDict) -> None:
    d = cfg.data
    if not d.hf_name.strip():
      config_lib.fail("data.hf_name", d.hf_name, "data.source='hf' needs a dataset: a hub name ('wikitext'), a "
                      "local directory, or 'json'/'parquet'/'text' with data.hf_data_files")
    if d.hf_name in FILE_FORMATS and not d.hf_data_files.strip():
      config_lib.fail("data.hf_data_files", d.hf_data_files, f"data.hf_name={d.hf_name!r} reads files: give a glob "
                      f"(the train split) or 'train=GLOB,validation=GLOB'")
    for entry in (e.strip() for e in d.hf_data_files.split(",") if e.strip()):
      split, eq, pattern = entry.partition("=")
      if eq and (not split.strip() or not pattern.strip()):
        config_lib.fail("data.hf_data_files", d.hf_data_files, f"entry {entry!r} must be GLOB or SPLIT=GLOB")
    if not d.text_key.strip():
      config_lib.fail("data.text_key", d.text_key, "name the column that holds the text")

  @classmethod
  def streams(cls, data_cfg: ml_collections.ConfigDict) -> bool:
    return bool(data_cfg.hf_streaming)

  @classmethod
  def open(cls, data_cfg: ml_collections.ConfigDict, split: str, data_dir: Path) -> Split:
    if data_cfg.hf_streaming:
      if "[" in split:
        raise DataError(f"split {split!r}: a streamed split cannot be sliced; give a split the dataset has, or set "
                        f"data.hf_streaming=False")
      return HfStream(data_cfg, load(data_cfg, split, data_dir, streaming=True), split)
    return HfSplit(data_cfg, split, data_dir)
