"""Hugging Face tokenizers behind lmjax's `Tokenizer` interface, each giving the checkpoint's own ids.

Four kinds, all exposing HF ids as lmjax ids through a `VocabMap` (lmjax/hf/vocab.py: the specials move to ids
0..6, the rest keep their order):

  hf_tokenizer      a checkpoint's tokenizer.json (Llama, Mistral, Qwen2, Gemma, T5, ...), run by the `tokenizers`
                    library exactly as transformers' AutoTokenizer runs it;
  hf_sentencepiece  a SentencePiece model file without a tokenizer.json (Llama 2's tokenizer.model, T5's
                    spiece.model), run by `sentencepiece`;
  hf_bpe            GPT-2's byte-level BPE from vocab.json + merges.txt;
  hf_wordpiece      BERT's WordPiece from vocab.txt.

The last two are workdirs written before the first two existed; they too run on the `tokenizers` library now, with
the same ids their hand-written predecessors gave. They encode special-token strings inside text ('<|endoftext|>',
'[MASK]') as ordinary text: lmjax places those by id (BOS_ID, CLS_ID, ...). The checkpoint kinds parse added and
special tokens out of text as transformers does, since chat templates write them as text ('<|im_start|>').

SentencePiece models follow sentencepiece itself, which is how the checkpoint was trained. Where transformers
converts a .model file on the fly it can disagree on text that starts with whitespace (its Metaspace
pre-tokenizer adds no word-start marker before a leading space, sentencepiece always does); checkpoints that ship a
tokenizer.json are read from that file and always agree with transformers.

A saved tokenizer (workdir/tokenizer/) holds the checkpoint's files under their own names (tokenizer.json becomes
hf_tokenizer.json, since lmjax's own config is tokenizer.json), tokenizer_config.json with its chat template, and
the map; export writes the same files back.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from lmjax.data.tokenizers import NUM_SPECIAL, IdsLike, Tokenizer, utf8_char_counts
from lmjax.hf.files import HfError, read_json
from lmjax.hf.vocab import VocabMap, build_vocab_map
from lmjax.registry import TOKENIZERS

HF_TOKENIZER_FILE = "hf_tokenizer.json"  # a checkpoint's tokenizer.json, saved beside lmjax's own tokenizer.json
TOKENIZER_CONFIG = "tokenizer_config.json"
SENTENCEPIECE_FILES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
# What a special token of tokenizer_config.json is called, by the lmjax role it plays, in the order roles claim
# tokens (a token serving two roles, GPT-2's <|endoftext|> as eos and bos, goes to the first).
ROLE_KEYS = {"eos": "eos_token", "bos": "bos_token", "unk": "unk_token", "pad": "pad_token", "mask": "mask_token",
             "sep": "sep_token", "cls": "cls_token"}
_WORDPIECE_ROLE_ORDER = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")


# GPT-2's pre-tokenization: contractions, runs of letters, of digits, of other symbols (each with one optional
# leading space), and whitespace, where a whitespace run before a word leaves its last space to that word.
_GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _library():
  try:
    import tokenizers  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise HfError("Hugging Face tokenizers need the tokenizers package: pip install 'lmjax[hf]'") from None
  return tokenizers


def _byte_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte -> printable character table (what byte-level BPE pieces are spelled in)."""
  keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), ord("\xff") + 1)]
  table, extra = {}, 0
  for b in range(256):
    if b in keep:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return table


class _MappedTokenizer(Tokenizer):
  """What every kind here shares: HF ids <-> lmjax ids through the VocabMap, and per-token lengths from the bytes
  each HF piece stands for."""

  trainable = False
  vocab_map: VocabMap
  special_tokens: dict[str, str]

  def _set_map(self, vocab_map: VocabMap) -> None:
    self.vocab_map = vocab_map
    self.vocab_size = vocab_map.vocab_size
    self._lmjax_of_hf = vocab_map.lmjax_of_hf
    self._hf_of_lmjax = vocab_map.hf_of_lmjax

  def encode_hf(self, text: str) -> list[int]:
    raise NotImplementedError

  def encode(self, text: str) -> np.ndarray:
    return self._lmjax_of_hf[np.asarray(self.encode_hf(text), np.int64)].astype(np.int32)

  def _hf_ids(self, ids: IdsLike) -> list[int]:
    return [int(i) for i in self._hf_of_lmjax[self._strip_specials(ids)] if i >= 0]

  def piece_bytes(self, hf_id: int) -> bytes:
    """The UTF-8 bytes HF id `hf_id` stands for in text (b'' for specials)."""
    raise NotImplementedError

  def _all_piece_bytes(self) -> list[bytes]:
    return [b"" if i < NUM_SPECIAL or h < 0 else self.piece_bytes(int(h)) for i, h in enumerate(self._hf_of_lmjax)]

  def token_byte_lengths(self) -> np.ndarray:
    return np.array([len(b) for b in self._all_piece_bytes()], np.float32)

  def token_char_lengths(self) -> np.ndarray:
    return np.array([utf8_char_counts(np.frombuffer(b, np.uint8)).sum() for b in self._all_piece_bytes()],
                    np.float32)


