"""Post-training examples as token sequences with a mask of the tokens a loss is on.

An SFT record is a conversation, {"messages": [{"role", "content"}, ...]}, rendered with a chat template
(lmjax/data/chat.py), or a pair {"prompt", "completion"}, used as written. Either becomes `Piece`s of text, each
trained or not: in a conversation the assistant's replies are trained and everything else is not, including the
header that opens each reply (the template's generation prompt, which at inference time is part of the prompt);
in a pair the completion is trained. A DPO record {"prompt", "chosen", "rejected"} gives two such sequences that
share their prompt; there only the final reply is trained.

Every piece is tokenized on its own and the ids are concatenated, so a piece's tokens never straddle a boundary
and the trained tokens are exactly those of the trained pieces; the prompt of a sample answer is tokenized the
same way (`Encoded.prompt_ids`). A sequence is <bos> pieces <eos>, the way documents are in pretraining; the
<eos> is trained when the last piece is, so a model learns to stop after its answer.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lmjax.data.chat import ChatError, ChatTemplate, check_messages
from lmjax.data.text_files import DataError
from lmjax.data.records import Record
from lmjax.data.tokenizers import BOS_ID, EOS_ID, Tokenizer


TEMPLATE_CHOICES = ("auto", "builtin")  # besides a path


def _from_file(path: Path, field: str) -> ChatTemplate | None:
  """A Jinja template file, or the template of a tokenizer_config.json (None when it has none)."""
  try:
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".json":
      return ChatTemplate(text, {}, str(path))
    return ChatTemplate.from_tokenizer_config(json.loads(text), str(path))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError, ChatError) as e:
    raise DataError(f"config.{field}: {path} cannot be read as a chat template ({e})") from None


def resolve_template(spec: str, tokenizer_dir: Path | None = None, field: str = "sft.chat_template") -> ChatTemplate:
  """The chat template `spec` names: 'builtin' (lmjax's, lmjax/data/chat.py); 'auto', the template kept with the
  tokenizer the run starts from (chat_template.jinja, or chat_template in tokenizer_config.json, in
  `tokenizer_dir`), else the built-in one; or a file: a Hugging Face tokenizer_config.json, or a Jinja template."""
  if spec == "builtin":
    return ChatTemplate()
  if spec == "auto":
    for name in ("chat_template.jinja", "tokenizer_config.json"):
      if tokenizer_dir is not None and (tokenizer_dir / name).is_file():
        found = _from_file(tokenizer_dir / name, field)
        if found is not None:
          return found
    return ChatTemplate()
  path = Path(spec)
  if not path.is_file():
    raise DataError(f"config.{field}={spec!r} is neither {' nor '.join(map(repr, TEMPLATE_CHOICES))} nor a file; "
                    f"give a tokenizer_config.json or a Jinja template file")
  found = _from_file(path, field)
  if found is None:
    raise DataError(f"config.{field}={spec!r} holds no chat_template; give another file, or 'builtin'")
  return found


@dataclasses.dataclass(frozen=True)
class Piece:
  text: str
  trained: bool
  content: str = ""  # a reply's own words, without the template's markup (for sample sheets)


@dataclasses.dataclass(frozen=True)
class Encoded:
  """One sequence: ids [n] with <bos> first and <eos> last, and which of them a loss is on."""
  ids: np.ndarray  # int32 [n]
  trained: np.ndarray  # bool [n]
  prompt_len: int  # tokens before the final trained piece: the prompt of a sample answer
  prompt_text: str
  reference: str  # the answer the data gives: the final reply's content (or the completion)

  @property
  def prompt_ids(self) -> np.ndarray:
    return self.ids[:self.prompt_len]


def _reply(template: ChatTemplate, messages: list[dict[str, str]], i: int, text: str,
           span: tuple[int, int]) -> list[Piece]:
  """An assistant turn as (header, reply): the header is what the template's generation prompt adds after the
  earlier turns, when that is how the turn starts; otherwise the whole turn is the reply."""
  start, end = span
  if i > 0:
    prompt = template.render(messages[:i], add_generation_prompt=True)
    header = prompt[start:]
    if prompt.startswith(text[:start]) and text[start:end].startswith(header) and len(header) < end - start:
      return [Piece(header, False), Piece(text[start + len(header):end], True, messages[i]["content"])]
  return [Piece(text[start:end], True, messages[i]["content"])]


def conversation_pieces(messages: Any, template: ChatTemplate, where: str, *, final_only: bool = False) -> list[Piece]:
  """A conversation's pieces: every assistant reply trained (with `final_only`, only the last one)."""
  try:
    messages = check_messages(messages, where)
    if not any(m["role"] == "assistant" for m in messages):
      roles = ", ".join(m["role"] for m in messages)
      raise DataError(f"{where}: the conversation has no assistant turn (roles: {roles}), so there is nothing to "
                      f"learn; give it one or drop it")
    text, spans = template.spans(messages)
    pieces = []
    for i, (message, span) in enumerate(zip(messages, spans)):
      if message["role"] == "assistant":
        pieces += _reply(template, messages, i, text, span)
      else:
        pieces.append(Piece(text[span[0]:span[1]], False))
  except ChatError as e:
    raise DataError(f"{where}: {e}") from None
  if final_only:
    last = max(i for i, p in enumerate(pieces) if p.trained)
    pieces = [Piece(p.text, p.trained and i == last, p.content) for i, p in enumerate(pieces)]
  return [p for p in pieces if p.text]


def _string(record: Record, key: str) -> str:
  value = record.value[key]
  if not isinstance(value, str):
    raise DataError(f"{record.where}: {key!r} must be a string (got {type(value).__name__})")
  return value


def sft_pieces(record: Record, template: ChatTemplate) -> list[Piece]:
  value = record.value
  if "messages" in value:
    return conversation_pieces(value["messages"], template, record.where)
  if "prompt" in value and "completion" in value:
    completion = _string(record, "completion")
    if not completion:
      raise DataError(f"{record.where}: the completion is empty, so there is nothing to learn; drop the example")
    return [p for p in (Piece(_string(record, "prompt"), False), Piece(completion, True)) if p.text]
  raise DataError(f"{record.where}: expected {{\"messages\": [...]}} or {{\"prompt\", \"completion\"}}; the object "
                  f"has {sorted(value)}")


def _response(record: Record, key: str) -> str:
  """A DPO response: a string, or a list holding one assistant message."""
  value = record.value[key]
  if isinstance(value, str):
    return value
  if (not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict)
      or value[0].get("role") != "assistant" or not isinstance(value[0].get("content"), str)):
    raise DataError(f"{record.where}: {key!r} must be a string or a list with one assistant message "
                    f"{{\"role\": \"assistant\", \"content\": ...}}")
  return value[0]["content"]


