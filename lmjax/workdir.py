"""The workdir: a usable directory, the record of what ran there (config.json), and no trace of a failed start.

config.json is the record of a run, so a restart must not silently continue a different model (`check_config`),
and the record changes only once a run has really started, its state restored or initialized (`record_config`,
atomic). A first start that fails before that (bad data, a mesh that does not fit, a stop signal) leaves the
workdir as it found it (`FreshStart`).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import ml_collections
from absl import logging

from lmjax import failures, provenance
from lmjax.config import ConfigError, base_config, flatten

CONFIG_FILE = "config.json"


class WorkdirError(OSError):
  """--workdir cannot hold a run: it is a file, lies under one, or cannot be written; the message says which."""


def _process_index() -> int:
  import jax  # pylint: disable=import-outside-toplevel
  return jax.process_index()

# What fixes the shapes of the saved state and the meaning of token ids: changing any of these under an existing
# checkpoint would either fail to restore or continue a different model.
IDENTITY_SECTIONS = ("model", "tokenizer")
IDENTITY_FIELDS = (("data", "seq_len"), ("data", "source"), ("data", "paths"), ("data", "tfds_name"),
                   ("data", "hf_name"), ("data", "hf_data_files"), ("data", "hf_streaming"), ("data", "mixture"))
# Model fields that change how the step computes the same function, never the parameters: a resumed run may switch.
COMPUTE_FIELDS = ("model.attention_impl",)
IDENTITY_PREFIXES = ("finetune.lora.",)  # LoRA adapters are part of the saved parameters


def _is_identity(field: str) -> bool:
  section, _, name = field.partition(".")
  if field in COMPUTE_FIELDS:
    return False
  return section in IDENTITY_SECTIONS or (section, name) in IDENTITY_FIELDS or field.startswith(IDENTITY_PREFIXES)


def changed_fields(saved: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """Fields whose value differs. A field missing from the saved record (added to lmjax after that run started)
  counts as its default, so upgrading lmjax does not make old workdirs look like a different model."""
  defaults = flatten(base_config().to_dict())
  a, b = flatten(provenance.config_fields(saved)), flatten(new)
  a = {**{k: v for k, v in defaults.items() if k not in a}, **a}
  return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _saved_config(path: Path) -> dict | None:
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ConfigError(f"{path} is not valid JSON ({e}); restore it or start in a new --workdir.") from None


def check_config(config: ml_collections.ConfigDict, workdir: Path, has_checkpoint: bool) -> None:
  """Refuses to resume a checkpoint written under a different model, tokenizer or data identity. Writes nothing.

  Other changes (learning rate, steps, logging) are allowed with a warning; `record_config` records them once the
  run has started.
  """
  path = Path(workdir) / CONFIG_FILE
  saved = _saved_config(path)
  if saved is None:
    return
  changes = changed_fields(saved, config.to_dict())
  identity = {k: v for k, v in changes.items() if _is_identity(k) and k != "train.allow_config_change"}
  if has_checkpoint and identity and not config.train.allow_config_change:
    listed = ", ".join(f"{k}: {old!r} -> {value!r}" for k, (old, value) in identity.items())
    raise ConfigError(f"--workdir={workdir} holds a run with a different config ({listed}); use a new --workdir, "
                      f"or pass --config.train.allow_config_change=True to resume it anyway.")
  if changes:
    listed = ", ".join(f"{k}: {old!r} -> {value!r}" for k, (old, value) in changes.items())
    logging.warning("Config differs from the saved %s: %s.", path, listed)


def write_atomically(path: Path, text: str) -> None:
  """The file holds the old text or the new one, whatever happens meanwhile (a kill, a full disk)."""
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    if e.filename is None:  # a failed write() names no file; say which one it was
      raise OSError(e.errno, e.strerror, os.fspath(path)) from e
    raise
  finally:
    if tmp.exists():
      tmp.unlink()


def record_config(config: ml_collections.ConfigDict, workdir: Path, devices: Sequence[jax.Device] | None = None
                  ) -> None:
  """Writes config.json (process 0), once the run's state has been restored or initialized: the record of what
  runs, with its provenance on `devices`, the run's mesh (lmjax/provenance.py). A different previous record is kept as config.<unix time>.json,
  so the record of what ran is never lost; a restart with the same config keeps the record of the first start."""
  if _process_index() != 0:
    return
  workdir = Path(workdir)
  path = workdir / CONFIG_FILE
  text = json.dumps(provenance.with_record(config.to_dict(), devices), indent=2, sort_keys=True) + "\n"
  if path.exists():
    old = path.read_text()
    try:
      if provenance.config_fields(json.loads(old)) == json.loads(json.dumps(config.to_dict())):
        return
    except json.JSONDecodeError:
      pass  # kept below as it is
    stamp, n = int(time.time()), 0
    kept = workdir / f"config.{stamp}.json"
    while kept.exists():
      n += 1
      kept = workdir / f"config.{stamp}-{n}.json"
    write_atomically(kept, old)
  write_atomically(path, text)


def check_and_record_config(config: ml_collections.ConfigDict, workdir: Path, has_checkpoint: bool) -> None:
  """check_config, then record_config: for tools that create a workdir in one go (lmjax.hf.import_checkpoint)."""
  check_config(config, workdir, has_checkpoint)
  record_config(config, workdir)


# --- a usable workdir, and no trace of a failed first start ---------------------------------------------------

def _unusable(workdir: Path, error: OSError) -> Exception:
  if failures.is_out_of_space(error):
    return failures.DiskFullError(failures.disk_full_message(error, workdir, f"creating --workdir={workdir}"))
  code = failures.os_error_code(error)
  if code == errno.EROFS:
    why = "is on a read-only filesystem"
  elif code in (errno.EACCES, errno.EPERM):
    why = f"cannot be written: no permission ({error.strerror})"
  else:
    why = f"cannot be used ({type(error).__name__}: {error.strerror or error})"
  return WorkdirError(f"--workdir={workdir} {why}; give a --workdir on a writable filesystem")


def prepare_workdir(workdir: str | os.PathLike, create: bool = True) -> Path:
  """Creates --workdir (with create) and checks that this process can write there, raising WorkdirError (or
  DiskFullError) in one line otherwise. Nothing but the directory is left behind."""
  workdir = Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise WorkdirError(f"--workdir={workdir} is a file, not a directory; give a directory (it is created if missing)")
  for parent in workdir.absolute().parents:
    if parent.exists():
      if not parent.is_dir():
        raise WorkdirError(f"--workdir={workdir} lies under {parent}, which is a file, not a directory; give "
                           f"another --workdir")
      break
  try:
    if create:
      workdir.mkdir(parents=True, exist_ok=True)
    elif not workdir.is_dir():
      raise WorkdirError(f"--workdir={workdir} is not visible on host {socket.gethostname()}: a multi-host run "
                         f"needs one directory that every host sees at the same path (NFS, a mounted bucket)")
    probe = workdir / f".write_test.{socket.gethostname()}.{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
  except WorkdirError:
    raise
  except OSError as e:
    raise _unusable(workdir, e) from None
  return workdir


def _is_fresh(workdir: Path) -> bool:
  checkpoints = workdir / "checkpoints"
  return not (workdir / CONFIG_FILE).exists() and not (
      checkpoints.is_dir() and any(name.isdigit() for name in os.listdir(checkpoints)))


class FreshStart:
  """Context manager around a start: if the workdir held no run and the start fails before the run began (before
  config.json was recorded), everything the start created in it is removed again, and the workdir itself (and its
  parents) when the start created them. What was there before is never touched.

  It acts only once `arm()` was called, right after this process took the workdir's lock: what other runs write is
  never taken for this start's. Only the process that removes (process 0) arms it.
  """

  def __init__(self, workdir: str | os.PathLike):
    self.workdir = Path(workdir)
    chain = [self.workdir.absolute(), *self.workdir.absolute().parents]
    self.created = [p for p in chain if not p.exists()]  # innermost first
    self.armed = False
    self.before: set[str] = set()

  def arm(self, own: tuple[str, ...] = ()) -> None:
    """`own`: names this start created in the workdir before arming (its lock file), removed with the rest."""
    self.armed = _is_fresh(self.workdir)
    self.before = set(os.listdir(self.workdir)) - set(own)

  def __enter__(self) -> "FreshStart":
    return self

  def __exit__(self, exc_type, exc, tb) -> bool:
    if exc_type is None or not self.armed or (self.workdir / CONFIG_FILE).exists():
      return False
    try:
      new = sorted(set(os.listdir(self.workdir)) - self.before)
      for name in new:
        path = self.workdir / name
        if path.is_dir() and not path.is_symlink():
          shutil.rmtree(path, ignore_errors=True)
        else:
          path.unlink(missing_ok=True)
      for path in self.created:  # innermost first, as long as they are empty
        path.rmdir()
    except OSError as e:  # cleaning up must not hide the failure itself
      if not isinstance(e, OSError) or e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
        logging.warning("Could not remove what the failed start wrote in %s (%s).", self.workdir, e)
    return False
