"""Where documents and examples come from: the kinds of `data.source`, and the one way every task reads them.

A source kind is a `SourceKind` subclass registered beside its code with `@SOURCES.register(name)` (here:
embedded, files, tfds; lmjax/data/hf_datasets.py: hf), so config validation and error messages take the valid
names from the registry. Opening a split gives a `Split`: its records in order (dicts: a local text document is
{'text': ...}, a TFDS or Hugging Face record has the dataset's own columns) and a `fingerprint` naming its exact
content, which keys the caches built from it.

Tasks read data through these functions, whatever the source kind, and also for a weighted mixture
(`data.mixture`, see lmjax/data/mixture.py):

  iter_records(data_cfg, split, data_dir, max_records=None) -> Iterator[dict]   records of `split`
  iter_texts(data_cfg, split, data_dir, max_docs=None) -> Iterator[str]         their `data.text_key` texts
  named_sources(data_cfg) -> list[(name, weight, data section)]                 one per mixture entry, or one
  open_split(data_cfg, split, data_dir) -> Split                                one source's split

`split` is data.train_split or data.eval_split (a TFDS-style slice such as 'train[:90%]' also works for local text
and TFDS). Of a mixture, iter_records interleaves the entries' records in proportion to their weights.
"""

from __future__ import annotations

import abc
import hashlib
import itertools
import os
import re
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import ml_collections
import tensorflow_datasets as tfds

from lmjax import config as config_lib
from lmjax import config_mixture
from lmjax.data import local_text, text_files
from lmjax.data.text_files import DataError
from lmjax.registry import SOURCES

LOCAL_SPLITS = ("train", "validation")
Record = dict[str, Any]


class Split(abc.ABC):
  """One split of one source, read in order."""

  fingerprint: str  # names the exact content (files and their versions, settings, split), for caches
  streaming: bool = False  # read as a stream (data.hf_streaming): no cache is built from it for training

  @abc.abstractmethod
  def records(self) -> Iterator[Record]:
    """Every record of the split, in order."""

  def texts(self, key: str) -> Iterator[str]:
    """The text under `key` of every record; a record without it is a one-line DataError naming the keys it has."""
    for record in self.records():
      yield text_of(record, key, self)

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.fingerprint})"


def text_of(record: Record, key: str, where: Any) -> str:
  """record[key] as str; 'a.b' reads a nested column (a translation dataset's {'translation': {'de': ...}})."""
  value: Any = record
  for part in key.split("."):
    if not isinstance(value, dict) or part not in value:
      have = sorted(value) if isinstance(value, dict) else type(value).__name__
      raise DataError(f"data.text_key={key!r} is not a column of {where}; it has {have}")
    value = value[part]
  return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


class SourceKind(abc.ABC):
  """A kind of data.source. Subclasses register with `@SOURCES.register(name)`."""

  # data.* fields only this kind reads; another kind's config must leave them at their defaults.
  owned_fields: ClassVar[tuple[str, ...]] = ()

  @classmethod
  def validate(cls, cfg: ml_collections.ConfigDict) -> None:
    """One-line checks of the fields this kind reads (cfg.data); touches no data."""
    del cfg

  @classmethod
  def streams(cls, data_cfg: ml_collections.ConfigDict) -> bool:
    """Whether training reads this source as a stream rather than from a token cache."""
    del data_cfg
    return False

  @classmethod
  @abc.abstractmethod
  def open(cls, data_cfg: ml_collections.ConfigDict, split: str, data_dir: Path) -> Split:
    """The split, preparing whatever the kind prepares on first use (under data_dir)."""


# --- local text: embedded and files ---------------------------------------------------------------------------------

class LocalSplit(Split):
  """Documents of local text files, streamed (lmjax.data.local_text.LocalCorpus), optionally sliced."""

  def __init__(self, corpus: local_text.LocalCorpus, split: str, source: str):
    self.corpus, self.split, self.source = corpus, split, source
    self.fingerprint = f"{source}-{corpus.name}-{split_key(split)}"

  def ranges(self) -> list[tuple[str, int, int]]:
    """(base split, first, end) document ranges of the split spec, by TFDS's slicing rules ('train[:90%]')."""
    index = self.corpus.index()
    try:
      instruction = tfds.core.ReadInstruction.from_spec(self.split)
      sizes = {s: types.SimpleNamespace(num_examples=index[s]) for s in LOCAL_SPLITS}
      absolute = instruction.to_absolute(sizes)
    except (ValueError, KeyError, AssertionError) as e:
      raise DataError(f"split {self.split!r} (data.train_split / data.eval_split) does not exist for local text; it "
                      f"has splits {LOCAL_SPLITS} (slices such as 'train[:90%]' work too)") from e
    return [(a.splitname, a.from_ or 0, index[a.splitname] if a.to is None else a.to) for a in absolute]

  def documents(self) -> Iterator[str]:
    for base, first, end in self.ranges():
      yield from itertools.islice(self.corpus.split(base), first, end)

  def records(self) -> Iterator[Record]:
    return ({"text": doc} for doc in self.documents())

  def texts(self, key: str) -> Iterator[str]:
    del key  # local text has one column
    return self.documents()

  def __len__(self) -> int:
    return sum(end - first for _, first, end in self.ranges())


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