def _metaspace_bytes(piece: str) -> bytes:
  """A SentencePiece-style piece as text: '▁' is a space, '<0xE2>' one byte of byte fallback."""
  match = _BYTE_PIECE.fullmatch(piece)
  return bytes([int(match.group(1), 16)]) if match else piece.replace("\u2581", " ").encode("utf-8")


@TOKENIZERS.register("hf_bpe")
class HfBpeTokenizer(_MappedTokenizer):
  """GPT-2 byte-level BPE: GPT-2's regex pre-tokenization, bytes as printable characters, merges by rank."""

  kind = "hf_bpe"

  @classmethod
  def from_saved(cls, directory: Path, config: dict[str, Any]) -> "HfBpeTokenizer":
    vocab, merges = _read_bpe(directory)
    return cls(vocab, merges, VocabMap.from_json(config["vocab_map"]), config["special_tokens"])

  def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], vocab_map: VocabMap,
               special_tokens: dict[str, str]):
    lib = _library()
    self.vocab, self.merges, self.special_tokens = vocab, merges, special_tokens
    self._set_map(vocab_map)
    self._pieces = {i: piece for piece, i in vocab.items()}
    self._byte_of = {c: b for b, c in _byte_to_unicode().items()}
    # tiktoken when installed (several times faster, the same ids: experiments/hf_checkpoints/), else tokenizers.
    # Neither is given the added tokens: special-token strings in text stay text, as lmjax's data expects.
    self._encode = self._tiktoken_encoder()
    if self._encode is None:
      tok = lib.Tokenizer(lib.models.BPE(vocab, merges))
      tok.pre_tokenizer = lib.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
      self._encode = lambda text: tok.encode(text, add_special_tokens=False).ids

  def _tiktoken_encoder(self):
    try:
      import tiktoken  # pylint: disable=import-outside-toplevel
    except ImportError:
      return None
    # tiktoken ranks byte strings and merges the lowest-ranked pair first; GPT-2's vocabulary ranks by id, and
    # every merge result's id follows its parts', so the ranks are the ids (checked: every piece is a merge).
    ranks = {}
    for piece, i in self.vocab.items():
      ranks[bytes(self._byte_of.get(c, 0) for c in piece)] = i
    merged = {a + b for a, b in self.merges}
    singles = {c for piece in self.vocab for c in piece if len(piece) == 1}
    if any(len(p) > 1 and p not in merged for p in self.vocab if p not in self.special_tokens.values()) or \
        len(ranks) != len(self.vocab) or len(singles) < 256:
      return None  # a vocabulary tiktoken cannot rank the same way: use tokenizers
    encoding = tiktoken.Encoding("lmjax-hf-bpe", pat_str=_GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
    return encoding.encode_ordinary

  def __getstate__(self) -> dict[str, Any]:
    return {"vocab": self.vocab, "merges": self.merges, "vocab_map": self.vocab_map,
            "special_tokens": self.special_tokens}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__init__(**state)  # pylint: disable=unnecessary-dunder-call

  def encode_hf(self, text: str) -> list[int]:
    """The HF ids of `text`, as GPT2Tokenizer gives them."""
    return self._encode(text)

  def piece_bytes(self, hf_id: int) -> bytes:
    piece = self._pieces.get(hf_id)
    if piece is None or piece in self.special_tokens.values():
      return b""
    return bytes(self._byte_of.get(c, 0) for c in piece)

  def decode(self, ids: IdsLike) -> str:
    return b"".join(self.piece_bytes(i) for i in self._hf_ids(ids)).decode("utf-8", errors="replace")

  def _state(self) -> tuple[dict[str, Any], dict[str, bytes]]:
    merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges)
    files = {"vocab.json": json.dumps(self.vocab, ensure_ascii=False).encode(), "merges.txt": merges.encode()}
    return {"vocab_map": self.vocab_map.to_json(), "special_tokens": self.special_tokens}, files


