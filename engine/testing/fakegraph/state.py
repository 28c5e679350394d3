"""What Meta keeps: audiences, their members, upload sessions and the replace lifecycle."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .config import FakeConfig
from .meta import (
    NORMAL,
    REPLACE_FINISHED,
    REPLACE_IN_PROGRESS,
    REPLACE_NO_FIRST_BATCH,
    REPLACE_RETRY_NEW_SESSION,
    REPLACE_TIMED_OUT,
    REPLACE_WINDOW_S,
    REPLACING,
    replace_error,
)
from .wire import Upload, row_problem, unusable

DEFAULT_AD_ACCOUNT = "act_default"  # for audiences never registered


@dataclass
class FakeSession:
    """Meta's record of one upload session. Read it, don't change it."""

    audience_id: str
    session_id: int
    kind: str  # "add" | "remove" | "replace"
    started: float  # clock
    started_wall: float
    estimated_num_total: int | None = None
    acked: set[int] = field(default_factory=set)  # batch_seq answered "ok"
    counted: set[int] = field(default_factory=set)  # batch_seq counted in num_received
    num_received: int = 0
    num_invalid: int = 0
    ended: bool = False  # last_batch_flag seen (or the replace timed out)
    last_seq: int | None = None
    ended_wall: float | None = None
    timed_out: bool = False
    failed: bool = False  # a replace that answered 1870148: over, the audience unchanged
    pending: set[tuple[Any, ...]] = field(default_factory=set)  # replace rows, not yet live

    def view(self) -> dict[str, str]:
        """Meta's session read: every field a string."""
        if self.ended:
            progress = 100
        elif self.estimated_num_total:
            progress = min(99, self.num_received * 100 // self.estimated_num_total)
        else:
            progress = 0
        return {
            "session_id": str(self.session_id),
            "start_time": str(int(self.started_wall)),
            "end_time": str(int(self.ended_wall)) if self.ended_wall else "0",
            "num_received": str(self.num_received),
            "num_matched": "-1",
            "num_invalid_entries": str(self.num_invalid),
            "progress": str(progress),
            "stage": "processed" if self.ended else "uploading",
        }


@dataclass
class Audience:
    audience_id: str
    ad_account: str
    members: set[tuple[Any, ...]] = field(default_factory=set)
    replace_session: int | None = None  # the replace running now
    busy_until: float | None = None  # settling after a replace's last flag
    # What a read of the audience shows (Meta's field names). An audience never registered
    # or created was only ever uploaded to: its owner and kind are unknown, and reads leave
    # them out.
    known: bool = False
    name: str = ""
    description: str = ""
    subtype: str = "CUSTOM"
    customer_file_source: str | None = "USER_PROVIDED_ONLY"
    is_value_based: bool = False
    flagged: bool = False  # operation_status 471: flagged for integrity
    readable: bool = True  # False: this token may not read it (Meta's "no such object")
    size: int | None = None  # approximate count shown; None: the members counted

    @property
    def status(self) -> str:
        return REPLACING if self.replace_session is not None or self.busy_until else NORMAL


def status_view(status: str) -> dict[str, Any]:
    """Meta's `operation_status` field (200/300 are this fake's codes; Meta documents only
    the descriptions)."""
    return {"code": 200 if status == NORMAL else 300, "description": status}


FLAGGED = {"code": 471, "description": "Audience flagged for integrity restrictions"}
# Fields a read may ask for, and each one's value.
AUDIENCE_FIELDS = (
    "id",
    "name",
    "description",
    "subtype",
    "customer_file_source",
    "operation_status",
    "approximate_count_lower_bound",
    "approximate_count_upper_bound",
    "is_value_based",
    "account_id",
)


def audience_view(aud: Audience, fields: list[str]) -> dict[str, Any]:
    """A read of the audience with the fields asked for (Meta answers only those, plus id)."""
    size = len(aud.members) if aud.size is None else aud.size
    values: dict[str, Any] = {
        "id": aud.audience_id,
        "operation_status": FLAGGED if aud.flagged else status_view(aud.status),
        "approximate_count_lower_bound": size,
        "approximate_count_upper_bound": size,
    }
    if aud.known:
        values.update(
            name=aud.name,
            description=aud.description,
            subtype=aud.subtype,
            is_value_based=aud.is_value_based,
            account_id=aud.ad_account.removeprefix("act_"),
        )
        if aud.customer_file_source is not None:
            values["customer_file_source"] = aud.customer_file_source
    return {f: values[f] for f in ["id", *fields] if f in values}


class AudienceState:
    """Audiences and sessions, changed by applied uploads and by time (read through
    `config.clock`, lazily, whenever an audience is looked at)."""

    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.audiences: dict[str, Audience] = {}
        self.sessions: dict[tuple[str, int], FakeSession] = {}
        self.created = 0
        self.terms_not_accepted: set[str] = set()  # ad accounts that cannot create audiences

    # -- reads -------------------------------------------------------------------------

    def find(self, audience_id: str) -> Audience | None:
        """The audience, brought up to date, or None if it was never seen."""
        aud = self.audiences.get(audience_id)
        if aud is not None:
            self._refresh(aud)
        return aud

    def members(self, audience_id: str) -> set[tuple[Any, ...]]:
        aud = self.find(audience_id)
        return set() if aud is None else set(aud.members)

    def operation_status(self, audience_id: str) -> str:
        aud = self.find(audience_id)
        return NORMAL if aud is None else aud.status

    def session(self, audience_id: str, session_id: int) -> FakeSession | None:
        self.find(audience_id)
        return self.sessions.get((audience_id, session_id))

    def sessions_of(self, audience_id: str, session_id: int | None) -> list[FakeSession]:
        """The audience's sessions (only `session_id`'s when given), oldest first."""
        self.find(audience_id)
        return [
            s
            for (aid, sid), s in self.sessions.items()
            if aid == audience_id and (session_id is None or sid == session_id)
        ]

    # -- changes -----------------------------------------------------------------------

    def register(self, audience_id: str, ad_account: str, **shown: Any) -> Audience:
        """Create (or change) a customer-file audience owned by `ad_account`; `shown` sets
        what reads show (Audience's fields: subtype, is_value_based, flagged...)."""
        aud = self.audiences.get(audience_id)
        if aud is None:
            aud = self.audiences[audience_id] = Audience(audience_id, ad_account)
        aud.ad_account = ad_account
        aud.known = True
        for name, value in shown.items():
            if name not in Audience.__dataclass_fields__ or name in ("audience_id", "members"):
                raise ValueError(f"unknown audience field {name!r}")
            setattr(aud, name, value)
        return aud

    def create(self, ad_account: str, **shown: Any) -> Audience:
        """A new audience with a fresh id, as `POST /act_{id}/customaudiences` makes one."""
        self.created += 1
        audience_id = str(23800000000000000 + self.created)
        return self.register(audience_id, ad_account, **shown)

    def of_account(self, ad_account: str) -> list[Audience]:
        return [
            a
            for a in self.audiences.values()
            if a.known and a.ad_account == ad_account and self.find(a.audience_id)
        ]

    def audience(self, audience_id: str) -> Audience:
        """The audience, created under the default ad account on first use."""
        aud = self.audiences.get(audience_id)
        if aud is None:
            aud = self.audiences[audience_id] = Audience(audience_id, DEFAULT_AD_ACCOUNT)
        return aud

    def apply(self, up: Upload, aud: Audience) -> tuple[dict[str, Any], FakeSession]:
        """Validate the rows, change the audience or the replace, return the reply body."""
        assert up.session_id is not None and up.batch_seq is not None
        self._refresh(aud)
        sess = self.sessions.get((aud.audience_id, up.session_id))
        if up.mode == "replace":
            sess = self._replace_session(aud, sess, up)
        else:
            if aud.status != NORMAL:
                raise replace_error(REPLACE_IN_PROGRESS)
            if sess is None or sess.kind != up.mode:
                sess = self._new_session(up)
        valid: list[tuple[Any, ...]] = []
        samples: dict[str, str] = {}
        invalid = 0
        prefix = self.config.unusable_prefix
        for row in up.rows:  # empty in lean mode
            problem = row_problem(up.keys, row) or unusable(row, prefix)
            if problem is None:
                valid.append(row)
            else:
                invalid += 1
                if len(samples) < 100:
                    samples[problem[0]] = problem[1]
        if up.batch_seq not in sess.counted:  # a re-sent batch counts once
            sess.counted.add(up.batch_seq)
            sess.num_received += up.n_rows
            sess.num_invalid += invalid
        if up.mode == "add":
            aud.members.update(valid)
        elif up.mode == "remove":
            aud.members.difference_update(valid)
        else:
            sess.pending.update(valid)
        if up.last:
            sess.ended = True
            sess.last_seq = up.batch_seq
            sess.ended_wall = time.time()
            if up.mode == "replace":
                self._finish_replace(aud, sess)
        body = {
            "audience_id": aud.audience_id,
            "session_id": str(up.session_id),
            "num_received": sess.num_received,
            "num_invalid_entries": invalid,
            "invalid_entry_samples": samples,
        }
        return body, sess

    def fail_replace(self, up: Upload) -> None:
        """The replace this request belongs to fails (1870148): it takes no more batches
        and the audience keeps its members."""
        aud = self.audiences.get(up.audience_id)
        running = aud.replace_session if aud is not None else None
        if aud is None or up.mode != "replace" or running is None or running != up.session_id:
            return
        sess = self.sessions[(aud.audience_id, running)]
        sess.failed = True
        sess.pending = set()
        aud.replace_session = None

    def _new_session(self, up: Upload) -> FakeSession:
        assert up.session_id is not None
        sess = FakeSession(
            audience_id=up.audience_id,
            session_id=up.session_id,
            kind=up.mode,
            started=self.config.clock(),
            started_wall=time.time(),
            estimated_num_total=up.estimated,
        )
        self.sessions[(up.audience_id, up.session_id)] = sess
        return sess

    def _replace_session(self, aud: Audience, sess: FakeSession | None, up: Upload) -> FakeSession:
        """The replace session this batch belongs to, or the 2650 error Meta answers."""
        ours = sess is not None and sess.kind == "replace"
        if sess is not None and ours:
            if sess.failed and up.batch_seq != 1:
                raise replace_error(REPLACE_RETRY_NEW_SESSION)
            if sess.timed_out:
                raise replace_error(REPLACE_TIMED_OUT)
            if sess.ended:
                raise replace_error(REPLACE_FINISHED)
        if up.batch_seq == 1:
            # Batch 1 starts a replace, even again for a running session (Meta's rule).
            if aud.status != NORMAL and aud.replace_session != up.session_id:
                raise replace_error(REPLACE_IN_PROGRESS)
            new = self._new_session(up)
            aud.replace_session = new.session_id
            return new
        if sess is None or not ours:
            raise replace_error(REPLACE_NO_FIRST_BATCH)
        return sess

    def _finish_replace(self, aud: Audience, sess: FakeSession) -> None:
        aud.members = sess.pending
        sess.pending = set()
        aud.replace_session = None
        if self.config.replace_settle_s > 0:
            aud.busy_until = self.config.clock() + self.config.replace_settle_s

    def _refresh(self, aud: Audience) -> None:
        """Time-driven changes, applied lazily: replace time-outs and settling."""
        now = self.config.clock()
        if aud.replace_session is not None:
            sess = self.sessions.get((aud.audience_id, aud.replace_session))
            window = REPLACE_WINDOW_S * self.config.time_scale
            if sess is not None and now - sess.started >= window:
                # Meta: "replaced with what you've uploaded so far".
                sess.timed_out = sess.ended = True
                sess.ended_wall = time.time()
                self._finish_replace(aud, sess)
        if aud.busy_until is not None and now >= aud.busy_until:
            aud.busy_until = None
