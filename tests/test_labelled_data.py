"""Labelled data for fine-tuning: TSV/JSONL/GLUE classification, CoNLL tagging and SQuAD windows, on tiny files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from lmjax import finetune_metrics as fm
from lmjax.data import conll, labelled, squad
from lmjax.data import tokenizers as tk
from lmjax.data.labelled import LabelVocab
from lmjax.data.text_files import DataError
from lmjax.data.words import encode_words, split_words

BYTE = tk.ByteTokenizer()


def one_line(e: pytest.ExceptionInfo) -> str:
  message = str(e.value)
  assert "\n" not in message
  return message


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory) -> tk.Tokenizer:
  words = ("the a of and to in is was denver broncos won super bowl game panthers carolina team city "
           "river bank north south played first second season champion").split()
  rng = np.random.default_rng(0)
  docs = [" ".join(rng.choice(words, 12)) + "." for _ in range(300)]
  return tk.build_tokenizer("bpe", lambda: docs, tmp_path_factory.mktemp("bpe"), vocab_size=320)


def tokenizers(bpe: tk.Tokenizer) -> list[tk.Tokenizer]:
  chars = "".join(chr(c) for c in range(32, 127))
  return [BYTE, tk.CharTokenizer(chars), bpe]


# --- TSV / JSONL ---------------------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
  path.write_text(text, encoding="utf-8")
  return path


def test_tsv_single_and_pair_columns_by_name(tmp_path):
  path = write(tmp_path / "train.tsv", 'id\tsentence\tlabel\n1\ta "quoted" film\tpositive\n\n2\tdull\tnegative\n')
  examples = labelled.read_examples(path, "sentence", "label")
  assert examples == [{"text_a": 'a "quoted" film', "label": "positive"}, {"text_a": "dull", "label": "negative"}]
  pairs = write(tmp_path / "pairs.tsv", "quality\t#1 String\t#2 String\n1\tA cat.\tA feline.\n0\tA dog.\tRain.\n")
  examples = labelled.read_tsv(pairs, ["#1 String", "#2 String"], "quality")
  assert examples[1] == {"text_a": "A dog.", "text_b": "Rain.", "label": "0"}
  assert labelled.read_tsv(pairs, "#1 String", None)[0] == {"text_a": "A cat.", "label": None}


def test_regression_labels_are_floats(tmp_path):
  path = write(tmp_path / "stsb.tsv", "s1\ts2\tscore\na\tb\t3.8\nc\td\t0\n")
  assert [e["label"] for e in labelled.read_tsv(path, ("s1", "s2"), "score", task="regression")] == [3.8, 0.0]
  bad = write(tmp_path / "bad.tsv", "s1\ts2\tscore\na\tb\t3.8\nc\td\thigh\n")
  with pytest.raises(DataError) as e:
    labelled.read_tsv(bad, ("s1", "s2"), "score", task="regression")
  assert f"{bad}:3:" in one_line(e) and "'score'" in str(e.value) and "'high'" in str(e.value)


def test_tsv_errors_name_file_line_and_field(tmp_path):
  path = write(tmp_path / "t.tsv", "sentence\tlabel\nfine\t1\ntoo\tmany\tfields\n")
  with pytest.raises(DataError) as e:
    labelled.read_tsv(path, "sentence", "label")
  assert f"{path}:3:" in one_line(e) and "3 tab-separated fields but the header has 2" in str(e.value)
  with pytest.raises(DataError) as e:
    labelled.read_tsv(path, "text", "label")
  assert "column 'text' (text_fields)" in one_line(e) and "['sentence', 'label']" in str(e.value)
  with pytest.raises(DataError) as e:
    labelled.read_tsv(write(tmp_path / "u.tsv", "sentence\tlabel\nok\t \n"), "sentence", "label")
  assert "u.tsv:2:" in one_line(e) and "label field 'label'" in str(e.value)
  with pytest.raises(DataError) as e:
    labelled.read_examples(write(tmp_path / "x.csv", "a,b\n"), "a")
  assert "x.csv" in one_line(e)


def test_jsonl_keys_and_errors(tmp_path):
  path = write(tmp_path / "d.jsonl", '{"q": "Is it?", "p": "It is.", "y": 1}\n\n{"q": "No", "p": "x", "y": "0"}\n')
  assert labelled.read_examples(path, ["q", "p"], "y") == [
      {"text_a": "Is it?", "text_b": "It is.", "label": "1"}, {"text_a": "No", "text_b": "x", "label": "0"}]
  for line, expected in [('{"q": "a", "y": 1}', "key 'p' (text_fields) is missing"),
                         ('{"q": "a", "p": 5, "y": 1}', "text field 'p' is int"),
                         ('{"q": "a", "p": "b", "y": 1.5}', "label field 'y'"),
                         ('{"q": "a", "p": "b"', "invalid JSON"), ("[1, 2]", "expected a JSON object")]:
    bad = write(tmp_path / "bad.jsonl", '{"q": "a", "p": "b", "y": 1}\n' + line + "\n")
    with pytest.raises(DataError) as e:
      labelled.read_jsonl(bad, ["q", "p"], "y")
    assert f"{bad}:2:" in one_line(e) and expected in str(e.value)


def test_label_vocab_sorted_saved_and_loaded(tmp_path):
  vocab = LabelVocab.from_labels(["positive", "negative", None, "positive"])
  assert vocab.labels == ("negative", "positive") and vocab.id("positive") == 1 and vocab.label(0) == "negative"
  assert LabelVocab.from_labels(["10", "2", "1"]).labels == ("1", "2", "10")  # numeric order for integers
  vocab.save(tmp_path / "labels.json")
  assert LabelVocab.load(tmp_path / "labels.json") == vocab
  with pytest.raises(DataError) as e:
    vocab.id("neutral")
  assert "'neutral'" in one_line(e)


# --- GLUE field mapping (a fake TFDS data source; no download) ------------------------------------------------


def test_glue_records_map_to_examples():
  mrpc = [{"sentence1": b"He said.", "sentence2": b"He told.", "label": np.int64(1), "idx": np.int32(0)},
          {"sentence1": b"A", "sentence2": b"B", "label": np.int64(-1), "idx": np.int32(1)}]
  names = ["not_equivalent", "equivalent"]
  examples = labelled.glue_examples(mrpc, "glue/mrpc", names)
  assert examples == [{"text_a": "He said.", "text_b": "He told.", "label": "equivalent"},
                      {"text_a": "A", "text_b": "B", "label": None}]
  inputs = labelled.encode_examples(examples, BYTE, 16, LabelVocab(names))
  assert inputs["labels"].tolist() == [1, -1]  # TFDS ids kept: the positive class stays 1 for binary F1
  sst2 = labelled.glue_examples([{"sentence": "good", "label": 0, "idx": 3}], "glue/sst2:2.0.0", None)
  assert sst2 == [{"text_a": "good", "label": "0"}]
  stsb = labelled.glue_examples([{"sentence1": b"a", "sentence2": b"b", "label": np.float32(4.25)}], "glue/stsb", None)
  assert stsb == [{"text_a": "a", "text_b": "b", "label": 4.25}]
  mnli = labelled.glue_examples([{"premise": b"p", "hypothesis": b"h", "label": 2}], "glue/mnli",
                                ["entailment", "neutral", "contradiction"])
  assert mnli[0]["label"] == "contradiction"
  with pytest.raises(DataError) as e:
    labelled.glue_examples([{"sentence": b"x", "label": 0}], "glue/mrpc", names)
  assert "'sentence1' is missing" in one_line(e)
  with pytest.raises(DataError) as e:
    labelled.glue_examples([], "glue/squad", None)
  assert "not a GLUE task" in one_line(e)


class Glue(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A stand-in for TFDS's glue/mrpc, prepared locally: open_glue reads it as it would read the real one."""

  VERSION = tfds.core.Version("2.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="mrpc")]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "sentence1": tfds.features.Text(), "sentence2": tfds.features.Text(),
        "label": tfds.features.ClassLabel(names=["not_equivalent", "equivalent"]), "idx": np.int32}))

  def _split_generators(self, dl_manager):
    return {"validation": self._generate_examples()}

  def _generate_examples(self):
    for i in range(4):
      yield i, {"sentence1": f"first {i}", "sentence2": f"second {i}", "label": i % 2, "idx": i}


