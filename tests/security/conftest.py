"""The worker tests' fixtures, for the attacks on the worker."""

from ..test_worker import http, workers

__all__ = ["http", "workers"]