@TOKENIZERS.register("hf_wordpiece")
class HfWordPieceTokenizer(_MappedTokenizer):
  """BERT's WordPiece: BertTokenizer's basic tokenization (clean-up, CJK split, accent stripping, lowercasing,
  whitespace and punctuation split), then greedy longest-match pieces with '##' continuations. Lossy: decode
  gives the pieces joined by spaces, so byte and character lengths count each piece's own text."""

  kind = "hf_wordpiece"

  @classmethod
  def from_saved(cls, directory: Path, config: dict[str, Any]) -> "HfWordPieceTokenizer":
    options = {k: config[k] for k in ("do_lower_case", "strip_accents", "tokenize_chinese_chars", "max_chars_per_word")}
    return cls(read_vocab_lines(directory / "vocab.txt"), VocabMap.from_json(config["vocab_map"]),
               config["special_tokens"], **options)

  def __init__(self, vocab: list[str], vocab_map: VocabMap, special_tokens: dict[str, str], do_lower_case: bool = True,
               strip_accents: bool | None = None, tokenize_chinese_chars: bool = True, max_chars_per_word: int = 100):
    lib = _library()
    self.vocab, self.special_tokens = vocab, special_tokens
    self.do_lower_case, self.strip_accents = do_lower_case, strip_accents
    self.tokenize_chinese_chars, self.max_chars_per_word = tokenize_chinese_chars, max_chars_per_word
    self._set_map(vocab_map)
    ids = {piece: i for i, piece in enumerate(vocab)}
    self._tok = lib.Tokenizer(lib.models.WordPiece(ids, unk_token=special_tokens.get("unk_token", "[UNK]"),
                                                   max_input_chars_per_word=max_chars_per_word))
    self._tok.normalizer = lib.normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=tokenize_chinese_chars, strip_accents=strip_accents,
        lowercase=do_lower_case)
    self._tok.pre_tokenizer = lib.pre_tokenizers.BertPreTokenizer()

  def __getstate__(self) -> dict[str, Any]:
    return {k: getattr(self, k) for k in ("vocab", "vocab_map", "special_tokens", "do_lower_case", "strip_accents",
                                          "tokenize_chinese_chars", "max_chars_per_word")}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__init__(**state)  # pylint: disable=unnecessary-dunder-call

  def encode_hf(self, text: str) -> list[int]:
    """The HF ids of `text`, as BertTokenizer gives them (without [CLS]/[SEP])."""
    return self._tok.encode(text, add_special_tokens=False).ids

  def _piece_text(self, hf_id: int) -> str:
    if hf_id < 0 or hf_id >= len(self.vocab) or self.vocab[hf_id] in self.special_tokens.values():
      return ""
    piece = self.vocab[hf_id]
    return piece[2:] if piece.startswith("##") else piece

  def piece_bytes(self, hf_id: int) -> bytes:
    return self._piece_text(hf_id).encode("utf-8")

  def decode(self, ids: IdsLike) -> str:
    words: list[str] = []
    for hf_id in self._hf_ids(ids):
      text = self._piece_text(hf_id)
      if not text:
        continue
      if words and self.vocab[hf_id].startswith("##"):
        words[-1] += text
      else:
        words.append(text)
    return " ".join(words)

  def _state(self) -> tuple[dict[str, Any], dict[str, bytes]]:
    config = {"vocab_map": self.vocab_map.to_json(), "special_tokens": self.special_tokens,
              "do_lower_case": self.do_lower_case, "strip_accents": self.strip_accents,
              "tokenize_chinese_chars": self.tokenize_chinese_chars, "max_chars_per_word": self.max_chars_per_word}
    return config, {"vocab.txt": "".join(f"{piece}\n" for piece in self.vocab).encode()}


