"""Random-access sources of text documents for the three `data.source` kinds: embedded, files and tfds.

Embedded and local files go through the same TFDS builder (lmjax.data.local_text), so they are split, cached
and read exactly alike; a prepared TFDS dataset is read through `tfds` data sources. Every source is a
picklable Sequence of str with a `fingerprint` naming its exact content, for downstream caches.
"""

from __future__ import annotations

import hashlib
import itertools
import operator
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import tensorflow_datasets as tfds

from lmjax.data import local_text
from lmjax.data.local_text import DataError

LOCAL_SPLITS = ("train", "validation")


class TextSource(Sequence[str]):
  """Documents as str, decoded from the UTF-8 bytes a TFDS data source holds under `key`."""

  def __init__(self, records: Any, key: str, fingerprint: str):
    self.records, self.key, self.fingerprint = records, key, fingerprint

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index):  # type: ignore[override]
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    index = operator.index(index)
    if not -len(self) <= index < len(self):
      raise IndexError(f"document {index} out of range for {len(self)} documents")
    value = self.records[index % len(self)][self.key]
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)

  def __repr__(self) -> str:
    return f"TextSource({self.fingerprint}, {len(self)} documents)"


def _embedded_file(data_dir: Path) -> Path:
  """Writes the shipped corpus to data_dir once; rewriting only on change keeps its mtime, hence the cache."""
  from lmjax.data.corpus import read_embedded_corpus  # pylint: disable=import-outside-toplevel
  text = read_embedded_corpus()
  path = data_dir / "embedded" / "corpus.txt"
  if not path.exists() or path.read_text(encoding="utf-8") != text:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
  return path


def _local_builder(data_cfg: ml_collections.ConfigDict, data_dir: Path) -> local_text.LocalText:
  if data_cfg.source == "embedded":
    files = [_embedded_file(data_dir)]
  else:
    files = local_text.resolve_paths(data_cfg.paths)
  return local_text.prepare(files, data_dir, document_split=data_cfg.document_split,
                            validation_fraction=data_cfg.validation_fraction, invalid_utf8=data_cfg.invalid_utf8,
                            allow_binary=data_cfg.get("allow_binary", False))


def _base_split(split: str) -> str:
  return re.split(r"[\[+]", split, maxsplit=1)[0].strip()


def _open_local(data_cfg: ml_collections.ConfigDict, split: str, data_dir: Path) -> TextSource:
  if _base_split(split) not in LOCAL_SPLITS:
    raise DataError(f"split {split!r} (data.train_split / data.eval_split) does not exist for "
                    f"data.source={data_cfg.source!r}; local text has splits {LOCAL_SPLITS}")
  builder = _local_builder(data_cfg, data_dir)
  fingerprint = f"{data_cfg.source}-{builder.builder_config.name}-{_safe(split)}"
  return TextSource(builder.as_data_source(split=split), "text", fingerprint)


def _open_tfds(data_cfg: ml_collections.ConfigDict, split: str, data_dir: Path) -> TextSource:
  name = data_cfg.tfds_name
  fix = (f"prepare it with `tfds build {name} --data_dir={data_dir} --file_format=array_record` "
         f"or set data.data_dir to where it is prepared")
  try:
    builder = tfds.builder(name, data_dir=os.fspath(data_dir))
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(f"data.tfds_name={name!r} is not a known or prepared TFDS dataset in {data_dir}; {fix}") from e
  if not builder.is_prepared():
    raise DataError(f"data.tfds_name={name!r} is not prepared in {data_dir}; {fix}")
  if _base_split(split) not in builder.info.splits:
    raise DataError(f"split {split!r} (data.train_split / data.eval_split) is not in {name}; "
                    f"it has {sorted(builder.info.splits)}")
  features = builder.info.features
  if data_cfg.text_key not in features:
    raise DataError(f"data.text_key={data_cfg.text_key!r} is not a feature of {name}; "
                    f"it has {sorted(features.keys())}")
  try:
    records = builder.as_data_source(split=split)
  except NotImplementedError as e:  # prepared as tfrecord: no random access
    raise DataError(f"data.tfds_name={name!r} in {data_dir} is not in array_record format; {fix}") from e
  key = f"{name}:{builder.version}:{split}:{len(records)}:{data_cfg.text_key}"
  fingerprint = f"tfds-{_safe(name)}-{_safe(split)}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
  return TextSource(records, data_cfg.text_key, fingerprint)


def _safe(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def open_split(data_cfg: ml_collections.ConfigDict, split: str, data_dir: str | os.PathLike) -> TextSource:
  """The documents of `split` as a random-access sequence of str, preparing local data on first use."""
  data_dir = Path(data_dir)
  if data_cfg.source in ("embedded", "files"):
    return _open_local(data_cfg, split, data_dir)
  if data_cfg.source == "tfds":
    if not data_cfg.tfds_name:
      raise DataError("data.tfds_name is empty; data.source='tfds' needs a TFDS dataset name, e.g. 'lm1b'")
    return _open_tfds(data_cfg, split, data_dir)
  raise DataError(f"data.source={data_cfg.source!r} is unknown; use 'embedded', 'files' or 'tfds'")


def iter_texts(data_cfg: ml_collections.ConfigDict, split: str, data_dir: str | os.PathLike,
               max_docs: int | None = None) -> Iterator[str]:
  """Documents of `split` in order (for tokenizer training, so pass the train split), at most max_docs."""
  source = open_split(data_cfg, split, data_dir)
  yield from itertools.islice((source[i] for i in range(len(source))), max_docs)
