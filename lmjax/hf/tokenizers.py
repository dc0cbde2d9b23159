"""Hugging Face tokenizers behind lmjax's `Tokenizer` interface: GPT-2 byte-level BPE and BERT WordPiece.

Both read the checkpoint's own files (vocab.json + merges.txt, or vocab.txt; a tokenizer.json of the same model
type also works), reproduce the HF token ids exactly, and expose them as lmjax ids through a `VocabMap`
(lmjax/hf/vocab.py): the specials move to ids 0..6, the rest keep their order. The saved form (workdir/tokenizer/)
is the HF files themselves plus the map and settings in tokenizer.json, so export writes the same files back.

Special-token strings inside text ('<|endoftext|>', '[MASK]') are encoded as ordinary text: lmjax places specials
by id (BOS_ID, CLS_ID, ...), never by parsing them out of data. Text otherwise gives the same ids as the HF
tokenizer, mapped through the VocabMap.
"""

from __future__ import annotations

import functools
import json
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np

from lmjax.data.tokenizers import NUM_SPECIAL, IdsLike, Tokenizer, utf8_char_counts
from lmjax.hf.files import HfError, read_json
from lmjax.hf.vocab import VocabMap, build_vocab_map
from lmjax.registry import TOKENIZERS

# GPT-2's pre-tokenization: contractions, runs of letters, of digits, of other symbols (each with one optional
# leading space), and whitespace, where a whitespace run before a word leaves its last space to that word.
_GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@functools.cache
def _byte_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte -> printable character table: printable Latin-1 bytes map to themselves, the other
  bytes to code points 256 and up, so BPE works on strings without whitespace or control characters."""
  keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), ord("\xff") + 1)]
  table, extra = {}, 0
  for b in range(256):
    if b in keep:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return table


@TOKENIZERS.register("hf_bpe")
class HfBpeTokenizer(Tokenizer):
  """GPT-2 byte-level BPE: regex pre-tokenization, bytes as printable characters, merges applied by rank."""

  kind = "hf_bpe"
  trainable = False

  @classmethod
  def from_saved(cls, directory: Path, config: dict[str, Any]) -> "HfBpeTokenizer":
    return load_hf_tokenizer(directory, config)

  def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], vocab_map: VocabMap,
               special_tokens: dict[str, str]):
    try:
      import regex  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise HfError("GPT-2 tokenizers need the regex package: pip install 'lmjax[hf]'") from None
    self.vocab, self.merges, self.vocab_map, self.special_tokens = vocab, merges, vocab_map, special_tokens
    self.vocab_size = vocab_map.vocab_size
    self._pattern = regex.compile(_GPT2_PATTERN)
    self._ranks = {pair: i for i, pair in enumerate(merges)}
    self._lmjax_of_hf = vocab_map.lmjax_of_hf
    self._hf_of_lmjax = vocab_map.hf_of_lmjax
    self._pieces = {i: piece for piece, i in vocab.items()}
    self._byte_of = {c: b for b, c in _byte_to_unicode().items()}
    self._cache: dict[str, list[int]] = {}

  def __getstate__(self) -> dict[str, Any]:
    return {"vocab": self.vocab, "merges": self.merges, "vocab_map": self.vocab_map,
            "special_tokens": self.special_tokens}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__init__(**state)  # pylint: disable=unnecessary-dunder-call

  def _bpe(self, word: str) -> list[int]:
    """HF ids of one pre-token (already mapped to printable characters): merge the lowest-ranked pair until none."""
    if (hit := self._cache.get(word)) is not None:
      return hit
    parts = list(word)
    while len(parts) > 1:
      ranked = [(self._ranks.get(pair, len(self._ranks)), i) for i, pair in enumerate(zip(parts, parts[1:]))]
      rank, _ = min(ranked)
      if rank == len(self._ranks):
        break
      first, second = self.merges[rank]
      merged, i = [], 0
      while i < len(parts):  # merge every occurrence of the pair, left to right
        if i < len(parts) - 1 and parts[i] == first and parts[i + 1] == second:
          merged.append(first + second)
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    ids = [self.vocab[p] for p in parts if p in self.vocab]
    if len(self._cache) < 100_000:
      self._cache[word] = ids
    return ids

  def encode_hf(self, text: str) -> list[int]:
    """The HF ids of `text`, as GPT2Tokenizer gives them."""
    to_char = _byte_to_unicode()
    ids: list[int] = []
    for chunk in self._pattern.findall(text):
      ids.extend(self._bpe("".join(to_char[b] for b in chunk.encode("utf-8"))))
    return ids

  def encode(self, text: str) -> np.ndarray:
    return self._lmjax_of_hf[np.asarray(self.encode_hf(text), np.int64)].astype(np.int32)

  def _piece_bytes(self, hf_id: int) -> bytes:
    piece = self._pieces.get(hf_id)
    if piece is None or piece in self.special_tokens.values():
      return b""
    return bytes(self._byte_of.get(c, 0) for c in piece)

  def decode(self, ids: IdsLike) -> str:
    hf_ids = self._hf_of_lmjax[self._strip_specials(ids)]
    return b"".join(self._piece_bytes(int(i)) for i in hf_ids if i >= 0).decode("utf-8", errors="replace")

  def _all_piece_bytes(self) -> list[bytes]:
    return [b"" if i < NUM_SPECIAL or h < 0 else self._piece_bytes(int(h)) for i, h in enumerate(self._hf_of_lmjax)]

  def token_byte_lengths(self) -> np.ndarray:
    return np.array([len(b) for b in self._all_piece_bytes()], np.float32)

  def token_char_lengths(self) -> np.ndarray:
    return np.array([utf8_char_counts(np.frombuffer(b, np.uint8)).sum() for b in self._all_piece_bytes()],
                    np.float32)

  def _state(self) -> tuple[dict[str, Any], dict[str, bytes]]:
    merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges)
    files = {"vocab.json": json.dumps(self.vocab, ensure_ascii=False).encode(), "merges.txt": merges.encode()}
    return {"vocab_map": self.vocab_map.to_json(), "special_tokens": self.special_tokens}, files


def _is_whitespace(c: str) -> bool:
  return c in " \t\n\r" or unicodedata.category(c) == "Zs"


def _is_control(c: str) -> bool:
  return c not in "\t\n\r" and unicodedata.category(c).startswith("C")


def _is_punctuation(c: str) -> bool:
  cp = ord(c)
  ascii_symbol = 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126  # BERT counts $ + ^ ` too
  return ascii_symbol or unicodedata.category(c).startswith("P")


def _is_cjk(cp: int) -> bool:
  return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
          or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


@TOKENIZERS.register("hf_wordpiece")
class HfWordPieceTokenizer(Tokenizer):
  """BERT's WordPiece: BertTokenizer's basic tokenization (clean-up, CJK split, accent stripping, lowercasing,
  whitespace and punctuation split), then greedy longest-match pieces with '##' continuations. Lossy: decode
  gives the pieces joined by spaces, so byte and character lengths count each piece's own text."""

  kind = "hf_wordpiece"
  trainable = False

  @classmethod
  def from_saved(cls, directory: Path, config: dict[str, Any]) -> "HfWordPieceTokenizer":
    return load_hf_tokenizer(directory, config)

  def __init__(self, vocab: list[str], vocab_map: VocabMap, special_tokens: dict[str, str], do_lower_case: bool = True,
               strip_accents: bool | None = None, tokenize_chinese_chars: bool = True, max_chars_per_word: int = 100):
    self.vocab, self.vocab_map, self.special_tokens = vocab, vocab_map, special_tokens
    self.do_lower_case, self.strip_accents = do_lower_case, strip_accents
    self.tokenize_chinese_chars, self.max_chars_per_word = tokenize_chinese_chars, max_chars_per_word
    self.vocab_size = vocab_map.vocab_size
    self._ids = {piece: i for i, piece in enumerate(vocab)}
    self._unk = self._ids.get(special_tokens.get("unk_token", "[UNK]"))
    self._lmjax_of_hf = vocab_map.lmjax_of_hf
    self._hf_of_lmjax = vocab_map.hf_of_lmjax

  def __getstate__(self) -> dict[str, Any]:
    return {k: getattr(self, k) for k in ("vocab", "vocab_map", "special_tokens", "do_lower_case", "strip_accents",
                                          "tokenize_chinese_chars", "max_chars_per_word")}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__init__(**state)  # pylint: disable=unnecessary-dunder-call

  def _normalize(self, text: str) -> str:
    out = []
    for c in text:
      cp = ord(c)
      if cp == 0 or cp == 0xFFFD or _is_control(c):
        continue
      if _is_whitespace(c):
        out.append(" ")
      elif self.tokenize_chinese_chars and _is_cjk(cp):
        out.append(f" {c} ")
      else:
        out.append(c)
    text = "".join(out)
    if self.strip_accents or (self.strip_accents is None and self.do_lower_case):
      text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    # Character by character, as the Rust tokenizers library lowercases (no final-sigma rule).
    return "".join(c.lower() for c in text) if self.do_lower_case else text

  def _words(self, text: str) -> list[str]:
    words = []
    for token in self._normalize(text).split():
      start = 0
      for i, c in enumerate(token):
        if _is_punctuation(c):
          words += [token[start:i], c] if i > start else [c]
          start = i + 1
      if start < len(token):
        words.append(token[start:])
    return words

  def _pieces(self, word: str) -> list[int]:
    if len(word) > self.max_chars_per_word:
      return [self._unk]
    ids, start = [], 0
    while start < len(word):
      end = len(word)
      while end > start:
        piece = word[start:end] if start == 0 else "##" + word[start:end]
        if piece in self._ids:
          ids.append(self._ids[piece])
          break
        end -= 1
      else:
        return [self._unk]  # one unmatched stretch makes the whole word unknown, as in BERT
      start = end
    return ids

  def encode_hf(self, text: str) -> list[int]:
    """The HF ids of `text`, as BertTokenizer gives them (without [CLS]/[SEP])."""
    return [i for word in self._words(text) for i in self._pieces(word) if i is not None]

  def encode(self, text: str) -> np.ndarray:
    return self._lmjax_of_hf[np.asarray(self.encode_hf(text), np.int64)].astype(np.int32)

  def _piece_text(self, hf_id: int) -> str:
    if hf_id < 0 or hf_id >= len(self.vocab) or self.vocab[hf_id] in self.special_tokens.values():
      return ""
    piece = self.vocab[hf_id]
    return piece[2:] if piece.startswith("##") else piece

  def decode(self, ids: IdsLike) -> str:
    words: list[str] = []
    for hf_id in self._hf_of_lmjax[self._strip_specials(ids)]:
      text = self._piece_text(int(hf_id))
      if not text:
        continue
      if words and 0 <= hf_id < len(self.vocab) and self.vocab[hf_id].startswith("##"):
        words[-1] += text
      else:
        words.append(text)
    return " ".join(words)

  def _texts(self) -> list[str]:
    return ["" if i < NUM_SPECIAL else self._piece_text(int(h)) for i, h in enumerate(self._hf_of_lmjax)]

  def token_byte_lengths(self) -> np.ndarray:
    return np.array([len(t.encode("utf-8")) for t in self._texts()], np.float32)

  def token_char_lengths(self) -> np.ndarray:
    return np.array([len(t) for t in self._texts()], np.float32)

  def _state(self) -> tuple[dict[str, Any], dict[str, bytes]]:
    config = {"vocab_map": self.vocab_map.to_json(), "special_tokens": self.special_tokens,
              "do_lower_case": self.do_lower_case, "strip_accents": self.strip_accents,
              "tokenize_chinese_chars": self.tokenize_chinese_chars, "max_chars_per_word": self.max_chars_per_word}
    return config, {"vocab.txt": "".join(f"{piece}\n" for piece in self.vocab).encode()}


