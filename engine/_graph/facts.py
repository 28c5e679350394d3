"""Meta's facts the engine is built on, in one place: the limits of one upload request and
session, and the error codes of the Marketing API grouped by how the engine answers them.
docs/protocol.md says what the engine does with each.
"""

from __future__ import annotations

MAX_BATCH_ROWS = 10_000  # rows in one request's payload, at most
SESSION_WINDOW_S = 90 * 60  # a session, and a replace, must end this long after its batch 1

# Codes that throttle the ad account (80003 is the Custom Audience quota; the others are the
# app, account and platform limits): the whole account pauses.
THROTTLE_CODES = frozenset({4, 17, 32, 341, 613, 80000, 80003, 80004, 80014})
# Temporary failures on Meta's side: the request is tried again.
TRANSIENT_CODES = frozenset({1, 2})
# Codes no retry fixes: the job stops. 200-299 (permissions) are permanent too.
PERMANENT_CODES = frozenset({100, 105, 190, 194, 368, 2635})

# Every replace error is code 2650; the subcode says which.
REPLACE_ERROR_CODE = 2650
REPLACE_IN_PROGRESS = 1870145  # another replace is running: wait, then retry
REPLACE_RETRY_NEW_SESSION = 1870148  # start the replace again in a new session
REPLACE_TIMED_OUT = 1870158  # the window passed: the rest goes in by add
REPLACE_FINISHED = 1870159  # the replace already ended: the rest goes in by add
REPLACE_NO_FIRST_BATCH = 1870147  # Meta saw no batch 1: the job stops
REPLACE_TOO_LARGE = 1870144  # no replace for audiences of 100 million or more

# An audience smaller than this many matched people is too small to deliver ads to or to seed
# a lookalike.
MIN_USEFUL_AUDIENCE = 100
CUSTOMER_FILE_SUBTYPE = "CUSTOM"
FLAGGED_STATUS = 471  # operation_status code of an audience flagged for integrity: no uploads
REPLACING_STATUS = "replace_in_progress"
