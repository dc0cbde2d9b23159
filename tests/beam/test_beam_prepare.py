"""The Beam path (DirectRunner, several workers) writes the same caches, byte for byte, as the one-process path.

Runs in the Beam environment that `make test` builds (.venv-beam, see the Makefile); skipped elsewhere."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmjax.config import base_config

from lmjax.config_validation import validate
from lmjax.data import beam, pipeline, sources
from lmjax.data.tokenizers import build_tokenizer

pytest.importorskip("apache_beam")

DOCS = [f"document {i}: " + "lorem ipsum " * (i % 9) + ("\n second line" if i % 4 == 0 else "") for i in range(90)]


def test_beam_caches_equal_the_one_process_caches(tmp_path):
  for s in range(3):  # three text files and three JSONL shards, split across the workers
    (tmp_path / f"part-{s}.txt").write_text("\n\n".join(DOCS[s::3]) + "\n")
    (tmp_path / f"part-{s}.jsonl").write_text("".join(json.dumps({"t": d}) + "\n" for d in DOCS[s::3]))
  (tmp_path / "val.jsonl").write_text("".join(json.dumps({"t": d}) + "\n" for d in DOCS[:7]))
  c = base_config()
  c.data.mixture = (f"books:1 source=files paths={tmp_path}/part-*.txt; "
                    f"web:1 source=hf hf_name=json text_key=t "
                    f"hf_data_files=train={tmp_path}/part-*.jsonl,validation={tmp_path}/val.jsonl")
  validate(c)
  tokenizer = build_tokenizer("bpe", lambda: sources.iter_texts(c.data, "train", tmp_path / "one"), tmp_path / "tok",
                              vocab_size=300)
  written = beam.prepare(c.data, tokenizer, tmp_path / "beam", str(tmp_path / "shards"),
                         ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_threading"])
  assert len(written) == 4
  for _, _, section in sources.named_sources(c.data):
    for split in (section.train_split, section.eval_split):
      one = pipeline.tokenize_split(section, split, tokenizer, tmp_path / "one")
      by_beam = pipeline.tokenize_split(section, split, tokenizer, tmp_path / "beam")  # found, not tokenized again
      assert one.name == by_beam.name and by_beam.num_documents > 0
      np.testing.assert_array_equal(one.tokens, by_beam.tokens)
      np.testing.assert_array_equal(one.doc_starts, by_beam.doc_starts)
