"""Every way a run can fail: one line on stderr, its own exit status, and nothing saved lost or left half-written.

The subprocess tests run `python -m lmjax.main` as a user would (one CPU device); the faults are real where that is
cheap (a file as --workdir, a binary corpus, two runs at once, SIGTERM, SIGKILL of a lock holder) and injected in
process where it is not (a read-only or full filesystem).
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import single_device_env
from lmjax import cli, exit_status, failures
from lmjax.workdir import FreshStart, WorkdirError, prepare_workdir, record_config
from lmjax.workdir_lock import LOCK_FILE, WorkdirLock, WorkdirLocked

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--config=configs/tiny.py", "--config.train.num_samples=0", "--config.train.plot=False",
         "--config.train.tensorboard=False"]


def run_main(*flags: str, timeout: int = 240) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "lmjax.main", *flags], cwd=REPO, capture_output=True, text=True,
                        env=single_device_env(), timeout=timeout)


def the_error_line(result: subprocess.CompletedProcess, status: int) -> str:
  """The run failed with `status`, and its stderr holds exactly one error line, the last one, and no traceback."""
  assert result.returncode == status, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  errors = [line for line in lines if line.startswith(("error:", "stopped:", "preempted:"))]
  assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-3000:]
  return errors[0]


# --- config files and overrides: one line naming the file and line, or the section's fields ----------------------

CONFIG_FILES = {
    "syntax_error": ("def get_config(:\n  pass\n", "syntax error at line 1"),
    "get_config_raises": ("def get_config():\n  raise RuntimeError('no corpus here')\n",
                          "RuntimeError at line 2: no corpus here"),
    "type_error": ("from lmjax.config import base_config\n\n\ndef get_config():\n  c = base_config()\n"
                   "  c.model.d_model = 'x' + 1\n  return c\n", "TypeError at line 6"),
    "wrong_field_type": ("from lmjax.config import base_config\n\n\ndef get_config():\n  c = base_config()\n"
                         "  c.model.d_model = 'wide'\n  return c\n", "TypeError at line 6"),
    "no_get_config": ("CONFIG = 1\n", "defines no get_config()"),
}


@pytest.mark.parametrize("kind", sorted(CONFIG_FILES))
def test_a_broken_config_file_is_one_line_naming_it(tmp_path, kind):
  text, expected = CONFIG_FILES[kind]
  path = tmp_path / f"{kind}.py"
  path.write_text(text)
  line = the_error_line(run_main(f"--config={path}", f"--workdir={tmp_path / 'run'}"), cli.BAD_INPUT_EXIT_CODE)
  assert line.startswith(f"error: --config={path}") and expected in line and len(line) < 400, line
  assert not (tmp_path / "run").exists()


def test_an_unknown_field_lists_the_section(tmp_path):
  line = the_error_line(run_main(*QUICK, f"--workdir={tmp_path}/run", "--config.model.nope=3"), 2)
  assert "config.model has no field 'nope'" in line
  assert "d_model" in line and "position" in line and "num_layers" in line  # the section's fields


def test_a_misspelt_field_suggests_the_right_one(tmp_path):
  line = the_error_line(run_main(*QUICK, f"--workdir={tmp_path}/run", "--config.model.positon=rope"), 2)
  assert "no field 'positon' (did you mean 'position'?)" in line and "positon'" + " Did" not in line


# --- checked before anything is written ---------------------------------------------------------------------------

@pytest.mark.slow
def test_a_nan_learning_rate_is_a_config_error_before_anything_is_written(tmp_path):
  line = the_error_line(run_main(*QUICK, f"--workdir={tmp_path}/run", "--config.optim.learning_rate=nan"), 2)
  assert "config.optim.learning_rate=nan" in line and "finite" in line
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["is_a_file", "under_a_file"])
def test_a_workdir_that_cannot_be_a_directory_is_one_line(tmp_path, where):
  blocker = tmp_path / "notes.txt"
  blocker.write_text("not a directory")
  workdir = blocker if where == "is_a_file" else blocker / "runs" / "a"
  line = the_error_line(run_main(*QUICK, f"--workdir={workdir}"), cli.WORKDIR_UNUSABLE_EXIT_CODE)
  assert f"--workdir={workdir}" in line
  assert ("is a file" in line) if where == "is_a_file" else (f"under {blocker}" in line)
  assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("code, words", [(errno.EROFS, "read-only filesystem"), (errno.EACCES, "no permission")])
def test_a_workdir_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, code, words):
  def refuse(self, *args, **kwargs):
    raise OSError(code, os.strerror(code), str(self))

  monkeypatch.setattr(Path, "mkdir", refuse)  # a mount that is read-only, or a directory of someone else's
  with pytest.raises(WorkdirError, match=words) as e:
    prepare_workdir(tmp_path / "run")
  status, line = exit_status.describe_failure(e.value)
  assert status == cli.WORKDIR_UNUSABLE_EXIT_CODE and f"--workdir={tmp_path / 'run'}" in line and "\n" not in line


@pytest.mark.slow
def test_a_binary_corpus_is_refused_and_the_start_leaves_the_workdir_as_it_was(tmp_path):
  corpus = tmp_path / "ls"
  corpus.write_bytes(Path(sys.executable).read_bytes()[:200_000])  # an executable: NUL bytes and all
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "notes.txt").write_text("mine")
  line = the_error_line(run_main(*QUICK, f"--workdir={workdir}", "--config.data.source=files",
                                 f"--config.data.paths={corpus}"), cli.BAD_INPUT_EXIT_CODE)
  assert str(corpus) in line and "looks binary" in line and "NUL bytes" in line and "data.allow_binary=True" in line
  # The tokenizer and the prepared data it wrote on the way were removed; what was there before is not.
  assert sorted(os.listdir(workdir)) == ["notes.txt"] and (workdir / "notes.txt").read_text() == "mine"


def test_binary_and_text_are_told_apart(tmp_path):
  from lmjax.data.text_files import DataError, looks_binary, read_text
  rng = np.random.default_rng(0)
  noise = bytes(b for b in rng.integers(1, 256, 20_000, dtype=np.uint8).tolist())  # random bytes, no NUL
  latin1 = ("Très bien, déjà vu: à la carte, café crème. " * 200).encode("latin-1")
  utf16 = "plain text\n".encode("utf-16")
  assert "NUL bytes" in looks_binary(utf16, utf16.decode("utf-8", "replace"))
  assert "not UTF-8" in looks_binary(noise, noise.decode("utf-8", "replace"))
  assert looks_binary(latin1, latin1.decode("utf-8", "replace")) is None  # mis-encoded text is still text
  path = tmp_path / "noise.bin"
  path.write_bytes(noise)
  with pytest.raises(DataError, match="data.allow_binary=True"):
    read_text(path, "replace")
  assert len(read_text(path, "replace", allow_binary=True)) > 0
  # Streamed (how training reads local text) in small pieces, the file is judged on the whole, not piece by piece.
  from lmjax.data.text_files import iter_file_documents
  with pytest.raises(DataError, match="not UTF-8"):
    list(iter_file_documents(path, "paragraph", chunk_bytes=997))
  assert list(iter_file_documents(path, "paragraph", chunk_bytes=997, allow_binary=True))
  latin_path = tmp_path / "latin1.txt"
  latin_path.write_bytes(latin1)
  assert list(iter_file_documents(latin_path, "paragraph", chunk_bytes=5))


def test_a_failed_first_start_removes_only_what_it_wrote(tmp_path):
  mine = tmp_path / "kept"
  mine.mkdir()
  (mine / "notes.txt").write_text("mine")
  for workdir in (tmp_path / "new" / "nested" / "run", mine):
    with pytest.raises(RuntimeError, match="late failure"):
      with FreshStart(workdir) as fresh:
        prepare_workdir(workdir)
        lock = WorkdirLock(workdir)
        lock.acquire()
        fresh.arm(own=(LOCK_FILE,))
        (workdir / "tokenizer").mkdir()
        (workdir / "tokenizer" / "tokenizer.json").write_text("{}")
        (workdir / "data").mkdir()
        raise RuntimeError("late failure")
    lock.release()
  assert not (tmp_path / "new").exists()  # created by the start, so removed with it, parents included
  assert sorted(os.listdir(mine)) == ["notes.txt"]


def test_a_start_that_began_for_real_or_never_took_the_lock_removes_nothing(tmp_path):
  from lmjax.config import base_config
  began, locked_out = tmp_path / "began", tmp_path / "locked_out"
  with pytest.raises(RuntimeError):
    with FreshStart(began) as fresh:
      prepare_workdir(began)
      fresh.arm()
      record_config(base_config(), began)  # restored or initialized: from here on the run is real
      (began / "metrics.jsonl").write_text("{}\n")
      raise RuntimeError("diverged later")
  assert sorted(os.listdir(began)) == ["config.json", "metrics.jsonl"]
  with pytest.raises(WorkdirLocked):
    with FreshStart(locked_out):
      prepare_workdir(locked_out)
      (locked_out / "written_by_the_other_run").write_text("")
      raise WorkdirLocked("in use")  # never armed: what is there belongs to the run holding the lock
  assert sorted(os.listdir(locked_out)) == ["written_by_the_other_run"]


# --- one run per workdir ------------------------------------------------------------------------------------------

def test_a_second_lock_names_the_holder(tmp_path):
  first, second = WorkdirLock(tmp_path), WorkdirLock(tmp_path)
  assert first.acquire()
  with pytest.raises(WorkdirLocked, match=rf"in use by another run: pid {os.getpid()} on host \S+ \(since"):
    second.acquire()
  first.release()
  assert second.acquire()  # released: free again
  second.release()


def test_a_sigkilled_holder_does_not_leave_the_lock_stuck(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from lmjax.workdir_lock import WorkdirLock; "
       "WorkdirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)", str(tmp_path)],
      cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(WorkdirLocked, match=f"pid {holder.pid}"):
      WorkdirLock(tmp_path).acquire()
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  lock = WorkdirLock(tmp_path)
  assert lock.acquire()  # the kernel dropped the dead process's lock: no stale file to delete by hand
  assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
  lock.release()


@pytest.mark.slow
def test_two_runs_started_at_once_on_one_workdir(tmp_path):
  workdir = tmp_path / "run"
  flags = [*QUICK, f"--workdir={workdir}", "--config.train.num_steps=10", "--config.train.log_every=5",
           "--config.train.eval_batches=1"]
  procs = [subprocess.Popen([sys.executable, "-m", "lmjax.main", *flags], cwd=REPO, stderr=subprocess.PIPE, text=True,
                            env=single_device_env()) for _ in range(2)]
  stderrs = [p.communicate(timeout=300)[1] for p in procs]
  codes = [p.returncode for p in procs]
  assert sorted(codes) == [0, cli.WORKDIR_LOCKED_EXIT_CODE], stderrs
  winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
  line = the_error_line(subprocess.CompletedProcess([], codes[loser], "", stderrs[loser]), cli.WORKDIR_LOCKED_EXIT_CODE)
  assert f"--workdir={workdir} is in use by another run" in line
  assert f"pid {procs[winner].pid} on host" in line or "just starting" in line
  records = [json.loads(r) for r in (workdir / "metrics.jsonl").read_text().splitlines()]
  keys = [(r["split"], r["step"]) for r in records]
  assert len(keys) == len(set(keys)) and ("train", 10) in keys  # one run wrote, once


# --- stop signals outside the training loop -----------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_during_start_up_is_one_line_and_status_75(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.Popen([sys.executable, "-m", "lmjax.main", *QUICK, f"--workdir={workdir}",
                           "--config.train.num_steps=100000"], cwd=REPO, stderr=subprocess.PIPE, text=True,
                          env=single_device_env())
  lock = workdir / LOCK_FILE
  deadline = time.monotonic() + 120
  while not (lock.exists() and lock.read_text().strip()) and proc.poll() is None:
    assert time.monotonic() < deadline, "the run never took its lock"
    time.sleep(0.01)
  proc.send_signal(signal.SIGTERM)  # it has the workdir and is preparing data or compiling: no step has run
  _, stderr = proc.communicate(timeout=120)
  line = the_error_line(subprocess.CompletedProcess([], proc.returncode, "", stderr), cli.PREEMPTED_EXIT_CODE)
  assert line.startswith("stopped: stopped by SIGTERM outside the training loop") and "rerun the same command" in line
  assert not workdir.exists()  # a first start that never began leaves nothing behind


# --- which status for which failure ------------------------------------------------------------------------------

def test_each_kind_of_failure_has_its_own_status():
  from lmjax import train
  from lmjax.checkpoint import CheckpointError, NonFiniteStateError
  from lmjax.config import ConfigError
  from lmjax.data.text_files import DataError
  from lmjax.preemption import Interrupted, Preempted
  tensorstore_full = ValueError('RESOURCE_EXHAUSTED: Error writing local file "/w/checkpoints/40.orbax-checkpoint-tmp/'
                                'state/_sharding": Failed to write 28881 bytes to file 15: No space left on device '
                                "[os_error_code='28']")
  cases = [
      (ConfigError("config.x=1 is invalid"), 2), (DataError("data.paths ..."), 2),
      (train.NonFiniteError("stopped"), 3), (NonFiniteStateError("nan"), 3),
      (WorkdirLocked("in use"), 4), (WorkdirError("read-only"), 5),
      (OSError(errno.EROFS, "Read-only file system", "/w/metrics.jsonl"), 5),
      (failures.DiskFullError("out of disk space ..."), 6),
      (OSError(errno.ENOSPC, "No space left on device", "/w/metrics.jsonl"), 6), (tensorstore_full, 6),
      (CheckpointError("none restores"), 7), (Preempted(10, "SIGTERM"), 75), (Interrupted("SIGTERM"), 75),
      # Internal errors are never called bad input: they end with their traceback and status 1.
      (ValueError("operands could not be broadcast together"), 1), (KeyError("layer_3"), 1), (RuntimeError("x"), 1),
  ]
  for error, status in cases:
    got, line = exit_status.describe_failure(error, "/w")
    assert got == status, (error, got)
    assert (line == "") == (status == 1) and "\n" not in line
  _, line = exit_status.describe_failure(tensorstore_full, "/w")
  assert "/w/checkpoints/40.orbax-checkpoint-tmp/state/_sharding" in line and " free of " in line


# --- lmjax.generate -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--temperature=nan", "--top_p=nan", "--length_penalty=inf"])
def test_generate_rejects_non_finite_settings(tmp_path, flag):
  result = subprocess.run([sys.executable, "-m", "lmjax.generate", f"--workdir={tmp_path}", flag], cwd=REPO,
                          capture_output=True, text=True, env=single_device_env(), timeout=120)
  line = the_error_line(result, cli.BAD_INPUT_EXIT_CODE)
  assert line == f"error: {flag} must be a finite number"


def test_generate_warns_about_characters_the_tokenizer_lacks():
  from lmjax.data.tokenizers import CharTokenizer, unknown_character_warnings
  tokenizer = CharTokenizer("abcdefghijklmnopqrstuvwxyz ")
  lines = unknown_character_warnings(tokenizer, ["a plain prompt", "café for €5"])
  assert len(lines) == 1 and lines[0].startswith("warning: prompt 2 has 3 characters")
  for listed in ("'é' (U+00E9)", "'€' (U+20AC)", "'5' (U+0035)", "<unk>"):
    assert listed in lines[0]
