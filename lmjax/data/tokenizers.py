"""Char, byte (UTF-8) and SentencePiece (BPE, unigram) tokenizers behind one interface.

Every tokenizer reserves ids 0..6 for the same special tokens, so models, losses and masking code never
need to know which tokenizer produced a batch. `build_tokenizer` trains once per directory and loads the
saved result afterwards, which makes the directory a cache.
"""

from __future__ import annotations

import abc
import hashlib
import io
import itertools
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import ml_collections
import numpy as np
import sentencepiece as spm

from lmjax import config as config_lib
from lmjax.data import sentencepiece_words
from lmjax.registry import TOKENIZERS

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>", "<mask>", "<sep>", "<cls>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID, MASK_ID, SEP_ID, CLS_ID = range(7)
NUM_SPECIAL = len(SPECIAL_TOKENS)

CONFIG_FILE = "tokenizer.json"
SP_MODEL_FILE = "spm.model"
# Pieces every SentencePiece model carries besides the specials: "\n" and the 256 byte-fallback pieces.
# Training sees text split into lines, so "\n" gets an explicit piece rather than surviving only as a
# byte-fallback <0x0A>.
_SP_RESERVED = NUM_SPECIAL + 1 + 256
# Lines longer than this are cut for training only: SentencePiece silently drops longer "sentences".
_SP_MAX_SENTENCE = 8192

IdsLike = np.ndarray | Iterable[int]
# Threads SentencePiece encodes a batch with: the cores this process may use (worker processes each set theirs).
ENCODE_THREADS = max(1, min(os.cpu_count() or 1, 16))


def utf8_char_counts(byte_values: np.ndarray) -> np.ndarray:
  """1 for bytes that start a UTF-8 character, 0 for continuation bytes (0b10xxxxxx).

  Counting a character at its lead byte makes per-token character counts sum exactly even when
  byte-level tokens split a multi-byte character.
  """
  return ((byte_values & 0xC0) != 0x80).astype(np.float32)


def _fingerprint(*parts: bytes) -> str:
  h = hashlib.sha256()
  for part in parts:
    h.update(len(part).to_bytes(8, "little"))
    h.update(part)
  return h.hexdigest()[:16]


def _write_atomic(path: Path, data: bytes) -> None:
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  tmp.write_bytes(data)
  os.replace(tmp, path)


class Tokenizer(abc.ABC):
  """Maps str <-> int32 ids; ids 0..NUM_SPECIAL-1 are SPECIAL_TOKENS in every implementation.

  A kind registers its class with `@TOKENIZERS.register(kind)`; `train` builds one from texts (kinds that come
  with an imported checkpoint are not `trainable` and only load from a workdir) and `from_saved` is the inverse of
  `save`.
  """

  kind: str
  vocab_size: int
  trainable: ClassVar[bool] = True
  vocab_map: Any = None  # an imported checkpoint's id layout (lmjax.hf.vocab.VocabMap); None for lmjax's own kinds

  @classmethod
  def validate(cls, cfg: ml_collections.ConfigDict) -> None:
    """Checks tokenizer.* for this kind."""
    del cfg

  @classmethod
  def train(cls, kind: str, texts: Callable[[], Iterable[str]], vocab_size: int, max_chars: int) -> "Tokenizer":
    raise NotImplementedError(f"tokenizer.kind={kind!r} is not trained here")

  @classmethod
  @abc.abstractmethod
  def from_saved(cls, directory: Path, config: dict[str, Any]) -> "Tokenizer":
    """The tokenizer `save` wrote into directory (config: its tokenizer.json)."""

  pad_id = property(lambda self: PAD_ID)
  bos_id = property(lambda self: BOS_ID)
  eos_id = property(lambda self: EOS_ID)
  unk_id = property(lambda self: UNK_ID)
  mask_id = property(lambda self: MASK_ID)
  sep_id = property(lambda self: SEP_ID)
  cls_id = property(lambda self: CLS_ID)

  @abc.abstractmethod
  def encode(self, text: str) -> np.ndarray:
    """int32 [n] ids of `text`, without bos/eos."""

  @abc.abstractmethod
  def decode(self, ids: IdsLike) -> str:
    """Text of `ids`; special ids are skipped."""

  def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids [N] int32, lengths [len(texts)] int64): every text's `encode` ids concatenated, and how many each has.

    The same ids as `encode`, text by text; kinds override it with a faster path over many texts at once (data
    preparation calls it on chunks of documents)."""
    pieces = [self.encode(t) for t in texts]
    lengths = np.fromiter((p.shape[0] for p in pieces), np.int64, len(pieces))
    return (np.concatenate(pieces).astype(np.int32, copy=False) if pieces else np.zeros(0, np.int32)), lengths

  @abc.abstractmethod
  def token_byte_lengths(self) -> np.ndarray:
    """float32 [vocab_size]: UTF-8 bytes each id decodes to, 0 for specials (for bits per byte)."""

  @abc.abstractmethod
  def token_char_lengths(self) -> np.ndarray:
    """float32 [vocab_size]: characters each id decodes to, 0 for specials (for bits per character)."""

  @abc.abstractmethod
  def _state(self) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(JSON config, extra files) that fully describe the tokenizer."""

  def save(self, directory: str | os.PathLike[str]) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config, files = self._state()
    for name, data in files.items():
      _write_atomic(directory / name, data)
    # The config goes last: its presence marks a complete tokenizer for the build cache.
    config = {"kind": self.kind, "vocab_size": self.vocab_size, **config}
    _write_atomic(directory / CONFIG_FILE, (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode())

  def fingerprint(self) -> str:
    config, files = self._state()
    config = {"kind": self.kind, **{k: v for k, v in config.items() if k != "requested_vocab_size"}}
    blobs = [files[name] for name in sorted(files)]
    return _fingerprint(json.dumps(config, sort_keys=True).encode(), *blobs)

  def __repr__(self) -> str:
    return f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size})"

  def _strip_specials(self, ids: IdsLike) -> np.ndarray:
    # Ids past vocab_size are dropped too: models may pad their output vocabulary and sample there.
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    return ids[(ids >= NUM_SPECIAL) & (ids < self.vocab_size)]


