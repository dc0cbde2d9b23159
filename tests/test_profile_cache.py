"""train.profile_steps writes a profiler trace; the persistent compilation cache serves a rerun; a resumed run may
switch attention implementations (same function, same parameters)."""

import json

import jax
import pytest

from conftest import ONE_DEVICE
from configs import tiny
from lmjax import compile_cache, profile_summary, train
from lmjax.config import ConfigError
from lmjax.config_validation import validate
from lmjax.writers import read_metrics

TEXT = "".join(f"Line {i}: a small corpus for a small model, {'odd' if i % 2 else 'even'} line.\n\n" for i in range(200))


def config_for(corpus, cache_dir, **train_fields):
  c = tiny.get_config()
  c.data.update(source="files", paths=str(corpus))
  c.train.update(num_steps=6, log_every=2, eval_every=6, checkpoint_every=6, num_samples=0, plot=False,
                 tensorboard=False, compile_cache=str(cache_dir))
  c.train.update(train_fields)
  return c


def cache_entries(cache_dir):
  return sorted(p.name for p in cache_dir.rglob("*") if p.is_file())


@pytest.mark.slow
def test_profile_trace_compile_cache_and_switching_attention_on_resume(tmp_path):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(TEXT)
  cache = tmp_path / "cache"
  first = train.train_and_evaluate(config_for(corpus, cache, profile_steps="2:4"), tmp_path / "a", devices=ONE_DEVICE)

  traces = list((tmp_path / "a" / "profile").rglob("*.xplane.pb"))
  assert traces and traces[0].stat().st_size > 0
  assert list((tmp_path / "a" / "profile").rglob("*.trace.json.gz"))
  # lmjax-profile reads it: the calls of steps 2 and 3, each op's own time adding up to the threads' busy time.
  trace = profile_summary.find_trace(tmp_path / "a")
  assert profile_summary.recorded_steps(trace) == 2
  summary = profile_summary.summarize(profile_summary.read_events(trace), 2)
  assert summary.rows and all(r.count > 0 and r.self_us >= 0 for r in summary.rows)
  assert sum(r.self_us for r in summary.rows) == pytest.approx(sum(summary.busy_us.values()), rel=1e-6)
  entries = cache_entries(cache)
  assert entries  # the train, eval and init programs were written

  # The same config in a new workdir compiles nothing new: every program comes from the cache, and computes the same.
  second = train.train_and_evaluate(config_for(corpus, cache), tmp_path / "b", devices=ONE_DEVICE)
  assert cache_entries(cache) == entries
  assert second["loss"] == first["loss"]

  # Resuming with another attention implementation is allowed (it is not part of the model's identity).
  resumed = config_for(corpus, cache, num_steps=8, eval_every=8)
  resumed.model.attention_impl = "flash"
  train.train_and_evaluate(resumed, tmp_path / "a", devices=ONE_DEVICE)
  assert [r["step"] for r in read_metrics(tmp_path / "a") if r["split"] == "eval"] == [6, 8]
  assert json.loads((tmp_path / "a" / "config.json").read_text())["model"]["attention_impl"] == "flash"
  compile_cache.enable("off")
  assert jax.config.jax_compilation_cache_dir is None


@pytest.mark.parametrize("value", ["5", "4:2", "a:b", "-1:3"])
def test_a_bad_profile_window_is_one_line(value):
  c = tiny.get_config()
  c.train.profile_steps = value
  with pytest.raises(ConfigError, match=r"config.train.profile_steps=.* START:END") as error:
    validate(c)
  assert "\n" not in str(error.value)


def test_compile_cache_settings(monkeypatch, tmp_path):
  monkeypatch.delenv(compile_cache.ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compile_cache.resolve("auto") == tmp_path / "lmjax" / "xla"
  monkeypatch.setenv(compile_cache.ENV, "off")
  assert compile_cache.resolve("auto") is None
  assert compile_cache.resolve("") is None and compile_cache.resolve("off") is None
  assert compile_cache.resolve(str(tmp_path / "x")) == tmp_path / "x"
