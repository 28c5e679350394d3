"""Mirror mode: keep an audience equal to a list by sending only what changed (docs/mirror.md)."""