def test_open_glue_reads_a_prepared_dataset(tmp_path):
  Glue(config="mrpc", data_dir=tmp_path, file_format="array_record").download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  examples, vocab = labelled.open_glue("glue/mrpc", "validation", tmp_path)
  assert vocab.labels == ("not_equivalent", "equivalent")
  assert sorted((e["text_a"], e["text_b"], e["label"]) for e in examples) == [
      (f"first {i}", f"second {i}", ["not_equivalent", "equivalent"][i % 2]) for i in range(4)]
  with pytest.raises(DataError) as e:
    labelled.open_glue("glue/mrpc", "test", tmp_path)
  assert "split 'test' is not in glue/mrpc" in one_line(e)
  with pytest.raises(DataError) as e:
    labelled.open_glue("glue/sst2", "validation", tmp_path / "elsewhere")
  assert "not prepared" in one_line(e) and "tfds build glue/sst2" in str(e.value)


# --- [CLS] A [SEP] B [SEP] -----------------------------------------------------------------------------------


def test_single_sentence_layout_and_padding():
  inputs, types, segments, cut = labelled.encode_pair(BYTE, "abc", None, 8)
  assert inputs.tolist() == [tk.CLS_ID, *BYTE.encode("abc").tolist(), tk.SEP_ID, 0, 0, 0]
  assert types.tolist() == [0] * 8 and segments.tolist() == [1] * 5 + [0] * 3 and not cut


