"""data.mixture's syntax: 'name:weight field=value ...; name:weight ...', one data source per entry."""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
from typing import Any, Mapping

import ml_collections

from lmjax.config import base_config

# The data fields a mixture entry may set: what a source is and how it splits. The rest (seq_len, sampling, ...) are
# the run's, shared by every entry.
MIXTURE_FIELDS = ("source", "paths", "tfds_name", "text_key", "train_split", "eval_split", "document_split",
                  "document_separator", "validation_fraction", "invalid_utf8", "hf_name", "hf_config",
                  "hf_data_files", "hf_streaming")
_MIXTURE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclasses.dataclass(frozen=True)
class MixtureEntry:
  name: str  # names the source in metrics (eval/<name>) and caches
  weight: float  # relative; the weights are normalized to sum to 1
  overrides: Mapping[str, Any]  # data fields of this source


def parse_mixture(text: str) -> list[MixtureEntry]:
  """'web:3 source=hf hf_name=json hf_data_files=web/*.jsonl; books:1 paths=books/*.txt' -> entries. Entries are
  separated by ';', values may be quoted as in a shell; fields not given are the data section's. ValueError with
  what is wrong (one line) otherwise."""
  lexer = shlex.shlex(text, posix=True, punctuation_chars=";")
  lexer.whitespace_split = True
  try:
    tokens = list(lexer)
  except ValueError as e:
    raise ValueError(f"cannot be read ({e}); give 'name:weight field=value ...; name:weight ...'") from None
  groups, current = [], []
  for token in tokens:
    if set(token) == {";"}:
      groups.append(current)
      current = []
    else:
      current.append(token)
  groups.append(current)
  entries, defaults = [], base_config().data
  for group in (g for g in groups if g):
    head, *fields = group
    name, sep, weight_text = head.partition(":")
    if not sep or not _MIXTURE_NAME.fullmatch(name):
      raise ValueError(f"entry {' '.join(group)!r} must start with name:weight, the name of letters, digits, '_', "
                       f"'.' or '-' (e.g. 'web:0.7')")
    try:
      weight = float(weight_text)
    except ValueError:
      weight = math.nan
    if not math.isfinite(weight) or weight <= 0:
      raise ValueError(f"entry {name!r} has weight {weight_text!r}; a weight is a positive number")
    overrides: dict[str, Any] = {}
    for item in fields:
      field, eq, value = item.partition("=")
      if not eq or field not in MIXTURE_FIELDS:
        raise ValueError(f"entry {name!r}: {item!r} is not field=value with a field of {', '.join(MIXTURE_FIELDS)}")
      want = type(defaults[field])
      if want is bool:
        if value.lower() not in ("true", "false", "1", "0"):
          raise ValueError(f"entry {name!r}: {field}={value!r} must be true or false")
        overrides[field] = value.lower() in ("true", "1")
      else:
        try:
          overrides[field] = want(value)
        except ValueError:
          raise ValueError(f"entry {name!r}: {field}={value!r} must be a {want.__name__}") from None
    entries.append(MixtureEntry(name, weight, overrides))
  if not entries:
    raise ValueError("names no source; give 'name:weight field=value ...; name:weight ...'")
  names = [e.name for e in entries]
  if len(set(names)) != len(names):
    raise ValueError(f"names a source twice ({', '.join(sorted({n for n in names if names.count(n) > 1}))}); give "
                     f"each entry its own name")
  return entries


def mixture_entry_data(data: ml_collections.ConfigDict, entry: MixtureEntry) -> ml_collections.ConfigDict:
  """The data section of one entry: the run's, with the entry's fields and no mixture."""
  section = ml_collections.ConfigDict(data.to_dict())
  section.mixture = ""
  for field, value in entry.overrides.items():
    section[field] = value
  return section
