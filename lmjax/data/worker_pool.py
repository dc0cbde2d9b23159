"""An ordered parallel map over worker processes, for tokenizing many chunks of documents.

Workers are spawned (never forked: the parent may run JAX's threads), each receives the function once, and at most
`2 * num_workers` chunks are in flight, so memory stays bounded however long the input is. Results come back in
input order, so the output is the same as a plain loop's.
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import pickle
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_FUNCTION: Any = None


def _start_worker(function_bytes: bytes) -> None:
  global _FUNCTION  # pylint: disable=global-statement
  from lmjax.data import tokenizers  # pylint: disable=import-outside-toplevel
  tokenizers.ENCODE_THREADS = 1  # the processes are the parallelism; a native encoder's own threads would compete
  _FUNCTION = pickle.loads(function_bytes)


def _call(item: Any) -> Any:
  return _FUNCTION(item)


def ordered_map(function: Callable[[T], R], items: Iterable[T], num_workers: int) -> Iterator[R]:
  """function(item) for each item, in order; in `num_workers` processes (0: in this one)."""
  if num_workers <= 0:
    yield from map(function, items)
    return
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context, initializer=_start_worker,
                                              initargs=(pickle.dumps(function),)) as pool:
    pending: collections.deque[concurrent.futures.Future] = collections.deque()
    try:
      for item in items:
        pending.append(pool.submit(_call, item))
        if len(pending) >= 2 * num_workers:
          yield pending.popleft().result()
      while pending:
        yield pending.popleft().result()
    finally:
      for future in pending:
        future.cancel()