def test_pair_layout_token_types_and_truncation_of_the_longer_side():
  inputs, types, segments, cut = labelled.encode_pair(BYTE, "abcdef", "xy", 10)  # room 7: cut A to 5
  a, b = BYTE.encode("abcde").tolist(), BYTE.encode("xy").tolist()
  assert inputs.tolist() == [tk.CLS_ID, *a, tk.SEP_ID, *b, tk.SEP_ID] and cut
  assert types.tolist() == [0] * 7 + [1] * 3 and segments.tolist() == [1] * 10
  assert labelled.truncate_pair([1, 2, 3, 4], [5, 6, 7], 5) == ([1, 2, 3], [5, 6])  # tie cuts B
  assert labelled.truncate_pair([1], [2, 3, 4, 5, 6], 4) == ([1], [2, 3, 4])
  assert labelled.truncate_pair([1, 2], [3], 5) == ([1, 2], [3])
  inputs, types, _, _ = labelled.encode_pair(BYTE, "", "", 6)
  assert inputs.tolist() == [tk.CLS_ID, tk.SEP_ID, tk.SEP_ID, 0, 0, 0] and types.tolist() == [0, 0, 1, 0, 0, 0]
  with pytest.raises(DataError, match="seq_len=3"):
    labelled.encode_pair(BYTE, "a", "b", 3)


def test_encode_examples_batch_and_regression(caplog):
  examples = [{"text_a": "good film", "label": "pos"}, {"text_a": "bad", "label": "neg"}]
  with caplog.at_level(logging.WARNING):
    out = labelled.encode_examples(examples, BYTE, 6, LabelVocab.from_labels(e["label"] for e in examples))
  assert out["inputs"].shape == (2, 6) and out["inputs"].dtype == np.int32
  assert out["labels"].tolist() == [1, 0] and out["segment_ids"].sum(1).tolist() == [6, 5]
  assert "1 of 2 examples were truncated" in caplog.text
  reg = labelled.encode_examples([{"text_a": "a", "text_b": "b", "label": 2.5}, {"text_a": "c", "text_b": "d",
                                                                                  "label": None}], BYTE, 8, None)
  assert reg["labels"].dtype == np.float32 and reg["labels"][0] == 2.5 and np.isnan(reg["labels"][1])


# --- words ---------------------------------------------------------------------------------------------------


def test_words_split_punctuation_and_first_subword_skips_whitespace_tokens(bpe):
  text = "the Denver Broncos. (1990s)"
  assert [text[s:e] for s, e in split_words(text)] == ["the", "Denver", "Broncos", ".", "(", "1990s", ")"]
  for tok in tokenizers(bpe):
    words = ["the", "river", "bank"]
    encoded = encode_words(tok, words)
    assert tok.decode(encoded.ids) == "the river bank"
    for w, word in enumerate(words):
      assert tok.decode(encoded.ids[encoded.first[w]:encoded.last[w] + 1]).strip() == word
      assert tok.decode(encoded.ids[encoded.first[w]:encoded.first[w] + 1]).strip() != ""  # not a lone space
      assert (encoded.word_index[encoded.first[w]:encoded.last[w] + 1] == w).all()