def pair_pieces(record: Record, template: ChatTemplate) -> tuple[list[Piece], list[Piece]]:
  """(chosen, rejected) pieces of a DPO record: the same prompt, then each response."""
  value = record.value
  missing = [k for k in ("prompt", "chosen", "rejected") if k not in value]
  if missing:
    raise DataError(f"{record.where}: a preference pair needs 'prompt', 'chosen' and 'rejected'; it lacks "
                    f"{', '.join(map(repr, missing))} (it has {sorted(value)})")
  chosen, rejected = _response(record, "chosen"), _response(record, "rejected")
  if isinstance(value["prompt"], list):
    def pieces(reply: str) -> list[Piece]:
      messages = [*value["prompt"], {"role": "assistant", "content": reply}]
      return conversation_pieces(messages, template, record.where, final_only=True)
    return pieces(chosen), pieces(rejected)
  prompt = _string(record, "prompt")
  return ([p for p in (Piece(prompt, False), Piece(chosen, True)) if p.text],
          [p for p in (Piece(prompt, False), Piece(rejected, True)) if p.text])


def encode(pieces: Sequence[Piece], tokenizer: Tokenizer) -> Encoded:
  """<bos> pieces <eos> as ids, each piece tokenized on its own."""
  ids, trained = [np.asarray([BOS_ID], np.int32)], [np.zeros(1, bool)]
  last = max((i for i, p in enumerate(pieces) if p.trained), default=-1)
  prompt_len = 1
  for i, piece in enumerate(pieces):
    piece_ids = np.asarray(tokenizer.encode(piece.text), np.int32)
    if i < last:
      prompt_len += len(piece_ids)
    ids.append(piece_ids)
    trained.append(np.full(len(piece_ids), piece.trained))
  ids.append(np.asarray([EOS_ID], np.int32))
  trained.append(np.asarray([bool(pieces) and pieces[-1].trained]))
  reference = (pieces[last].content or pieces[last].text) if last >= 0 else ""
  return Encoded(np.concatenate(ids), np.concatenate(trained), prompt_len,
                 "".join(p.text for p in pieces[:max(last, 0)]), reference)
