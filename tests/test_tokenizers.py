"""Tokenizers: exact round trips, the shared special-id layout, length tables, the build cache and save/load."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest

from lmjax.data import tokenizers as tk

TRICKY = "naïve café — 日本語 🙂\nsecond line\n\n  two  spaces,\ttab   \nend\n"
SP_VOCAB = 320


def _corpus() -> list[str]:
  """Small deterministic English-like documents that also contain TRICKY's characters."""
  rng = random.Random(0)
  words = "the a of and to in is was he she it that for on with as his her they at by from said king".split()
  docs = []
  for i in range(200):
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 15))).capitalize() + "." for _ in range(4)]
    docs.append("\n".join(lines) + f" Number {i}.")
  docs.append(TRICKY)
  return docs


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tk.Tokenizer]:
  root = tmp_path_factory.mktemp("tok")
  return {kind: tk.build_tokenizer(kind, _corpus, root / kind, vocab_size=SP_VOCAB) for kind in tk.TOKENIZER_KINDS}


@pytest.mark.parametrize("kind", tk.TOKENIZER_KINDS)
def test_round_trip(built: dict[str, tk.Tokenizer], kind: str) -> None:
  tok = built[kind]
  for text in [TRICKY, _corpus()[3], "", " leading space", "\n\n\nnewlines only\n"]:
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert tok.decode(ids) == text
    assert tok.decode(ids.tolist()) == text
    assert not np.isin(ids, [tk.BOS_ID, tk.EOS_ID, tk.PAD_ID]).any()


@pytest.mark.parametrize("kind", ["byte", "bpe", "unigram"])
def test_lossless_on_unseen_text(built: dict[str, tk.Tokenizer], kind: str) -> None:
  text = "Ωμέγα ∑ Ünïcödé\r\n<mask> <pad> \x00 𝔘 ok"
  assert built[kind].decode(built[kind].encode(text)) == text


def test_char_unseen_maps_to_unk(built: dict[str, tk.Tokenizer]) -> None:
  tok = built["char"]
  ids = tok.encode("the Ω king")
  assert ids.tolist().count(tk.UNK_ID) == 1
  assert tok.decode(ids) == "the  king"
  assert tok.vocab_size == tk.NUM_SPECIAL + len(set("".join(_corpus())))


def test_byte_ids_are_shifted_utf8() -> None:
  tok = tk.ByteTokenizer()
  assert tok.vocab_size == tk.NUM_SPECIAL + 256
  assert tok.encode("é").tolist() == [0xC3 + tk.NUM_SPECIAL, 0xA9 + tk.NUM_SPECIAL]


@pytest.mark.parametrize("kind", tk.TOKENIZER_KINDS)
def test_special_ids(built: dict[str, tk.Tokenizer], kind: str) -> None:
  tok = built[kind]
  assert tk.SPECIAL_TOKENS == ("<pad>", "<bos>", "<eos>", "<unk>", "<mask>", "<sep>", "<cls>")
  ids = (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id, tok.mask_id, tok.sep_id, tok.cls_id)
  assert ids == tuple(range(7)) == (tk.PAD_ID, tk.BOS_ID, tk.EOS_ID, tk.UNK_ID, tk.MASK_ID, tk.SEP_ID, tk.CLS_ID)
  # Specials are dropped by decode, and no ordinary text encodes to them.
  text = "said the king"
  assert tok.decode([tk.BOS_ID, *tok.encode(text), tk.MASK_ID, tk.EOS_ID, tk.PAD_ID]) == text
  assert (tok.encode(TRICKY) >= tk.NUM_SPECIAL).all()
  assert (tok.token_byte_lengths()[: tk.NUM_SPECIAL] == 0).all()
  assert (tok.token_char_lengths()[: tk.NUM_SPECIAL] == 0).all()


def test_sentencepiece_specials_are_reserved(built: dict[str, tk.Tokenizer]) -> None:
  for kind in ("bpe", "unigram"):
    tok = built[kind]
    assert tk._SP_RESERVED < tok.vocab_size <= SP_VOCAB
    # Literal special-token strings in text are ordinary text, not control ids.
    assert tk.MASK_ID not in tok.encode("<mask>").tolist()
    assert len(tok.encode("the king said")) < len("the king said")  # it learned merges