def local_corpus(data_cfg: ml_collections.ConfigDict, data_dir: Path) -> local_text.LocalCorpus:
  files = [_embedded_file(data_dir)] if data_cfg.source == "embedded" else text_files.resolve_paths(data_cfg.paths)
  return local_text.LocalCorpus.of(files, data_dir, document_split=data_cfg.document_split,
                                   validation_fraction=data_cfg.validation_fraction,
                                   invalid_utf8=data_cfg.invalid_utf8,
                                   document_separator=data_cfg.document_separator,
                                   allow_binary=data_cfg.get("allow_binary", False))


def _check_local_split(data_cfg: ml_collections.ConfigDict, split: str) -> None:
  if _base_split(split) not in LOCAL_SPLITS:
    raise DataError(f"split {split!r} (data.train_split / data.eval_split) does not exist for "
                    f"data.source={data_cfg.source!r}; local text has splits {LOCAL_SPLITS}")


@SOURCES.register("embedded")
class EmbeddedSource(SourceKind):
  """The corpus that ships with lmjax (lmjax/data/corpus/)."""

  @classmethod
  def open(cls, data_cfg: ml_collections.ConfigDict, split: str, data_dir: Path) -> LocalSplit:
    _check_local_split(data_cfg, split)
    return LocalSplit(local_corpus(data_cfg, data_dir), split, "embedded")


@SOURCES.register("files")
class FilesSource(SourceKind):
  """Local text files: data.paths, a file, glob or comma-separated list."""

  @classmethod
  def validate(cls, cfg: ml_collections.ConfigDict) -> None:
    if not cfg.data.paths.strip():
      config_lib.fail("data.paths", cfg.data.paths, "data.source='files' needs a file, glob or comma-separated list")

  @classmethod
  def open(cls, data_cfg: ml_collections.ConfigDict, split: str, data_dir: Path) -> LocalSplit:
    _check_local_split(data_cfg, split)
    return LocalSplit(local_corpus(data_cfg, data_dir), split, "files")


# --- TFDS ------------------------------------------------------------------------------------------------------------

class TextSource(Split, Sequence):
  """Records of a prepared TFDS dataset (random access); bytes become str."""

  def __init__(self, records: Any, key: str, fingerprint: str):
    self.data, self.key, self.fingerprint = records, key, fingerprint

  def __len__(self) -> int:
    return len(self.data)

  def __getitem__(self, index):  # type: ignore[override]
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    if not -len(self) <= index < len(self):
      raise IndexError(f"document {index} out of range for {len(self)} documents")
    return text_of(self.data[index % len(self)], self.key, self)

  def records(self) -> Iterator[Record]:
    for i in range(len(self.data)):
      yield {k: v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v for k, v in self.data[i].items()}

  def texts(self, key: str) -> Iterator[str]:
    return (text_of(self.data[i], key, self) for i in range(len(self.data)))


@SOURCES.register("tfds")
class TfdsSource(SourceKind):
  """A TFDS dataset prepared as array_record under data.data_dir (data.tfds_name; the text under data.text_key)."""

  @classmethod
  def validate(cls, cfg: ml_collections.ConfigDict) -> None:
    if not cfg.data.tfds_name.strip():
      config_lib.fail("data.tfds_name", cfg.data.tfds_name, "data.source='tfds' needs a TFDS dataset name, e.g. "
                      "'lm1b'")

  @classmethod
  def open(cls, data_cfg: ml_collections.ConfigDict, split: str, data_dir: Path) -> TextSource:
    name = data_cfg.tfds_name
    if not name:
      raise DataError("data.tfds_name is empty; data.source='tfds' needs a TFDS dataset name, e.g. 'lm1b'")
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
    if data_cfg.text_key.split(".")[0] not in features:
      raise DataError(f"data.text_key={data_cfg.text_key!r} is not a feature of {name}; "
                      f"it has {sorted(features.keys())}")
    try:
      records = builder.as_data_source(split=split)
    except NotImplementedError as e:  # prepared as tfrecord: no random access
      raise DataError(f"data.tfds_name={name!r} in {data_dir} is not in array_record format; {fix}") from e
    key = f"{name}:{builder.version}:{split}:{len(records)}:{data_cfg.text_key}"
    fingerprint = f"tfds-{_safe(name)}-{_safe(split)}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    return TextSource(records, data_cfg.text_key, fingerprint)