# --- CoNLL ---------------------------------------------------------------------------------------------------

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O
BRUSSELS\tNNP\tB-NP\tB-LOC
"""


def test_read_conll_sentences_tags_and_docstart(tmp_path):
  path = write(tmp_path / "train.txt", CONLL)
  sentences = conll.read_conll(path)
  assert [s["words"] for s in sentences] == [["EU", "rejects", "German", "call", "."], ["Peter", "Blackburn"],
                                             ["BRUSSELS"]]
  assert sentences[0]["tags"] == ["B-ORG", "O", "B-MISC", "O", "O"]
  assert conll.read_conll(path, tag_column=1)[1]["tags"] == ["NNP", "NNP"]
  assert conll.tag_vocab(sentences).labels == ("B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER", "O")


def test_conll_errors_name_the_line(tmp_path):
  path = write(tmp_path / "bad.txt", "EU NNP B-ORG\nrejects O\n")
  with pytest.raises(DataError) as e:
    conll.read_conll(path)
  assert f"{path}:2:" in one_line(e) and "2 columns" in str(e.value) and "3" in str(e.value)
  with pytest.raises(DataError) as e:
    conll.read_conll(path, tag_column=5)
  assert f"{path}:1:" in one_line(e) and "tag_column=5" in str(e.value)
  with pytest.raises(DataError) as e:
    conll.read_conll(write(tmp_path / "empty.txt", "-DOCSTART- O\n\n"))
  assert "no tagged tokens" in one_line(e)


def test_conll_labels_on_first_subword_and_back_to_words(tmp_path, bpe):
  sentences = conll.read_conll(write(tmp_path / "t.txt", CONLL))
  vocab = conll.tag_vocab(sentences)
  for tok in tokenizers(bpe):
    batch = conll.encode_sentences(sentences, tok, 40, vocab)
    for i, sentence in enumerate(sentences):
      positions = np.flatnonzero(batch["label_weights"][i])
      assert len(positions) == len(sentence["words"]) == batch["num_words"][i]
      assert [vocab.label(t) for t in batch["labels"][i, positions]] == sentence["tags"]
      for w, p in enumerate(positions):  # the labelled token is the start of its word, never a space
        assert batch["word_ids"][i, p] == w
        assert sentence["words"][w].startswith(tok.decode(batch["inputs"][i, p:p + 1]).strip())
      assert batch["inputs"][i, 0] == tk.CLS_ID and batch["word_ids"][i, 0] == -1
      assert tok.decode(batch["inputs"][i]) == " ".join(sentence["words"])
      assert batch["segment_ids"][i].tolist() == (batch["inputs"][i] != tk.PAD_ID).tolist()
      assert (batch["labels"][i][batch["label_weights"][i] == 0] == 0).all()
    assert conll.predicted_tags(batch["labels"], batch, vocab) == [s["tags"] for s in sentences]


def test_conll_truncation_warns_and_lost_words_become_o(tmp_path, caplog):
  sentences = conll.read_conll(write(tmp_path / "t.txt", CONLL))
  vocab = conll.tag_vocab(sentences)
  with caplog.at_level(logging.WARNING):
    batch = conll.encode_sentences(sentences, BYTE, 12, vocab)  # 10 bytes of text fit
  assert "2 of 3 sentences are longer than seq_len=12" in caplog.text and "3 words" in caplog.text
  assert batch["inputs"][0, 11] == tk.SEP_ID and batch["segment_ids"][0].all()
  tags = conll.predicted_tags(batch["labels"], batch, vocab)
  assert tags[0] == ["B-ORG", "O", "O", "O", "O"]  # "German" (B-MISC) lost its first subword
  assert tags[1] == ["B-PER", "I-PER"]  # "Peter Blackburn" is cut inside its last word, which keeps its label
  scores = fm.entity_scores([s["tags"] for s in sentences], tags)
  assert scores["recall"] == pytest.approx(3 / 4) and scores["precision"] == 1.0


# --- SQuAD ---------------------------------------------------------------------------------------------------

CONTEXT = ("Super Bowl 50 was an American football game to determine the champion of the National Football "
           "League (NFL) for the 2015 season. The American Football Conference (AFC) champion Denver Broncos "
           "defeated the National Football Conference (NFC) champion Carolina Panthers 24-10 to earn their "
           "third Super Bowl title. The game was played on February 7, 2016, at Levi's Stadium in the San "
           "Francisco Bay Area at Santa Clara, California.")
QUESTIONS = [("Which NFL team won Super Bowl 50?", "Denver Broncos"), ("Who lost?", "Carolina Panthers"),
             ("Where was it played?", "Levi's Stadium"), ("When?", "February 7, 2016"),
             ("What was the score?", "24-10"), ("Which league?", "National Football League (NFL)"),
             ("First words?", "Super Bowl 50"), ("Last word?", "California"), ("Acronym?", "AFC")]


def squad_file(tmp_path: Path) -> Path:
  qas = [{"id": f"q{i}", "question": q, "answers": [{"text": a, "answer_start": CONTEXT.index(a)}]}
         for i, (q, a) in enumerate(QUESTIONS)]
  qas.append({"id": "v2", "question": "Who won Super Bowl 51?", "answers": [], "is_impossible": True})
  two_answers = {"id": "s", "question": "What?",
                 "answers": [{"text": "Short", "answer_start": 0}, {"text": "one", "answer_start": 6}]}
  data = {"version": "v2.0", "data": [
      {"title": "Super_Bowl_50", "paragraphs": [{"context": CONTEXT, "qas": qas}]},
      {"title": "Other", "paragraphs": [{"context": "Short one.", "qas": [two_answers]}]}]}
  return write(tmp_path / "dev.json", json.dumps(data))


def gold_logits(features: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Logits that put each window's gold start/end (or [CLS]) first."""
  n, length = features["inputs"].shape
  start, end = np.zeros((n, length)), np.zeros((n, length))
  start[np.arange(n), features["start_positions"]] = 10.0
  end[np.arange(n), features["end_positions"]] = 10.0
  return start, end