class _CheckpointTokenizer(_MappedTokenizer):
  """A tokenizer read from a checkpoint's files, kept verbatim (with its tokenizer_config.json and chat template)."""

  files: dict[str, bytes]

  def __getstate__(self) -> dict[str, Any]:
    return {"files": self.files, "vocab_map": self.vocab_map, "special_tokens": self.special_tokens}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__init__(**state)  # pylint: disable=unnecessary-dunder-call

  @classmethod
  def from_saved(cls, directory: Path, config: dict[str, Any]) -> "_CheckpointTokenizer":
    files = {name: (directory / name).read_bytes() for name in config["files"]}
    return cls(files, VocabMap.from_json(config["vocab_map"]), config["special_tokens"])

  def _state(self) -> tuple[dict[str, Any], dict[str, bytes]]:
    return {"vocab_map": self.vocab_map.to_json(), "special_tokens": self.special_tokens,
            "files": sorted(self.files)}, dict(self.files)

  def hf_files(self) -> dict[str, bytes]:
    """The files as a Hugging Face checkpoint names them (what export writes)."""
    return {("tokenizer.json" if name == HF_TOKENIZER_FILE else name): data for name, data in self.files.items()}


@TOKENIZERS.register("hf_tokenizer")
class HfFastTokenizer(_CheckpointTokenizer):
  """A checkpoint's tokenizer.json through the `tokenizers` library: AutoTokenizer's ids, specials parsed from text
  (add_special_tokens=False: lmjax adds <bos> by id)."""

  kind = "hf_tokenizer"

  def __init__(self, files: dict[str, bytes], vocab_map: VocabMap, special_tokens: dict[str, str]):
    lib = _library()
    self.files, self.special_tokens = files, special_tokens
    self._set_map(vocab_map)
    self._tok = lib.Tokenizer.from_str(files[HF_TOKENIZER_FILE].decode("utf-8"))
    spec = json.loads(files[HF_TOKENIZER_FILE])
    self._byte_level = "ByteLevel" in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])
    self._added = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    self._byte_of = {c: b for b, c in _byte_to_unicode().items()}

  @property
  def hf_vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  def token_id(self, token: str) -> int | None:
    return self._tok.token_to_id(token)

  def encode_hf(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def piece_bytes(self, hf_id: int) -> bytes:
    piece = self._tok.id_to_token(hf_id)
    if piece is None or hf_id in self._added:
      return b""
    if self._byte_level:
      return bytes(self._byte_of.get(c, 0) for c in piece)
    return _metaspace_bytes(piece)

  def decode(self, ids: IdsLike) -> str:
    return self._tok.decode(self._hf_ids(ids), skip_special_tokens=True)


@TOKENIZERS.register("hf_sentencepiece")
class HfSentencePieceTokenizer(_CheckpointTokenizer):
  """A SentencePiece model file (Llama 2, T5) without a tokenizer.json. Special tokens written in the text ('</s>')
  become their ids, as transformers parses them; the stretches between them go through SentencePiece."""

  kind = "hf_sentencepiece"

  def __init__(self, files: dict[str, bytes], vocab_map: VocabMap, special_tokens: dict[str, str]):
    import sentencepiece as spm  # pylint: disable=import-outside-toplevel
    self.files, self.special_tokens = files, special_tokens
    self._set_map(vocab_map)
    model = next(name for name in files if name in SENTENCEPIECE_FILES)
    self._sp = spm.SentencePieceProcessor(model_proto=files[model])
    # Text after a special token continues the text, as transformers reads it: no word-start marker of its own.
    from sentencepiece import sentencepiece_model_pb2  # pylint: disable=import-outside-toplevel
    proto = sentencepiece_model_pb2.ModelProto.FromString(files[model])
    proto.normalizer_spec.add_dummy_prefix = False
    self._sp_continued = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    specials = sorted({s for s in special_tokens.values() if self.token_id(s) is not None}, key=len, reverse=True)
    self._specials = {s: self._sp.piece_to_id(s) for s in specials}
    self._split = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None

  @property
  def hf_vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def token_id(self, token: str) -> int | None:
    i = self._sp.piece_to_id(token)
    return i if self._sp.id_to_piece(i) == token else None

  def encode_hf(self, text: str) -> list[int]:
    if self._split is None:
      return self._sp.encode(text)
    ids: list[int] = []
    for i, part in enumerate(self._split.split(text)):
      if part in self._specials:
        ids.append(self._specials[part])
      elif part:
        ids.extend((self._sp if i == 0 else self._sp_continued).encode(part))
    return ids

  def piece_bytes(self, hf_id: int) -> bytes:
    if self._sp.is_control(hf_id) or self._sp.is_unknown(hf_id) or hf_id in self._specials.values():
      return b""
    return _metaspace_bytes(self._sp.id_to_piece(hf_id))

  def decode(self, ids: IdsLike) -> str:
    return self._sp.decode(self._hf_ids(ids))


# --- reading a checkpoint's tokenizer -----------------------------------------------------------------------------

_WORDPIECE_DEFAULTS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                       "mask_token": "[MASK]"}