def _base_split(split: str) -> str:
  return re.split(r"[\[+]", split, maxsplit=1)[0].strip()


def _safe(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def split_key(split: str) -> str:
  """The split in a file name; slices that sanitize alike ('validation[:50%]', 'validation[50%:]') get a digest of
  the exact text, so their token caches never collide."""
  safe = _safe(split)
  return safe if safe == split else f"{safe}-{hashlib.sha256(split.encode()).hexdigest()[:8]}"


# --- what tasks call -------------------------------------------------------------------------------------------------

def open_split(data_cfg: ml_collections.ConfigDict, split: str, data_dir: str | os.PathLike) -> Split:
  """One source's split (data_cfg names one source: no data.mixture, or one entry's section of it)."""
  if data_cfg.get("mixture", ""):
    raise DataError("data.mixture names several sources; open each entry's section (sources.named_sources)")
  if data_cfg.source not in SOURCES:
    raise DataError(SOURCES.unknown_message(data_cfg.source))
  return SOURCES.get(data_cfg.source).open(data_cfg, split, Path(data_dir))


def streams(data_cfg: ml_collections.ConfigDict) -> bool:
  """Whether training reads this one source as a stream (data.hf_streaming) instead of a cached token split."""
  return SOURCES.get(data_cfg.source).streams(data_cfg)


def named_sources(data_cfg: ml_collections.ConfigDict) -> list[tuple[str, float, ml_collections.ConfigDict]]:
  """(name, weight, data section) of every source the run reads: each data.mixture entry with its weight
  normalized, or the one source of the data section, named after its kind, with weight 1."""
  if not data_cfg.get("mixture", "").strip():
    return [(data_cfg.source, 1.0, data_cfg)]
  entries = config_mixture.parse_mixture(data_cfg.mixture)
  total = sum(e.weight for e in entries)
  return [(e.name, e.weight / total, config_mixture.mixture_entry_data(data_cfg, e)) for e in entries]


def iter_records(data_cfg: ml_collections.ConfigDict, split: str, data_dir: str | os.PathLike,
                 max_records: int | None = None) -> Iterator[Record]:
  """The records of `split`, in order; of a mixture, the entries' records interleaved by weight (each record
  goes to the entry furthest behind its share), until every entry has run out. At most max_records."""
  named = named_sources(data_cfg)
  if len(named) == 1:
    yield from itertools.islice(open_split(named[0][2], split, data_dir).records(), max_records)
    return
  streams_ = [iter(open_split(section, split, data_dir).records()) for _, _, section in named]
  yield from itertools.islice(_interleave(streams_, [w for _, w, _ in named]), max_records)


def iter_texts(data_cfg: ml_collections.ConfigDict, split: str, data_dir: str | os.PathLike,
               max_docs: int | None = None) -> Iterator[str]:
  """The texts (data.text_key) of `split`'s records in order, as iter_records orders them; at most max_docs."""
  named = named_sources(data_cfg)
  if len(named) == 1:
    yield from itertools.islice(open_split(named[0][2], split, data_dir).texts(named[0][2].text_key), max_docs)
    return
  streams_ = [iter(open_split(section, split, data_dir).texts(section.text_key)) for _, _, section in named]
  yield from itertools.islice(_interleave(streams_, [w for _, w, _ in named]), max_docs)


def _interleave(iterators: list[Iterator[Any]], weights: list[float]) -> Iterator[Any]:
  taken = [0] * len(iterators)
  live = list(range(len(iterators)))
  while live:
    total = sum(taken[i] for i in live) + 1
    i = min(live, key=lambda j: (taken[j] - weights[j] * total / sum(weights[k] for k in live), j))
    try:
      item = next(iterators[i])
    except StopIteration:
      live.remove(i)
      continue
    taken[i] += 1
    yield item
