"""Checksums of a saved checkpoint step: every file's size and SHA-256, recorded once the step is final and
checked before it is restored, so damage on disk (one flipped byte is enough) is found and the previous step tried.

Each process records the files it wrote in `lmjax_checksums.process_<i>.json` inside the step directory, on a
background thread (`ChecksumRecorder`), so an async save stays async; `verify_step` checks them, every process
its share, and all processes agree on the outcome.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import queue
import re
import threading
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from absl import logging

CHECKSUMS_PREFIX = "lmjax_checksums.process_"
_PROCESS_FILE = re.compile(r"process_(\d+)")


class ChecksumError(ValueError):
  """A file of a saved step is not what was saved: missing, of another size, or with another SHA-256."""


def _owner(relative_path: str) -> int:
  """The process that wrote a file of a step: the one its path names (ocdbt.process_1/..., process_1-of-2.json,
  array_metadatas/process_1), else process 0, which writes the shared metadata."""
  m = _PROCESS_FILE.search(relative_path)
  return int(m[1]) if m else 0


def _step_files(step_dir: Path) -> list[str]:
  files = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      if not name.startswith(CHECKSUMS_PREFIX):
        files.append(os.path.relpath(os.path.join(root, name), step_dir))
  return sorted(files)


def _sha256(path: str) -> tuple[int, str]:
  digest, size = hashlib.sha256(), 0
  with open(path, "rb") as f:
    while chunk := f.read(1 << 23):  # hashlib releases the GIL on large chunks: files hash in parallel
      digest.update(chunk)
      size += len(chunk)
  return size, digest.hexdigest()


def _hash_all(step_dir: Path, relative_paths: list[str]) -> dict[str, tuple[int, str] | None]:
  """(size, sha256) of each file; None for a file that is not there."""
  def one(rel):
    try:
      return _sha256(os.path.join(step_dir, rel))
    except FileNotFoundError:
      return None
  workers = max(1, min(8, os.cpu_count() or 1, len(relative_paths)))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return dict(zip(relative_paths, pool.map(one, relative_paths)))


def record_checksums(step_dir: str | os.PathLike, process_index: int | None = None,
                     process_count: int | None = None) -> Path:
  """Writes lmjax_checksums.process_<i>.json into a final step directory: size and SHA-256 of every file this
  process wrote there. Written to a temporary name and renamed, so a record is whole or absent."""
  step_dir = Path(step_dir)
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  mine = [rel for rel in _step_files(step_dir) if _owner(rel) % count == index]
  hashed = _hash_all(step_dir, mine)
  record = {"algorithm": "sha256", "process_index": index, "process_count": count,
            "files": {rel: {"bytes": h[0], "sha256": h[1]} for rel, h in hashed.items() if h is not None}}
  path = step_dir / f"{CHECKSUMS_PREFIX}{index}.json"
  tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
  tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
  os.replace(tmp, path)
  return path


def _agree(problem: str) -> str:
  """Across processes: the first problem any of them found, so that all fall back together or none does."""
  if jax.process_count() == 1:
    return problem
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  found = multihost_utils.process_allgather(np.asarray(bool(problem), np.int32))
  if not np.asarray(found).any():
    return ""
  return problem or f"checksum mismatch found by process {int(np.argmax(np.asarray(found)))}"


def verify_step(step_dir: str | os.PathLike) -> bool:
  """Checks the files of a saved step against its recorded checksums; every process checks its share.

  Returns False when the step has no record (it is then unverified), True when every recorded file matches, and
  raises ChecksumError naming the first file that does not.
  """
  step_dir = Path(step_dir)
  records = sorted(step_dir.glob(f"{CHECKSUMS_PREFIX}*.json"))
  expected: dict[str, dict] = {}
  problem, saved_by = "", 0
  for path in records:
    try:
      record = json.loads(path.read_text())
      expected.update(record["files"])
      saved_by = max(saved_by, int(record["process_count"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
      problem = problem or f"{path} is damaged ({type(e).__name__})"
  index, count = jax.process_index(), jax.process_count()
  share = sorted(expected)[index::count]
  if not problem:
    actual = _hash_all(step_dir, share)
    bad = [rel for rel in share
           if actual[rel] is None or actual[rel] != (expected[rel]["bytes"], expected[rel]["sha256"])]
    if bad:
      rel = bad[0]
      what = ("is missing" if actual[rel] is None else
              f"has {actual[rel][0]} bytes instead of {expected[rel]['bytes']}" if actual[rel][0] !=
              expected[rel]["bytes"] else "does not match its recorded SHA-256")
      more = f" (and {len(bad) - 1} more files)" if len(bad) > 1 else ""
      problem = f"checksum mismatch: {step_dir / rel} {what}{more}; it changed after it was saved"
  problem = _agree(problem)
  if problem:
    raise ChecksumError(problem)
  if not records:
    logging.info("Checkpoint %s has no recorded checksums (saved before lmjax recorded them, or stopped before it "
                 "could); restoring it unverified.", step_dir)
    return False
  if len(records) < saved_by:
    logging.warning("Checkpoint %s has checksums from %d of the %d processes that saved it; the files of the others "
                    "are restored unverified.", step_dir, len(records), saved_by)
  return True


class ChecksumRecorder:
  """Records each saved step's checksums on one background thread, once the step is final (its
  commit_success.txt exists: Orbax writes it last, then renames the temporary directory into place)."""

  def __init__(self, saving: Callable[[], bool]):
    self._saving = saving  # whether a save is still being written; once not, a step without its marker never gets it
    self._queue: queue.Queue = queue.Queue()
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def record(self, step_dir: str) -> None:
    if self._thread is None:
      self._thread = threading.Thread(target=self._run, name="lmjax_checksums", daemon=True)
      self._thread.start()
    self._queue.put(step_dir)

  def _run(self) -> None:
    while True:
      step_dir = self._queue.get()
      try:
        if step_dir is None:
          return
        marker = os.path.join(step_dir, "commit_success.txt")
        while not os.path.exists(marker) and self._saving() and not self._stop.is_set():
          time.sleep(0.02)
        if os.path.exists(marker):  # else the save failed, or max_to_keep deleted the step already
          record_checksums(step_dir)
      except FileNotFoundError:
        pass  # the step was deleted meanwhile (max_to_keep)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Could not record the checksums of %s (%s); it will restore unverified.", step_dir,
                        " ".join(f"{type(e).__name__}: {e}".split())[:600])
      finally:
        self._queue.task_done()

  def wait(self) -> None:
    if self._thread is not None:
      self._queue.join()

  def close(self) -> None:
    """Stops the thread; a step that never became final (its save failed) is not waited for."""
    if self._thread is not None:
      self._stop.set()
      self._queue.put(None)
      self._thread.join()
      self._thread = None
