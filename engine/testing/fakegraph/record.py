"""What the fake saw: the request log and the session invariants each request broke
(docs/protocol.md), judged against the state the request met on arrival."""

from __future__ import annotations

from dataclasses import dataclass

from .meta import MAX_ROWS, NORMAL
from .state import DEFAULT_AD_ACCOUNT, AudienceState
from .wire import Upload


@dataclass
class LogEntry:
    """One upload request as the fake saw it (appended on arrival, completed on answer)."""

    seq: int  # arrival order, from 1
    t: float  # config.clock() on arrival
    mode: str  # "add" | "remove" | "replace"
    audience_id: str
    ad_account: str
    session_id: int | None
    batch_seq: int | None
    last_batch_flag: bool
    rows: int
    # "ok" | "error:<code>/<subcode>" | "dropped_before" | "dropped_after" | "throttled"
    # | "client_gone" (answered after the client had hung up: applied, never acknowledged)
    # | "pending" (still being answered)
    outcome: str = "pending"
    applied: bool = False
    acked_after: int = 0  # batches of this session acknowledged before this one arrived


class Record:
    """The log and the violations, for tests to read."""

    def __init__(self, state: AudienceState) -> None:
        self.state = state
        self.reset()

    def reset(self) -> None:
        self.log: list[LogEntry] = []
        self.violations: list[str] = []
        self._arrived: dict[tuple[str, int], set[int]] = {}  # batch_seq seen, for gap checks

    def arrive(self, up: Upload) -> LogEntry:
        """Log the request and check the session invariants against the state it met."""
        aud = self.state.find(up.audience_id)  # a replace that timed out is judged as over
        entry = LogEntry(
            seq=len(self.log) + 1,
            t=self.state.config.clock(),
            mode=up.mode,
            audience_id=up.audience_id,
            ad_account=aud.ad_account if aud else DEFAULT_AD_ACCOUNT,
            session_id=up.session_id,
            batch_seq=up.batch_seq,
            last_batch_flag=up.last,
            rows=up.n_rows,
        )
        self.log.append(entry)
        if up.n_rows > MAX_ROWS:
            self._violation(up, f"{up.n_rows} rows in one request (at most {MAX_ROWS})")
        if up.session_id is None or up.batch_seq is None:
            return entry
        key = (up.audience_id, up.session_id)
        sess = self.state.sessions.get(key)
        if sess is not None and sess.kind != up.mode:
            self._violation(up, f"session {up.session_id} reused for {up.mode} (was {sess.kind})")
            sess = None  # it will start a new session: judge it as one
            self._arrived.pop(key, None)
        acked = sess.acked if sess else set()
        entry.acked_after = len(acked)
        n = up.batch_seq
        if sess is not None and sess.timed_out:
            self._violation(up, "batch after the replace passed its 90 minutes")
        elif sess is not None and sess.ended and n != sess.last_seq:
            self._violation(up, "batch after the last-flagged batch")
        if up.mode != "replace" and aud is not None and aud.status != NORMAL:
            # Meta: "Don't add or remove users via /users during an ongoing replace".
            self._violation(up, "/users write while the audience is replace_in_progress")
        if up.mode == "replace" and n == 1 and sess is not None and sess.kind == "replace":
            self._violation(up, "batch_seq 1 sent again: Meta starts a new replace")
        elif n in acked:
            self._violation(up, "batch re-sent after it was acknowledged")
        # Meta's rule is "after the first batch": one it applied counts even when its
        # reply was lost and the client learned of it from the sessions endpoint.
        if up.mode == "replace" and n != 1 and (sess is None or 1 not in sess.counted):
            self._violation(up, "replace batch sent before batch 1 was received")
        arrived = self._arrived.setdefault(key, set())
        if up.last:
            gaps = [i for i in range(1, n) if i not in arrived]
            # A replace's batch 1 may be known to the client through the sessions endpoint.
            known = acked | ({1} if sess is not None and 1 in sess.counted else set())
            unacked = [i for i in range(1, n) if i in arrived and i not in known]
            if gaps:
                self._violation(up, f"last flag with batch_seq never sent: {_few(gaps)}")
            if unacked:
                self._violation(up, f"last flag before batches were acknowledged: {_few(unacked)}")
        arrived.add(n)
        return entry

    def _violation(self, up: Upload, what: str) -> None:
        where = f"{up.mode} audience {up.audience_id} session {up.session_id} batch {up.batch_seq}"
        self.violations.append(f"{where}: {what}")


def _few(items: list[int]) -> str:
    return ", ".join(map(str, items[:5])) + (" ..." if len(items) > 5 else "")
