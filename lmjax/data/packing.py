"""Variable-length sequences (conversations, prompt/completion pairs) packed several per row by segment ids.

A row holds L + 1 tokens (the inputs and, shifted by one, the targets of data.seq_len = L positions). Each sequence
in it gets its own segment id (1, 2, ...; 0 is padding) and positions counted from 0, so with the stack's
document mask no token attends across sequences, and the loss mask drops the target after a sequence's last token
(the next one's <bos>) as well as every target that is not trained. A packed row therefore computes exactly what
its sequences would alone, one per row.

Rows are filled best-fit decreasing (longest sequences first, each into the fullest row it still fits in), which
leaves little padding and depends only on the lengths, so every process packs identically.
"""

from __future__ import annotations

import bisect
from typing import Sequence

import numpy as np

from lmjax.data.chat_examples import Encoded

KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


def assign_rows(lengths: Sequence[int], capacity: int, pack: bool = True) -> list[list[int]]:
  """Which sequences share each row: lists of indices (in their original order), each list's lengths summing to
  at most `capacity`. Without `pack`, one sequence per row."""
  if not pack:
    return [[i] for i in range(len(lengths))]
  rows: list[list[int]] = []
  free: list[tuple[int, int]] = []  # (room left, row), sorted: the first entry with enough room fits best
  for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
    n = lengths[i]
    k = bisect.bisect_left(free, (n, -1))
    if k < len(free):
      room, row = free.pop(k)
    else:
      room, row = capacity, len(rows)
      rows.append([])
    rows[row].append(i)
    if room - n > 0:
      bisect.insort(free, (room - n, row))
  return [sorted(row) for row in rows]


def pack(sequences: Sequence[Encoded], seq_len: int, pack_rows: bool = True) -> dict[str, np.ndarray]:
  """Arrays [R, seq_len] with KEYS; a sequence longer than a row (seq_len + 1 tokens) keeps its first tokens."""
  width = seq_len + 1
  ids = [s.ids[:width] for s in sequences]
  trained = [s.trained[:width] for s in sequences]
  rows = assign_rows([len(x) for x in ids], width, pack_rows)
  tokens = np.zeros((len(rows), width), np.int32)
  segments = np.zeros((len(rows), width), np.int32)
  positions = np.zeros((len(rows), width), np.int32)
  mask = np.zeros((len(rows), width), bool)
  for r, members in enumerate(rows):
    offset = 0
    for k, i in enumerate(members, start=1):
      n = len(ids[i])
      tokens[r, offset:offset + n] = ids[i]
      segments[r, offset:offset + n] = k
      positions[r, offset:offset + n] = np.arange(n)
      mask[r, offset:offset + n] = trained[i]
      offset += n
  same = (segments[:, :-1] == segments[:, 1:]) & (segments[:, :-1] > 0)
  arrays = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": segments[:, :-1],
            "positions": positions[:, :-1], "loss_mask": (same & mask[:, 1:]).astype(np.float32)}
  return arrays
