"""Pacing an ad account's calls to its quota: the controller and its state."""

from .controller import QuotaConfig, QuotaController, QuotaState, Reading, Usage

__all__ = ["QuotaConfig", "QuotaController", "QuotaState", "Reading", "Usage"]
