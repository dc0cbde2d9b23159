"""The persistent compilation cache: compiled programs kept on disk, so a rerun (a resumed run, the same config
in a new workdir, a sweep's next point of the same shape) loads them instead of compiling again.

train.compile_cache='auto' (the default) keeps them in the user's cache directory, $XDG_CACHE_HOME/lmjax/xla or
~/.cache/lmjax/xla, unless the LMJAX_COMPILE_CACHE environment variable names another directory ('' or 'off'
disables it); '' or 'off' in the config disables it; any other value is the directory. JAX keys each entry by the
program, the compile options, XLA flags and the jax/jaxlib version, so a stale entry is never used.

JAX trusts the cache's contents: do not point it at a directory that others can write.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
from absl import logging

ENV = "LMJAX_COMPILE_CACHE"
_OFF = ("", "off", "none")
MIN_COMPILE_SECONDS = 0.1  # programs that compile faster are not worth a file (JAX's own default: 1 s)


def resolve(setting: str) -> Path | None:
  """The cache directory train.compile_cache=`setting` names, or None when caching is off."""
  if setting == "auto":
    if ENV in os.environ:
      setting = os.environ[ENV]
    else:
      return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lmjax" / "xla"
  if setting.strip().lower() in _OFF:
    return None
  return Path(setting).expanduser()


def enable(setting: str) -> Path | None:
  """Points JAX's persistent cache at the directory `setting` resolves to (or turns it off); returns it."""
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=import-outside-toplevel
  path = resolve(setting)
  current = jax.config.jax_compilation_cache_dir
  wanted = None if path is None else str(path.absolute())
  if wanted == current:
    return path
  if path is not None:
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  jax.config.update("jax_compilation_cache_dir", wanted)
  compilation_cache.reset_cache()  # JAX opens the cache once per process: reopen it at the new place
  logging.info("Compilation cache: %s.", wanted or "off (train.compile_cache)")
  return path
