"""The fleet: several worker replicas sharing jobs, checkpoints, locks and quota through Redis."""