@pytest.mark.parametrize("kind", tk.TOKENIZER_KINDS)
def test_length_tables_sum_to_text_length(built: dict[str, tk.Tokenizer], kind: str) -> None:
  tok = built[kind]
  text = TRICKY + "".join(_corpus()[:20])
  ids = tok.encode(text)
  byte_len, char_len = tok.token_byte_lengths(), tok.token_char_lengths()
  assert byte_len.shape == char_len.shape == (tok.vocab_size,)
  assert byte_len.dtype == char_len.dtype == np.float32
  assert byte_len[ids].sum() == len(text.encode("utf-8"))
  assert char_len[ids].sum() == len(text)


def test_cache_loads_without_retraining(tmp_path: Path) -> None:
  calls = 0

  def texts() -> list[str]:
    nonlocal calls
    calls += 1
    return _corpus()

  first = tk.build_tokenizer("unigram", texts, tmp_path, vocab_size=SP_VOCAB)
  mtime = (tmp_path / tk.CONFIG_FILE).stat().st_mtime_ns
  second = tk.build_tokenizer("unigram", texts, tmp_path, vocab_size=SP_VOCAB)
  assert calls == 1
  assert (tmp_path / tk.CONFIG_FILE).stat().st_mtime_ns == mtime
  assert second.fingerprint() == first.fingerprint()
  np.testing.assert_array_equal(second.encode(TRICKY), first.encode(TRICKY))
  # A different kind or size in the same directory is not a cache hit.
  third = tk.build_tokenizer("unigram", texts, tmp_path, vocab_size=SP_VOCAB + 20)
  assert calls == 2 and third.fingerprint() != first.fingerprint()
  assert tk.build_tokenizer("char", texts, tmp_path).kind == "char" and calls == 3


@pytest.mark.parametrize("kind", tk.TOKENIZER_KINDS)
def test_save_load_and_pickle(built: dict[str, tk.Tokenizer], kind: str, tmp_path: Path) -> None:
  tok = built[kind]
  tok.save(tmp_path)
  for other in (tk.load_tokenizer(tmp_path), pickle.loads(pickle.dumps(tok))):
    assert other.kind == kind and other.vocab_size == tok.vocab_size
    assert other.fingerprint() == tok.fingerprint()
    np.testing.assert_array_equal(other.encode(TRICKY), tok.encode(TRICKY))
    np.testing.assert_array_equal(other.token_byte_lengths(), tok.token_byte_lengths())


def test_fingerprints_differ_across_tokenizers(built: dict[str, tk.Tokenizer]) -> None:
  prints = {tok.fingerprint() for tok in built.values()}
  assert len(prints) == len(built)
  assert all(isinstance(p, str) and 8 <= len(p) <= 32 for p in prints)


def test_char_large_text() -> None:
  text = "".join(_corpus()) * 50  # ~1 MB
  tok = tk.CharTokenizer(set(text))
  ids = tok.encode(text)
  assert len(ids) == len(text) and tok.decode(ids) == text


def test_unknown_kind_error(tmp_path: Path) -> None:
  with pytest.raises(ValueError, match=r"tokenizer\.kind") as err:
    tk.build_tokenizer("wordpiece", _corpus, tmp_path)
  message = str(err.value)
  assert "wordpiece" in message and all(kind in message for kind in tk.TOKENIZER_KINDS)
  assert "\n" not in message
  assert not (tmp_path / tk.CONFIG_FILE).exists()


@pytest.mark.parametrize("vocab_size", [0, tk.NUM_SPECIAL, 100])
def test_sentencepiece_vocab_too_small(tmp_path: Path, vocab_size: int) -> None:
  with pytest.raises(ValueError, match=r"tokenizer\.vocab_size") as err:
    tk.build_tokenizer("bpe", _corpus, tmp_path, vocab_size=vocab_size)
  assert "\n" not in str(err.value)


def test_sentencepiece_vocab_below_required_chars(tmp_path: Path) -> None:
  # Just above the reserved pieces but below the distinct characters of the corpus: SentencePiece's own
  # error must come back as the same one-line ValueError.
  many_chars = ["".join(chr(0x4E00 + i) for i in range(j, j + 50)) * 3 for j in range(0, 500, 50)]
  with pytest.raises(ValueError, match=r"tokenizer\.vocab_size") as err:
    tk.build_tokenizer("unigram", lambda: many_chars, tmp_path, vocab_size=tk._SP_RESERVED + 5)
  assert "\n" not in str(err.value) and "at least" in str(err.value)