# Which HF special token plays each lmjax role, and which role's token seeds a role the vocabulary lacks.
_BPE_ROLES = {"eos": "eos_token", "bos": "bos_token", "unk": "unk_token", "pad": "pad_token", "mask": "mask_token",
              "sep": "sep_token", "cls": "cls_token"}
_WORDPIECE_ROLES = {"pad": "pad_token", "unk": "unk_token", "cls": "cls_token", "sep": "sep_token",
                    "mask": "mask_token", "bos": "bos_token", "eos": "eos_token"}
_WORDPIECE_DEFAULTS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                       "mask_token": "[MASK]"}


def _special_tokens(hf_dir: Path, defaults: dict[str, str]) -> dict[str, str]:
  """{'eos_token': '<|endoftext|>', ...} from tokenizer_config.json / special_tokens_map.json, over defaults."""
  found = dict(defaults)
  for name in ("special_tokens_map.json", "tokenizer_config.json"):
    for key, value in read_json(hf_dir / name).items():
      if key.endswith("_token") and value:
        found[key] = value["content"] if isinstance(value, dict) else value
  return {k: v for k, v in found.items() if isinstance(v, str)}


def _read_bpe(hf_dir: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
  if (hf_dir / "vocab.json").is_file() and (hf_dir / "merges.txt").is_file():
    vocab = read_json(hf_dir / "vocab.json")
    lines = (hf_dir / "merges.txt").read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    return vocab, [m for m in merges if len(m) == 2]
  model = read_json(hf_dir / "tokenizer.json").get("model", {})
  if model.get("type") != "BPE":
    raise HfError(f"{hf_dir} has no GPT-2 tokenizer files: expected vocab.json and merges.txt (or a BPE "
                  f"tokenizer.json)")
  merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
  return model["vocab"], merges


def read_vocab_lines(path: Path) -> list[str]:
  """One piece per line; a final newline ends the last line rather than adding an empty piece."""
  lines = path.read_text(encoding="utf-8").replace("\r\n", "\n").split("\n")
  return lines[:-1] if lines and lines[-1] == "" else lines


def _read_wordpiece(hf_dir: Path) -> tuple[list[str], dict[str, Any]]:
  settings = read_json(hf_dir / "tokenizer_config.json")
  options = {"do_lower_case": settings.get("do_lower_case", True), "strip_accents": settings.get("strip_accents"),
             "tokenize_chinese_chars": settings.get("tokenize_chinese_chars", True)}
  if (hf_dir / "vocab.txt").is_file():
    return read_vocab_lines(hf_dir / "vocab.txt"), options
  data = read_json(hf_dir / "tokenizer.json")
  if data.get("model", {}).get("type") != "WordPiece":
    raise HfError(f"{hf_dir} has no BERT tokenizer files: expected vocab.txt (or a WordPiece tokenizer.json)")
  normalizer = data.get("normalizer") or {}
  if normalizer.get("type") == "BertNormalizer":
    options = {"do_lower_case": normalizer.get("lowercase", True), "strip_accents": normalizer.get("strip_accents"),
               "tokenize_chinese_chars": normalizer.get("handle_chinese_chars", True)}
  by_id = sorted(data["model"]["vocab"].items(), key=lambda item: item[1])
  return [piece for piece, _ in by_id], options


def read_bpe_tokenizer(hf_dir: Path, model_vocab_size: int) -> HfBpeTokenizer:
  """GPT-2's tokenizer from a checkpoint directory; `model_vocab_size` rows of the embedding (may exceed the
  tokenizer's vocabulary when the model padded it)."""
  vocab, merges = _read_bpe(hf_dir)
  specials = _special_tokens(hf_dir, {"eos_token": "<|endoftext|>"} if "<|endoftext|>" in vocab else {})
  role_ids = {role: vocab.get(specials.get(key, "")) for role, key in _BPE_ROLES.items()}
  hf_size = max(model_vocab_size, max(vocab.values()) + 1)
  return HfBpeTokenizer(vocab, merges, build_vocab_map(hf_size, role_ids, {"bos": "eos"}), specials)


def read_wordpiece_tokenizer(hf_dir: Path, model_vocab_size: int) -> HfWordPieceTokenizer:
  vocab, options = _read_wordpiece(hf_dir)
  specials = _special_tokens(hf_dir, _WORDPIECE_DEFAULTS)
  ids = {piece: i for i, piece in enumerate(vocab)}
  role_ids = {role: ids.get(specials.get(key, "")) for role, key in _WORDPIECE_ROLES.items()}
  hf_size = max(model_vocab_size, len(vocab))
  return HfWordPieceTokenizer(vocab, build_vocab_map(hf_size, role_ids, {}), specials, **options)


def load_hf_tokenizer(directory: Path, config: dict[str, Any]) -> Tokenizer:
  """The inverse of Tokenizer.save for the hf_* kinds (what lmjax.data.tokenizers.load_tokenizer calls for them)."""
  vocab_map = VocabMap.from_json(config["vocab_map"])
  if config["kind"] == "hf_bpe":
    vocab, merges = _read_bpe(directory)
    return HfBpeTokenizer(vocab, merges, vocab_map, config["special_tokens"])
  vocab = read_vocab_lines(directory / "vocab.txt")
  options = {k: config[k] for k in ("do_lower_case", "strip_accents", "tokenize_chinese_chars", "max_chars_per_word")}
  return HfWordPieceTokenizer(vocab, vocab_map, config["special_tokens"], **options)