@TOKENIZERS.register("byte")
class ByteTokenizer(Tokenizer):
  """UTF-8 bytes shifted past the specials: lossless for any str, no training."""

  kind = "byte"
  vocab_size = NUM_SPECIAL + 256

  @classmethod
  def train(cls, kind, texts, vocab_size, max_chars) -> "ByteTokenizer":
    return cls()

  @classmethod
  def from_saved(cls, directory: Path, config: dict[str, Any]) -> "ByteTokenizer":
    return cls()

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32) + NUM_SPECIAL

  def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [t.encode("utf-8") for t in texts]
    lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.int32) + NUM_SPECIAL, lengths

  def decode(self, ids: IdsLike) -> str:
    # Sampled ids need not form valid UTF-8.
    return (self._strip_specials(ids) - NUM_SPECIAL).astype(np.uint8).tobytes().decode("utf-8", errors="replace")

  def token_byte_lengths(self) -> np.ndarray:
    lengths = np.ones(self.vocab_size, np.float32)
    lengths[:NUM_SPECIAL] = 0
    return lengths

  def token_char_lengths(self) -> np.ndarray:
    lengths = np.zeros(self.vocab_size, np.float32)
    lengths[NUM_SPECIAL:] = utf8_char_counts(np.arange(256, dtype=np.uint8))
    return lengths

  def _state(self) -> tuple[dict[str, Any], dict[str, bytes]]:
    return {}, {}


@TOKENIZERS.register("char")
class CharTokenizer(Tokenizer):
  """One id per character seen in training (sorted by code point); unseen characters map to <unk>."""

  kind = "char"

  @classmethod
  def train(cls, kind, texts, vocab_size, max_chars) -> "CharTokenizer":
    chars: set[str] = set()
    budget = max_chars
    for text in texts():
      chars.update(text[:budget])
      budget -= len(text)
      if budget <= 0:
        break
    return cls(chars)

  @classmethod
  def from_saved(cls, directory: Path, config: dict[str, Any]) -> "CharTokenizer":
    return cls(config["chars"])

  def __init__(self, chars: Iterable[str]):
    self.chars = "".join(sorted(set(chars)))
    if any(len(c) != 1 for c in self.chars):
      raise ValueError("CharTokenizer: chars must be single characters")
    self._codes = np.frombuffer(self.chars.encode("utf-32-le"), dtype=np.uint32)
    self.vocab_size = NUM_SPECIAL + len(self.chars)
    # A table over code points up to the largest known one maps a whole text at once; its last entry (and every
    # larger code point, clipped to it) is <unk>.
    self._table = np.full(int(self._codes.max()) + 2 if len(self._codes) else 1, UNK_ID, np.int32)
    self._table[self._codes] = np.arange(len(self._codes), dtype=np.int32) + NUM_SPECIAL

  def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, texts), np.int64, len(texts))
    return self.encode("".join(texts)), lengths  # one id per character, so the texts' ids are consecutive

  def encode(self, text: str) -> np.ndarray:
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return self._table[np.minimum(codes, self._table.shape[0] - 1)]

  def decode(self, ids: IdsLike) -> str:
    return self._codes[self._strip_specials(ids) - NUM_SPECIAL].tobytes().decode("utf-32-le")

  def token_byte_lengths(self) -> np.ndarray:
    return np.array([0] * NUM_SPECIAL + [len(c.encode("utf-8")) for c in self.chars], np.float32)

  def token_char_lengths(self) -> np.ndarray:
    lengths = np.ones(self.vocab_size, np.float32)
    lengths[:NUM_SPECIAL] = 0
    return lengths

  def _state(self) -> tuple[dict[str, Any], dict[str, bytes]]:
    return {"chars": self.chars}, {}


