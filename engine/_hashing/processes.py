"""The hashing worker processes.

loky's processes start a fresh interpreter that never imports the caller's `__main__`:
multiprocessing's spawn runs the caller's script again in every worker, so a plain script
without an `if __name__ == "__main__":` guard would upload once per worker (or break the
pool). A fresh interpreter also keeps the workers clear of the event loop's threads, which
forking would copy.
"""

from __future__ import annotations

import secrets
from concurrent.futures import Executor

from loky import ProcessPoolExecutor  # type: ignore[import-untyped]
from loky.backend.context import get_context  # type: ignore[import-untyped]


def hashing_pool(workers: int) -> Executor:
    # One str hash seed for the pool's workers, drawn afresh for each pool: the inspection's
    # distinct-value sketches compare hash() values made in different workers.
    seed = {"PYTHONHASHSEED": str(1 + secrets.randbelow(2**32 - 1))}
    pool: Executor = ProcessPoolExecutor(workers, context=get_context("loky"), env=seed)
    return pool
