"""What a run ran on: the lmjax version, its git commit and whether the checkout had uncommitted changes, the JAX
version and the devices. Recorded under "provenance" in every run's config.json and sent to the trackers, so a
result can be traced to the code and the hardware that produced it.

`git` is asked about the checkout that holds the lmjax package being imported (not the current directory); an
installed lmjax, or a machine without git, records the commit as null.
"""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import jax

import lmjax

PACKAGE_DIR = Path(lmjax.__file__).resolve().parent
KEY = "provenance"  # the entry of config.json that holds the record; not a config field


def _git(*args: str) -> str | None:
  try:
    out = subprocess.run(["git", *args], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=10, check=True)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip()


def git_state() -> dict[str, Any]:
  """{'commit': sha or None, 'dirty': True/False or None}: dirty means tracked files differ from the commit."""
  commit = _git("rev-parse", "HEAD")
  if not commit:
    return {"commit": None, "dirty": None}
  status = _git("status", "--porcelain", "--untracked-files=no")
  return {"commit": commit, "dirty": None if status is None else bool(status)}


@functools.lru_cache(maxsize=1)
def _record() -> tuple[tuple[str, Any], ...]:
  record = {"lmjax_version": lmjax.__version__, **{f"git_{k}": v for k, v in git_state().items()},
            "jax_version": jax.__version__, "python_version": platform.python_version(),
            "process_count": jax.process_count(), "command": " ".join(sys.argv)}
  return tuple(record.items())


def run_record(devices: Sequence[jax.Device] | None = None) -> dict[str, Any]:
  """The provenance of this process, on `devices` (the run's mesh; default: every device). Git runs on the first
  call only."""
  devices = list(jax.devices() if devices is None else devices)
  return {**dict(_record()), "platform": devices[0].platform, "device_kind": devices[0].device_kind,
          "device_count": len(devices)}


def with_record(config_dict: dict[str, Any], devices: Sequence[jax.Device] | None = None) -> dict[str, Any]:
  """What config.json holds: the config's fields and, under KEY, this process's provenance on `devices`."""
  return {**config_dict, KEY: run_record(devices)}


def config_fields(saved: dict[str, Any]) -> dict[str, Any]:
  """A config.json without its provenance: the config's fields alone, as base_config() knows them."""
  return {k: v for k, v in saved.items() if k != KEY}
