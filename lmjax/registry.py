"""Names that pick classes: models, position encodings, tasks, tokenizers and config sections.

Every entry registers itself next to its class (`@MODELS.register("gpt")`), so a name is written once, where the
thing it names is defined. Everything else asks the registry: the config takes its valid choices from `names()`,
and an unknown name fails in one line that lists the registered ones and the closest match.

The registries live here, at the bottom of the import graph, so that the config machinery can read them without
importing the packages that fill them. Importing `lmjax` imports those packages (lmjax/__init__.py), so the
built-in entries are always present; a user's own model, task or position encoding is registered by importing its
module (for instance from the config file that uses it).
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownName(KeyError):
  """A name no entry registered; the message is one line with the choices. Also a KeyError, for mappings."""

  def __str__(self) -> str:
    return str(self.args[0])


class Registry(Generic[T]):
  """An ordered mapping name -> entry, filled by `register` decorators where the entries are defined."""

  def __init__(self, field: str, what: str):
    self.field = field  # the config field that names an entry, e.g. 'model.name'
    self.what = what  # what an entry is, for messages: 'model', 'task', ...
    self._entries: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    """Class decorator: `@REGISTRY.register("name")`. The class gets `name` as its `registered_name`."""
    def add(entry: T) -> T:
      if name in self._entries and self._entries[name] is not entry:
        raise ValueError(f"{self.what} {name!r} is registered twice: by {self._entries[name]!r} and {entry!r}")
      first = not any(e is entry for e in self._entries.values())  # an entry under several names keeps the first
      self._entries[name] = entry
      if first:
        try:
          setattr(entry, "registered_name", name)
        except (AttributeError, TypeError):  # an entry that cannot carry attributes (a plain object) keeps its own
          pass
      return entry
    return add

  def names(self) -> tuple[str, ...]:
    return tuple(self._entries)

  def items(self) -> Iterator[tuple[str, T]]:
    return iter(self._entries.items())

  def __contains__(self, name: object) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def unknown_message(self, name: Any) -> str:
    close = difflib.get_close_matches(str(name), self._entries, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"config.{self.field}={name!r} is invalid: choose one of {', '.join(self._entries)}{hint}"

  def get(self, name: str) -> T:
    if name not in self._entries:
      raise UnknownName(self.unknown_message(name))
    return self._entries[name]


# Architectures (model.name): the config class of each family, which builds its Flax module (lmjax/models/).
MODELS: Registry[Any] = Registry("model.name", "model")
# Position encodings (model.position): one class each (lmjax/models/positions/).
POSITIONS: Registry[Any] = Registry("model.position", "position encoding")
# Objectives (task): one class each (lmjax/tasks/).
TASKS: Registry[Any] = Registry("task", "task")
# Tokenizer kinds (tokenizer.kind): lmjax's own (lmjax/data/tokenizers.py) and imported ones (lmjax/hf/).
TOKENIZERS: Registry[Any] = Registry("tokenizer.kind", "tokenizer kind")
# Attention implementations (model.attention_impl): one file each (lmjax/models/kernels/).
ATTENTION: Registry[Any] = Registry("model.attention_impl", "attention implementation")
# Config sections owned by one module each (mlm, finetune, seq2seq, distill, ...): lmjax.config.Section entries.
SECTIONS: Registry[Any] = Registry("<section>", "config section")
# Kinds of data source (data.source): local files, TFDS, Hugging Face datasets (lmjax/data/sources.py and beside it).
SOURCES: Registry[Any] = Registry("data.source", "data source")