def test_read_squad(tmp_path):
  examples = squad.read_squad(squad_file(tmp_path))
  assert len(examples) == len(QUESTIONS) + 2
  assert examples[0]["answers"] == [{"text": "Denver Broncos", "answer_start": CONTEXT.index("Denver Broncos")}]
  assert examples[-2]["is_impossible"] and examples[-2]["answers"] == []
  assert examples[-1]["title"] == "Other" and len(examples[-1]["answers"]) == 2
  assert squad.gold_answers(examples)["s"] == ["Short", "one"]


def test_read_squad_errors(tmp_path):
  bad = {"data": [{"paragraphs": [{"context": "abc", "qas": [{"id": "x1", "answers": []}]}]}]}
  with pytest.raises(DataError) as e:
    squad.read_squad(write(tmp_path / "a.json", json.dumps(bad)))
  assert "a.json: data[0].paragraphs[0].qas[0] (id x1)" in one_line(e)
  bad["data"][0]["paragraphs"][0]["qas"][0].update(question="q?", answers=[{"text": "abc", "answer_start": 2}])
  with pytest.raises(DataError) as e:
    squad.read_squad(write(tmp_path / "b.json", json.dumps(bad)))
  assert "answers[0]: answer_start=2 is outside the context" in one_line(e)
  with pytest.raises(DataError) as e:
    squad.read_squad(write(tmp_path / "c.json", "{not json"))
  assert "c.json" in one_line(e)