def special_tokens(hf_dir: Path, defaults: dict[str, str] | None = None) -> dict[str, str]:
  """{'eos_token': '<|endoftext|>', ...} from tokenizer_config.json / special_tokens_map.json, over defaults."""
  found = dict(defaults or {})
  for name in ("special_tokens_map.json", TOKENIZER_CONFIG):
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
  settings = read_json(hf_dir / TOKENIZER_CONFIG)
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


def read_bpe_tokenizer(hf_dir: Path, model_vocab_size: int, copy_rules: dict[str, str] | None = None
                       ) -> HfBpeTokenizer:
  """GPT-2's tokenizer from a checkpoint directory; `model_vocab_size` rows of the embedding (may exceed the
  tokenizer's vocabulary when the model padded it)."""
  vocab, merges = _read_bpe(hf_dir)
  specials = special_tokens(hf_dir, {"eos_token": "<|endoftext|>"} if "<|endoftext|>" in vocab else {})
  role_ids = {role: vocab.get(specials.get(key, "")) for role, key in ROLE_KEYS.items()}
  hf_size = max(model_vocab_size, max(vocab.values()) + 1)
  return HfBpeTokenizer(vocab, merges, build_vocab_map(hf_size, role_ids, copy_rules or {"bos": "eos"}), specials)


def read_wordpiece_tokenizer(hf_dir: Path, model_vocab_size: int, copy_rules: dict[str, str] | None = None
                             ) -> HfWordPieceTokenizer:
  vocab, options = _read_wordpiece(hf_dir)
  specials = special_tokens(hf_dir, _WORDPIECE_DEFAULTS)
  ids = {piece: i for i, piece in enumerate(vocab)}
  role_ids = {role: ids.get(specials.get(ROLE_KEYS[role], "")) for role in _WORDPIECE_ROLE_ORDER}
  hf_size = max(model_vocab_size, len(vocab))
  return HfWordPieceTokenizer(vocab, build_vocab_map(hf_size, role_ids, copy_rules or {}), specials, **options)


def _tokenizer_config_files(hf_dir: Path) -> dict[str, bytes]:
  """tokenizer_config.json and a separate chat template file, when the checkpoint has them."""
  return {name: (hf_dir / name).read_bytes() for name in (TOKENIZER_CONFIG, "special_tokens_map.json",
                                                         "chat_template.jinja", "chat_template.json")
          if (hf_dir / name).is_file()}


def read_checkpoint_tokenizer(hf_dir: Path, model_vocab_size: int, copy_rules: dict[str, str]) -> _CheckpointTokenizer:
  """The tokenizer of a Llama-family or T5 checkpoint: tokenizer.json when it has one, else its SentencePiece
  model. `copy_rules`: which role's row seeds a role the vocabulary lacks (lmjax/hf/vocab.py)."""
  files = _tokenizer_config_files(hf_dir)
  specials = special_tokens(hf_dir)
  if (hf_dir / "tokenizer.json").is_file():
    files[HF_TOKENIZER_FILE] = (hf_dir / "tokenizer.json").read_bytes()
    cls: type[_CheckpointTokenizer] = HfFastTokenizer
  else:
    model = next((name for name in SENTENCEPIECE_FILES if (hf_dir / name).is_file()), None)
    if model is None:
      raise HfError(f"{hf_dir} has no tokenizer: expected tokenizer.json or a SentencePiece model "
                    f"({', '.join(SENTENCEPIECE_FILES)})")
    files[model] = (hf_dir / model).read_bytes()
    cls = HfSentencePieceTokenizer
  # The map is built from the tokenizer itself, so read it once with an identity map first.
  probe = cls(files, VocabMap(1, {}), specials)
  role_ids = {role: probe.token_id(specials[key]) if key in specials else None for role, key in ROLE_KEYS.items()}
  hf_size = max(model_vocab_size, probe.hf_vocab_size)
  return cls(files, build_vocab_map(hf_size, role_ids, copy_rules), specials)
