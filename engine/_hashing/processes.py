"""The hashing worker processes.

loky's processes start a fresh interpreter that never imports the caller's `__main__`:
multiprocessing's spawn runs the caller's script again in every worker, so a plain script
without an `if __name__ == "__main__":` guard would upload once per worker (or break the
pool). A fresh interpreter also keeps the workers clear of the event loop's threads, which
forking would copy.
"""

from __future__ import annotations

from concurrent.futures import Executor

from loky import ProcessPoolExecutor  # type: ignore[import-untyped]
from loky.backend.context import get_context  # type: ignore[import-untyped]


def hashing_pool(workers: int) -> Executor:
    pool: Executor = ProcessPoolExecutor(workers, context=get_context("loky"))
    return pool