@pytest.mark.parametrize("max_seq_len,doc_stride", [(64, 16), (96, 40), (160, 64), (512, 128)])
def test_squad_windows_and_gold_spans_round_trip(tmp_path, bpe, max_seq_len, doc_stride):
  examples = squad.read_squad(squad_file(tmp_path))
  for tok in tokenizers(bpe):
    features = squad.make_features(examples, tok, max_seq_len, doc_stride, max_query_len=24)
    context_tokens = {}
    for f in range(len(features["example_index"])):
      i = int(features["example_index"][f])
      example, inputs, types = examples[i], features["inputs"][f], features["token_types"][f]
      question = tok.encode(example["question"])[:24].tolist()
      q_end = len(question) + 1
      assert inputs[0] == tk.CLS_ID and inputs[1:q_end].tolist() == question and inputs[q_end] == tk.SEP_ID
      in_context = features["word_ids"][f] >= 0
      (positions,) = np.nonzero(in_context)
      assert positions[0] == q_end + 1 and inputs[positions[-1] + 1] == tk.SEP_ID
      assert (types == 1).sum() == len(positions) + 1 and types[positions].all()
      assert features["segment_ids"][f].sum() == len(positions) + len(question) + 3
      context_tokens.setdefault(i, []).append(inputs[positions])
      s, e = features["start_positions"][f], features["end_positions"][f]
      if s:  # the whole answer is in this window: its offsets give the answer text back
        text = example["context"][features["offsets"][f, s, 0]:features["offsets"][f, e, 1]]
        assert text == example["answers"][0]["text"]
      else:
        assert e == 0
    # Windows step by doc_stride and together cover the whole context.
    for i, windows in context_tokens.items():
      room = max_seq_len - len(tok.encode(examples[i]["question"])[:24]) - 3
      full = squad._Context(tok, examples[i]["context"]).tokens.ids
      covered = np.concatenate([w[:doc_stride] for w in windows[:-1]] + [windows[-1]])
      assert covered.tolist() == full.tolist() and all(len(w) <= room for w in windows)
    # Gold positions through post-processing give back every answer that fits in some window.
    answers = squad.best_answers(examples, features, *gold_logits(features))
    fits = {int(features["example_index"][f]) for f in np.flatnonzero(features["start_positions"])}
    for i in fits:
      assert answers[examples[i]["id"]] == examples[i]["answers"][0]["text"]
    assert fits == {i for i, e in enumerate(examples) if e["answers"]}  # windows overlap more than any answer
    v2 = squad.best_answers(examples, features, *gold_logits(features), null_threshold=0.0)
    assert v2["v2"] == "" and all(v2[examples[i]["id"]] == answers[examples[i]["id"]] for i in fits)
    scores = fm.squad_scores(answers, squad.gold_answers(examples))
    assert scores["exact_match"] >= len(fits) / len(examples) - 1e-9


def test_answer_longer_than_any_window_maps_to_cls():
  long_answer = "American Football Conference (AFC) champion Denver Broncos defeated the National Football"
  example = {"id": "x", "question": "Q?", "context": CONTEXT, "is_impossible": False,
             "answers": [{"text": long_answer, "answer_start": CONTEXT.index(long_answer)}]}
  features = squad.make_features([example], BYTE, max_seq_len=48, doc_stride=20, max_query_len=8)
  assert len(features["start_positions"]) > 1
  assert not features["start_positions"].any() and not features["end_positions"].any()


def test_best_span_respects_validity_rules():
  example = {"id": "x", "question": "Q?", "context": "alpha beta gamma delta", "answers": [], "is_impossible": True}
  features = squad.make_features([example], BYTE, max_seq_len=64, doc_stride=32)
  word_ids = features["word_ids"][0]
  first = [int(np.flatnonzero(word_ids == w)[0]) for w in range(4)]
  last = [int(np.flatnonzero(word_ids == w)[-1]) for w in range(4)]
  start, end = np.full((1, 64), -100.0), np.full((1, 64), -100.0)
  start[0, first[1]], start[0, first[2]], start[0, 1] = 10.0, 4.0, 50.0  # position 1 is in the question
  end[0, last[0]], end[0, last[2]], end[0, last[3]] = 50.0, 2.0, 5.0  # "alpha" ends before every good start
  assert squad.best_answers([example], features, start, end) == {"x": "beta gamma delta"}
  assert squad.best_answers([example], features, start, end, max_answer_words=2) == {"x": "beta gamma"}
  start[0, 0] = end[0, 0] = 20.0  # [CLS] scores 40 > 15
  assert squad.best_answers([example], features, start, end) == {"x": "beta gamma delta"}
  assert squad.best_answers([example], features, start, end, null_threshold=0.0) == {"x": ""}
  assert squad.best_answers([example], features, start, end, null_threshold=30.0) == {"x": "beta gamma delta"}