@TOKENIZERS.register("bpe")
@TOKENIZERS.register("unigram")
class SentencePieceTokenizer(Tokenizer):
  """A trained SentencePiece model (BPE or unigram) whose first ids are laid out as SPECIAL_TOKENS."""

  @classmethod
  def validate(cls, cfg: ml_collections.ConfigDict) -> None:
    if cfg.tokenizer.vocab_size < 16:
      config_lib.fail("tokenizer.vocab_size", cfg.tokenizer.vocab_size, f"tokenizer.kind={cfg.tokenizer.kind!r} "
                      f"trains a SentencePiece model: set a vocabulary size >= 16, e.g. 4096")

  @classmethod
  def train(cls, kind, texts, vocab_size, max_chars) -> "SentencePieceTokenizer":
    return _train_sentencepiece(kind, texts(), vocab_size, max_chars)

  @classmethod
  def from_saved(cls, directory: Path, config: dict[str, Any]) -> "SentencePieceTokenizer":
    return cls(config["kind"], (directory / config["model_file"]).read_bytes(), config["requested_vocab_size"])

  def __init__(self, kind: str, model_proto: bytes, requested_vocab_size: int):
    self.kind = kind
    self.requested_vocab_size = requested_vocab_size
    self._proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = self._sp.get_piece_size()
    self._word_cache = (sentencepiece_words.WordCache(lambda words: self._sp.encode(words, num_threads=ENCODE_THREADS))
                        if sentencepiece_words.splits_by_words(model_proto) else None)
    for i in range(NUM_SPECIAL):
      if not (self._sp.is_control(i) or self._sp.is_unknown(i)):
        raise ValueError(f"SentencePiece model: id {i} is {self._sp.id_to_piece(i)!r}, expected a special token")

  # SentencePieceProcessor does not pickle everywhere; data loader workers need to.
  def __getstate__(self) -> dict[str, Any]:
    return {"kind": self.kind, "model_proto": self._proto, "requested_vocab_size": self.requested_vocab_size}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__init__(**state)  # pylint: disable=unnecessary-dunder-call

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), dtype=np.int32)

  def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    if self._word_cache is not None and (encoded := self._word_cache.encode_batch(texts)) is not None:
      return encoded  # the same ids, each distinct word merged once
    # SentencePiece encodes a list on its own C++ threads; the ids are those of encoding each text alone.
    pieces = self._sp.encode(list(texts), num_threads=ENCODE_THREADS)
    lengths = np.fromiter(map(len, pieces), np.int64, len(pieces))
    return np.fromiter(itertools.chain.from_iterable(pieces), np.int32, int(lengths.sum())), lengths

  def decode(self, ids: IdsLike) -> str:
    return self._sp.decode(self._strip_specials(ids).tolist())

  def _piece_bytes(self) -> list[bytes]:
    out = []
    for i in range(self.vocab_size):
      piece = self._sp.id_to_piece(i)
      if i < NUM_SPECIAL or self._sp.is_control(i) or self._sp.is_unknown(i):
        out.append(b"")
      elif self._sp.is_byte(i):
        out.append(bytes([int(piece[1:-1], 16)]))  # "<0xAB>"
      else:
        out.append(piece.replace("\u2581", " ").encode("utf-8"))
    return out

  def token_byte_lengths(self) -> np.ndarray:
    return np.array([len(b) for b in self._piece_bytes()], np.float32)

  def token_char_lengths(self) -> np.ndarray:
    return np.array([utf8_char_counts(np.frombuffer(b, np.uint8)).sum() for b in self._piece_bytes()], np.float32)

  def _state(self) -> tuple[dict[str, Any], dict[str, bytes]]:
    return {"requested_vocab_size": self.requested_vocab_size, "model_file": SP_MODEL_FILE}, {SP_MODEL_FILE: self._proto}


def _bad_vocab_size(kind: str, vocab_size: int, why: str) -> ValueError:
  return ValueError(f"tokenizer.vocab_size={vocab_size} is too small for tokenizer.kind={kind!r}: {why}")


def _capped_lines(texts: Iterable[str], max_chars: int) -> Iterator[str]:
  """Training sentences for SentencePiece: non-empty lines cut to _SP_MAX_SENTENCE, max_chars in total."""
  budget = max_chars
  for text in texts:
    for line in text.split("\n"):
      for start in range(0, len(line), _SP_MAX_SENTENCE):
        chunk = line[start:start + _SP_MAX_SENTENCE][:budget]
        if not chunk:
          continue
        budget -= len(chunk)
        yield chunk
        if budget <= 0:
          return


