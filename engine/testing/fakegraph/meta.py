"""Meta's rules as this fake holds them: limits, keys, error codes and texts.

Written from Meta's endpoint pages and kept apart from the engine's own tables on purpose:
the tests must not grade the engine by its own beliefs. Nothing here is imported from the
engine; the quotas' errors come from the fake's throttle models (engine/testing/throttle.py).
"""

from __future__ import annotations

from typing import Any

from ..throttle import ERRORS as THROTTLE_ERRORS

MAX_ROWS = 10_000
REPLACE_WINDOW_S = 90 * 60  # Meta's replace window, before `time_scale`
NORMAL = "Normal"
REPLACING = "replace_in_progress"

# Single-key schemas and the multi-key column each one stands for (the users edge lists the
# first three; Meta's guide also uploads with a bare "EXTERN_ID" schema).
SINGLE_KEY_SCHEMAS = {
    "EMAIL_SHA256": "EMAIL",
    "PHONE_SHA256": "PHONE",
    "MOBILE_ADVERTISER_ID": "MADID",
    "EXTERN_ID": "EXTERN_ID",
}
# The multi-key types the users and usersreplace edges list, and the value column of
# value-based audiences.
MULTI_KEYS = frozenset(
    {
        "EXTERN_ID", "EMAIL", "PHONE", "GEN", "DOBY", "DOBM", "DOBD", "LN", "FN", "FI", "CT",
        "ST", "ZIP", "MADID", "COUNTRY", "LOOKALIKE_VALUE",
    }
)  # fmt: skip

# Every usersreplace error comes as code 2650, told apart by its subcode.
REPLACE_ERROR_CODE = 2650
REPLACE_IN_PROGRESS = 1870145
REPLACE_NO_FIRST_BATCH = 1870147
REPLACE_RETRY_NEW_SESSION = 1870148
REPLACE_TIMED_OUT = 1870158
REPLACE_FINISHED = 1870159
REPLACE_TOO_LARGE = 1870144
# Meta's error bodies carry `is_transient` without saying when it is set. This fake sets it
# for the codes Meta's error pages answer with "wait and retry": the unknown and service
# errors (1, 2) and the rate limits (application, user, page, custom and ad-account ones).
TRANSIENT_CODES = frozenset({1, 2, 4, 17, 32, 341, 613, 80000, 80003, 80004, 80014})

DEFAULT_MESSAGES = {
    1: "An unknown error occurred",
    2: "Service temporarily unavailable",
    100: "(#100) Invalid parameter",
    190: "Invalid OAuth access token - Cannot parse access token",
    194: "(#194) Missing at least one required parameter",
    200: "(#200) Permissions error",
    368: "The action attempted has been deemed abusive or is otherwise disallowed",
    2635: "(#2635) You are calling a deprecated version of the Ads API.",
    2650: "(#2650) Failed to update the custom audience",
    **{error.code: error.message for error in THROTTLE_ERRORS.values()},
}

# (error_user_title, error_user_msg) of each replace subcode.
REPLACE_TEXTS = {
    REPLACE_IN_PROGRESS: (
        "Audience Update In Progress",
        "This audience is being updated. Wait until its availability is Normal, then try again.",
    ),
    REPLACE_NO_FIRST_BATCH: (
        "Invalid Upload Batch for Replace",
        "The first batch of this replace session was not detected: batch_seq must start at 1.",
    ),
    REPLACE_TIMED_OUT: (
        "Replace Session Timed Out",
        "The replace session passed its 90-minute limit. The audience is replaced with what "
        "you uploaded so far; add the rest with the add operation once the replace finishes.",
    ),
    REPLACE_FINISHED: (
        "Replace Session Finished",
        "A batch with last_batch_flag true was already received for this session. Add the "
        "rest with the add operation once the replace finishes.",
    ),
    REPLACE_RETRY_NEW_SESSION: (
        "Something Went Wrong",
        "Your customer list custom audience wasn't fully updated. Consider trying again.",
    ),
    REPLACE_TOO_LARGE: (
        "DFCA Size Not Supported For Replace",
        "Replace is not supported for audiences of 100 million or more. Use add or remove.",
    ),
}


class GraphError(Exception):
    """A Meta-shaped error answer; raised inside request handling, turned into a reply."""

    def __init__(
        self,
        code: int,
        message: str | None = None,
        *,
        subcode: int | None = None,
        http_status: int = 400,
        user_title: str | None = None,
        user_msg: str | None = None,
        is_transient: bool | None = None,
        outcome: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message or DEFAULT_MESSAGES.get(code, f"(#{code}) Error")
        self.subcode = subcode
        self.http_status = http_status
        # A replace subcode of 2650 comes with Meta's title and text unless given.
        if code == REPLACE_ERROR_CODE and subcode in REPLACE_TEXTS:
            title, text = REPLACE_TEXTS[subcode]
            user_title, user_msg = user_title or title, user_msg or text
        self.user_title = user_title
        self.user_msg = user_msg
        if is_transient is None:
            is_transient = code in TRANSIENT_CODES
        self.is_transient = is_transient
        self.outcome = outcome or f"error:{code}" + (f"/{subcode}" if subcode is not None else "")

    def body(self, trace: str) -> dict[str, Any]:
        err: dict[str, Any] = {"message": self.message, "type": "OAuthException", "code": self.code}
        if self.subcode is not None:
            err["error_subcode"] = self.subcode
        if self.user_title is not None:
            err["error_user_title"] = self.user_title
        if self.user_msg is not None:
            err["error_user_msg"] = self.user_msg
        err["is_transient"] = self.is_transient
        err["fbtrace_id"] = trace
        return {"error": err}


def replace_error(subcode: int) -> GraphError:
    """The 2650 error Meta answers a replace with, by subcode."""
    return GraphError(REPLACE_ERROR_CODE, subcode=subcode)


def bad_parameter(message: str) -> GraphError:
    """Code 100: a parameter Meta cannot accept."""
    return GraphError(100, f"(#100) {message}")


TERMS_NOT_ACCEPTED = 1870090


def no_such_object(object_id: str) -> GraphError:
    """Meta's answer to a read of an object that is not there or not the token's to read."""
    return GraphError(
        100,
        f"Unsupported get request. Object with ID '{object_id}' does not exist, cannot be "
        "loaded due to missing permissions, or does not support this operation.",
        subcode=33,
    )


def terms_not_accepted() -> GraphError:
    """Code 200: the ad account's business has not accepted the Custom Audience terms."""
    return GraphError(
        200,
        "(#200) Custom Audience Terms Not Accepted",
        subcode=TERMS_NOT_ACCEPTED,
        user_title="Custom Audience Terms Not Accepted",
        user_msg="Accept the Custom Audience terms in Business Manager before creating or "
        "editing this audience.",
    )
