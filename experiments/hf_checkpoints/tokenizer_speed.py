"""Encoding speed (MB/s of UTF-8 text, one thread) of every tokenizer backend lmjax reads checkpoints with, against
tiktoken where it applies, on the bundled KJV corpus. Vocabularies are trained here (no network), so absolute
figures depend on their size; ids of the GPT-2 kinds are checked equal to tiktoken's on the same vocabulary.

  python experiments/hf_checkpoints/tokenizer_speed.py [--mb=4]
"""

import argparse
import json
import lzma
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # the tokenizers library's own threads: one, like the others

import numpy as np  # noqa: E402


def corpus(mb: float) -> str:
  text = lzma.open(Path(__file__).parents[2] / "lmjax/data/corpus/kjv.txt.xz", "rt", encoding="utf-8").read()
  return text[: int(mb * 1e6)]


def rate(encode, lines: list[str]) -> float:
  size = sum(len(line.encode("utf-8")) for line in lines) / 1e6
  start = time.perf_counter()
  for line in lines:
    encode(line)
  return size / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--mb", type=float, default=4.0)
  args = parser.parse_args()
  import sentencepiece as spm
  import tokenizers
  from lmjax.hf.tokenizers import HfBpeTokenizer, HfFastTokenizer, HfSentencePieceTokenizer, HfWordPieceTokenizer
  from lmjax.hf.vocab import VocabMap
  text = corpus(args.mb)
  lines = [p for p in text.split("\n\n") if p.strip()]
  train = lines[:3000]
  tmp = Path(tempfile.mkdtemp())
  rows = []

  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(train, vocab_size=8000, special_tokens=["<|endoftext|>"])
  bpe.save_model(str(tmp))
  vocab = json.loads((tmp / "vocab.json").read_text())
  merges = [tuple(m.split(" ")) for m in (tmp / "merges.txt").read_text().split("\n")[1:] if m]
  ours = HfBpeTokenizer(vocab, merges, VocabMap(len(vocab), {"eos": vocab["<|endoftext|>"]}), {})
  rows.append(("hf_bpe (GPT-2 byte-level BPE, tokenizers)", rate(ours.encode, lines)))
  try:
    import tiktoken
    ranks = {bytes(ours.piece_bytes(i)): i for i in range(len(vocab)) if ours.piece_bytes(i)}
    enc = tiktoken.Encoding("bench", pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
                            mergeable_ranks=ranks, special_tokens={})
    same = all(enc.encode_ordinary(line) == ours.encode_hf(line) for line in lines[:500])
    rows.append((f"tiktoken, same vocabulary (ids equal on 500 paragraphs: {same})", rate(enc.encode_ordinary, lines)))
  except ImportError:
    rows.append(("tiktoken (not installed: pip install tiktoken)", float("nan")))

  bpe.save(str(tmp / "tokenizer.json"))
  fast = HfFastTokenizer({"hf_tokenizer.json": (tmp / "tokenizer.json").read_bytes()}, VocabMap(len(vocab), {}), {})
  rows.append(("hf_tokenizer (a tokenizer.json, tokenizers)", rate(fast.encode, lines)))

  wp = tokenizers.BertWordPieceTokenizer()
  wp.train_from_iterator(train, vocab_size=8000)
  wp.save_model(str(tmp))
  pieces = (tmp / "vocab.txt").read_text().split("\n")[:-1]
  ids = {p: i for i, p in enumerate(pieces)}
  wordpiece = HfWordPieceTokenizer(pieces, VocabMap(len(pieces), {"pad": ids["[PAD]"], "unk": ids["[UNK]"]}),
                                   {"unk_token": "[UNK]"})
  rows.append(("hf_wordpiece (BERT WordPiece, tokenizers)", rate(wordpiece.encode, lines)))

  spm.SentencePieceTrainer.train(sentence_iterator=iter(train), model_prefix=str(tmp / "sp"), vocab_size=8000,
                                 model_type="bpe", byte_fallback=True, minloglevel=2)
  sp = HfSentencePieceTokenizer({"tokenizer.model": (tmp / "sp.model").read_bytes()}, VocabMap(8000, {}), {})
  rows.append(("hf_sentencepiece (a .model file, sentencepiece)", rate(sp.encode, lines)))

  print(f"| backend | MB/s ({sum(len(x.encode()) for x in lines) / 1e6:.1f} MB, one thread) |")
  print("|---|---|")
  for name, mbs in rows:
    print(f"| {name} | {mbs:.2f} |")


if __name__ == "__main__":
  main()
