"""`python -m engine status`: what a job's checkpoint says, without touching the API."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from ._errors import InputError
from ._input.remote import is_url, shown
from ._resume.checkpoint import Checkpoint, JobRecord, default_path


def default_checkpoint(options: dict[str, Any]) -> str:
    """Where a job keeps its progress unless told: named by its input, audience, account, mode."""
    source = options["input"]
    if is_url(source):
        where = shown(source)  # no credentials, and a URL signed anew finds the same one
    else:
        where = source if source == "-" else os.path.abspath(source)
    audience, account = options["audience_id"], options["ad_account"]
    job = f"{where}|{audience}|{account}|{options.get('mode', 'add')}"
    return str(default_path(job))


def job_status(path: str) -> dict[str, Any]:
    """The job a checkpoint holds: its state, sessions and counts. InputError when none."""
    if not os.path.exists(path):
        raise InputError(f"no checkpoint at {path}")
    record = _load(Path(path))
    if record is None:
        raise InputError(f"{path} holds no job")
    received: dict[int, int] = {}
    for b in record.batches.values():
        received[b.session_id] = max(received.get(b.session_id, 0), b.num_received or 0)
    return {
        "job": orjson.loads(record.identity),
        "state": record.state,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "sessions": [
            {
                "session_id": s.session_id,
                "mode": s.mode,
                "started_at": s.started_at,
                "closed": s.closed,
                "batches_acknowledged": sum(
                    1 for b in record.batches.values() if b.session_id == s.session_id
                ),
            }
            for s in record.sessions
        ],
        "batches_sent": len(record.batches),
        "rows_sent": sum(b.rows for b in record.batches.values()),
        "num_received": sum(received.values()),
        "retries": record.retries,
        "throttled": record.throttled,
    }


def default_checkpoints() -> list[dict[str, Any]]:
    """The default checkpoints, newest first: each one's path, job, state and last update."""
    folder = default_path("").parent
    paths = sorted(folder.glob("*.sqlite"), key=lambda p: p.stat().st_mtime, reverse=True)
    listed = []
    for path in paths if folder.is_dir() else []:
        if (record := _load(path)) is not None:
            job = orjson.loads(record.identity)
            state, updated = record.state, record.updated_at
            listed.append(
                {"checkpoint": str(path), "job": job, "state": state, "updated_at": updated}
            )
    return listed


def _load(path: Path) -> JobRecord | None:
    checkpoint = Checkpoint(str(path))
    try:
        return checkpoint.load()
    finally:
        checkpoint.close()