def _train_sentencepiece(kind: str, texts: Iterable[str], vocab_size: int, max_chars: int) -> SentencePieceTokenizer:
  if vocab_size <= _SP_RESERVED:
    raise _bad_vocab_size(
        kind, vocab_size, f"must exceed {_SP_RESERVED} ({NUM_SPECIAL} specials + newline + 256 byte-fallback pieces)")
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=_capped_lines(texts, max_chars),
        model_writer=model,
        model_type=kind,
        vocab_size=vocab_size,
        # A small corpus may not support the requested size; the actual size is then smaller.
        hard_vocab_limit=False,
        pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
        pad_piece="<pad>", bos_piece="<bos>", eos_piece="<eos>", unk_piece="<unk>",
        # Control symbols take the free ids right after unk, in this order: 4, 5, 6.
        control_symbols=list(SPECIAL_TOKENS[MASK_ID:]),
        user_defined_symbols=["\n"],
        byte_fallback=True,
        # Round-trippable text: no normalization, no dummy prefix, whitespace kept as is, so pieces
        # concatenate back to the exact input and per-piece byte lengths sum exactly.
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        max_sentence_length=4 * _SP_MAX_SENTENCE,  # in bytes
        num_threads=max(1, min(os.cpu_count() or 1, 16)),
        minloglevel=2,
    )
  except RuntimeError as e:
    if (m := re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(e))) is not None:
      why = f"the training text has enough distinct characters to need at least {m[1]}"
      raise _bad_vocab_size(kind, vocab_size, why) from e
    if "vocab" in str(e).lower():
      raise _bad_vocab_size(kind, vocab_size, " ".join(str(e).split())) from e
    raise
  return SentencePieceTokenizer(kind, model.getvalue(), vocab_size)


def load_tokenizer(directory: str | os.PathLike[str]) -> Tokenizer:
  """Inverse of Tokenizer.save."""
  directory = Path(directory)
  config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
  kind = config["kind"]
  if kind not in TOKENIZERS:
    raise ValueError(f"{directory / CONFIG_FILE}: unknown tokenizer kind {kind!r}")
  return TOKENIZERS.get(kind).from_saved(directory, config)


def _cached(kind: str, directory: Path, vocab_size: int) -> Tokenizer | None:
  try:
    config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
  except (FileNotFoundError, json.JSONDecodeError):
    return None
  if config.get("kind") != kind:
    return None
  if "requested_vocab_size" in config and config["requested_vocab_size"] != vocab_size:
    return None
  return load_tokenizer(directory)


def build_tokenizer(kind: str, texts: Callable[[], Iterable[str]], directory: str | os.PathLike[str],
                    vocab_size: int = 0, max_training_chars: int = 20_000_000) -> Tokenizer:
  """Loads the tokenizer saved in `directory` if it matches, else builds it from texts() and saves it there.

  `vocab_size` (total, specials included) only applies to bpe/unigram; training reads at most
  `max_training_chars` characters of texts().
  """
  if kind not in TOKENIZERS:
    raise ValueError(f"tokenizer.kind={kind!r} is not one of {', '.join(TOKENIZER_KINDS)}")
  directory = Path(directory)
  if (tok := _cached(kind, directory, vocab_size)) is not None:
    return tok
  if not TOKENIZERS.get(kind).trainable:
    raise ValueError(f"tokenizer.kind={kind!r} comes with a Hugging Face checkpoint and {directory} has none: create "
                     f"the workdir with `python -m lmjax.hf.import_checkpoint`, or choose one of "
                     f"{', '.join(TOKENIZER_KINDS)}")
  tok = TOKENIZERS.get(kind).train(kind, texts, vocab_size, max_training_chars)
  tok.save(directory)
  return tok


# The kinds lmjax trains itself (imported kinds register from lmjax/hf/tokenizers.py).
TOKENIZER_KINDS = tuple(name for name, entry in TOKENIZERS.items() if entry.trainable)


def unknown_characters(tokenizer: Any, text: str) -> list[str]:
  """The distinct characters of text that the tokenizer turns into <unk>, in order of appearance."""
  if UNK_ID not in tokenizer.encode(text):
    return []
  return [c for c in dict.fromkeys(text) if UNK_ID in tokenizer.encode(c)]


def unknown_character_warnings(tokenizer: Any, prompts: list[str]) -> list[str]:
  """One warning line per prompt with characters the tokenizer lacks: the model sees <unk> there."""
  lines = []
  for n, prompt in enumerate(prompts):
    if unknown := unknown_characters(tokenizer, prompt):
      listed = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
      lines.append(f"warning: prompt {n + 1} has {len(unknown)} characters the {tokenizer.kind} tokenizer does not "
                   f"know, which the model sees as <unk>: {listed}")
  return lines
