"""How the ids of an imported Hugging Face vocabulary become lmjax ids, and back.

All of lmjax assumes ids 0..6 are <pad> <bos> <eos> <unk> <mask> <sep> <cls> (lmjax.data.tokenizers); data code
writes CLS_ID, SEP_ID, BOS_ID... directly. A Hugging Face vocabulary puts its special tokens anywhere (BERT:
[PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103; GPT-2: <|endoftext|>=50256). So an imported tokenizer exposes
lmjax ids that are a fixed permutation and extension of the HF ids:

  * lmjax id s < 7 (a special role) *owns* the HF token that plays that role when the vocabulary has one: its
    embedding row (and any vocabulary-sized bias entry) moves from the HF id to s, and export moves it back;
  * a role the vocabulary lacks gets an extra row that exists only in lmjax and is dropped on export. It starts as
    a copy of a related token's row where there is one (GPT-2 has no separate <bos>: <|endoftext|> starts its
    documents, so lmjax's <bos> row starts as a copy of it) and otherwise as the mean of all rows, which gives it
    an average token's share of probability rather than an arbitrary logit;
  * every other HF id h keeps its order: lmjax id 7 + (number of non-owned HF ids below h).

With tied embeddings a copied row also shares its source's output logit: an imported GPT-2 scores <bos> like
<|endoftext|> until trained (lmjax never makes <bos> a target, so fine-tuning pulls the two apart). Sampling can then
pick <bos> where GPT-2 would end the text; it decodes to nothing and the model goes on as after <|endoftext|>.

The map is a pure function of (HF vocabulary size, owned roles, copied roles), saved with the tokenizer, so import,
export and the tokenizer always agree. Parity is checked on HF ids: lmjax logits gathered at `lmjax_of_hf`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from lmjax.data.tokenizers import NUM_SPECIAL, SPECIAL_TOKENS

# Role names, in lmjax id order: "pad" is id 0, ..., "cls" is id 6.
ROLES = tuple(token.strip("<>") for token in SPECIAL_TOKENS)


@dataclasses.dataclass(frozen=True)
class VocabMap:
  hf_vocab_size: int
  owned: dict[str, int]  # role -> HF id whose row becomes that lmjax special id
  copies: dict[str, int] = dataclasses.field(default_factory=dict)  # role -> HF id whose row seeds an extra row

  def __post_init__(self):
    for role, hf_id in {**self.owned, **self.copies}.items():
      if role not in ROLES or not 0 <= hf_id < self.hf_vocab_size:
        raise ValueError(f"VocabMap: role {role!r} -> HF id {hf_id} is invalid (vocabulary of {self.hf_vocab_size})")
    if len(set(self.owned.values())) != len(self.owned) or set(self.owned) & set(self.copies):
      raise ValueError(f"VocabMap: an HF id or role is mapped twice ({self.owned}, {self.copies})")

  @property
  def vocab_size(self) -> int:
    """lmjax ids: the 7 specials plus every HF id that no special owns."""
    return NUM_SPECIAL + self.hf_vocab_size - len(self.owned)

  @property
  def lmjax_of_hf(self) -> np.ndarray:
    """int64 [V_hf]: the lmjax id of each HF id (a bijection onto the lmjax ids that correspond to HF rows)."""
    out = np.empty(self.hf_vocab_size, np.int64)
    is_owned = np.zeros(self.hf_vocab_size, bool)
    for role, hf_id in self.owned.items():
      out[hf_id] = ROLES.index(role)
      is_owned[hf_id] = True
    rest = np.flatnonzero(~is_owned)
    out[rest] = NUM_SPECIAL + np.arange(rest.size)
    return out

  @property
  def hf_of_lmjax(self) -> np.ndarray:
    """int64 [V_lmjax]: the HF id of each lmjax id, -1 for the extra rows that only lmjax has."""
    out = np.full(self.vocab_size, -1, np.int64)
    out[self.lmjax_of_hf] = np.arange(self.hf_vocab_size)
    return out

  def import_rows(self, table_VX: np.ndarray) -> np.ndarray:
    """An HF table with one row per HF id (embeddings [V, D], biases [V]) laid out by lmjax id."""
    if table_VX.shape[0] != self.hf_vocab_size:
      raise ValueError(f"a vocabulary table has {table_VX.shape[0]} rows but the vocabulary {self.hf_vocab_size}")
    hf_of = self.hf_of_lmjax
    out = np.empty((self.vocab_size, *table_VX.shape[1:]), table_VX.dtype)
    known = hf_of >= 0
    out[known] = table_VX[hf_of[known]]
    mean = table_VX.astype(np.float64).mean(axis=0).astype(table_VX.dtype)
    for lmjax_id in np.flatnonzero(~known):
      source = self.copies.get(ROLES[lmjax_id])
      out[lmjax_id] = mean if source is None else table_VX[source]
    return out

  def export_rows(self, table_VX: np.ndarray) -> np.ndarray:
    """The inverse of import_rows for the HF rows: [V_lmjax, ...] -> [V_hf, ...]; extra rows are dropped."""
    if table_VX.shape[0] != self.vocab_size:
      raise ValueError(f"a vocabulary table has {table_VX.shape[0]} rows but the lmjax vocabulary {self.vocab_size}")
    return table_VX[self.lmjax_of_hf]

  def to_json(self) -> dict[str, Any]:
    return {"hf_vocab_size": self.hf_vocab_size, "owned": dict(self.owned), "copies": dict(self.copies)}

  @classmethod
  def from_json(cls, data: dict[str, Any]) -> "VocabMap":
    return cls(int(data["hf_vocab_size"]), {k: int(v) for k, v in data["owned"].items()},
               {k: int(v) for k, v in data.get("copies", {}).items()})

  @classmethod
  def identity(cls, vocab_size: int) -> "VocabMap":
    """An lmjax-native vocabulary exported as is: ids 0..6 are its own specials, so HF ids equal lmjax ids."""
    return cls(vocab_size, {role: i for i, role in enumerate(ROLES)})


def build_vocab_map(hf_vocab_size: int, role_ids: dict[str, int | None], copy_rules: dict[str, str]) -> VocabMap:
  """Owns each role's HF id (first come, first served in ROLES order of `role_ids`), then seeds missing roles.

  `role_ids`: role -> the HF id of the tokenizer's token for it (None: the vocabulary has none). `copy_rules`: a role
  without a token of its own -> the role whose HF token seeds its row (GPT-2: {"bos": "eos"}).
  """
  owned: dict[str, int] = {}
  for role, hf_id in role_ids.items():
    if hf_id is not None and hf_id < hf_vocab_size and hf_id not in owned.values():
      owned[role] = hf_id
  copies = {role: owned[source] for role, source in copy_rules.items() if role not in owned and source in owned}
  return VocabMap(hf_vocab_size, owned, copies)
