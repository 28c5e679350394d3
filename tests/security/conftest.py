"""The worker fixtures of tests/test_worker.py, for the security suite too."""

from ..test_worker import http, workers

__all__ = ["http", "workers"]
