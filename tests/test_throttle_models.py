"""The fake's throttle models, exact on their own clock."""

from __future__ import annotations

import json

import pytest

from engine.testing.throttle import (
    AD_ACCOUNT_HEADER,
    APP_HEADER,
    BUC_HEADER,
    FixedWindow,
    HeaderKind,
    SlidingWindow,
    TokenBucket,
    bucket,
    fixed,
    sliding,
)


def buc(headers: dict[str, str]) -> dict[str, object]:
    (entries,) = json.loads(headers[BUC_HEADER]).values()
    (entry,) = entries
    assert isinstance(entry, dict)
    return entry


def test_sliding_window_admits_the_cap_then_throttles_with_80003_until_the_oldest_leaves() -> None:
    m = SlidingWindow(limit=4, window_s=10.0)
    verdicts = [m.admit(t) for t in (0.0, 1.0, 2.0, 3.0)]
    assert all(v.admitted for v in verdicts)
    assert [v.usage_pct for v in verdicts] == [25, 50, 75, 100]
    over = m.admit(4.0)
    assert over.error is not None and (over.error.code, over.error.subcode) == (80003, 2446079)
    entry = buc(over.headers)
    assert entry["type"] == "custom_audience"
    assert entry["call_count"] == entry["total_cputime"] == entry["total_time"] == 125
    assert entry["estimated_time_to_regain_access"] == 1  # 7 s, in whole minutes, rounded up
    # The throttled call counted: at 10.0 the call at 0 has left, but the window still holds 4.
    assert not m.admit(10.0).admitted
    assert m.admit(12.0).admitted  # calls at 1 and 2 have left; 3, 4, 10 remain


def test_percentages_are_integers_rounded_down() -> None:
    m = SlidingWindow(limit=3, window_s=1.0)
    assert [m.admit(0.0).usage_pct for _ in range(3)] == [33, 66, 100]
    assert isinstance(buc(m.admit(0.5).headers)["call_count"], int)


def test_time_scale_runs_an_hour_window_in_seconds_and_regain_is_in_model_minutes() -> None:
    m = sliding(rate=2.0, window_s=3600.0, time_scale=360.0)  # the hour lasts 10 s here
    assert (m.limit, m.rate()) == (20, 2.0)
    assert all(m.admit(0.0).admitted for _ in range(20))
    over = m.admit(1.0)  # model time 360 s: 3240 s = 54 minutes until the first leaves
    assert not over.admitted and over.regain_min == 54
    assert m.admit(10.0).admitted


def test_fixed_window_resets_on_the_boundary() -> None:
    m = fixed(rate=1.0, window_s=3600.0, time_scale=3600.0)  # one call per second-long window
    assert m.admit(0.2).admitted
    over = m.admit(0.9)
    assert not over.admitted and over.regain_min == 6  # 360 model seconds to the boundary
    assert m.admit(1.0).admitted
    assert m.admit(1.5).usage_pct == 200


def test_fixed_window_origin_moves_the_boundaries() -> None:
    m = FixedWindow(limit=1, window_s=10.0, origin=5.0)
    assert m.admit(4.0).admitted
    assert m.admit(5.0).admitted  # a new window began at 5
    assert not m.admit(14.0).admitted


def test_token_bucket_bursts_its_capacity_then_refills_steadily() -> None:
    m = bucket(rate=5.0, burst_s=1.0)
    assert isinstance(m, TokenBucket) and m.capacity == 5
    assert all(m.admit(0.0).admitted for _ in range(5))
    assert not m.admit(0.1).admitted  # 0.5 tokens back, and the throttled call took one
    assert not m.admit(0.3).admitted
    assert m.admit(0.9).admitted  # -1 + 0.9 * 5 = 3.5 tokens... less the throttle at 0.3
    assert m.rate() == 5.0


@pytest.mark.parametrize(
    ("kind", "header", "code"),
    [(HeaderKind.APP, APP_HEADER, 4), (HeaderKind.AD_ACCOUNT, AD_ACCOUNT_HEADER, 17)],
)
def test_app_and_ad_account_quotas_use_their_headers_and_codes(
    kind: HeaderKind, header: str, code: int
) -> None:
    m = SlidingWindow(limit=2, window_s=60.0, kind=kind)
    m.admit(0.0)
    ok = m.admit(1.0)
    assert set(ok.headers) == {header}
    over = m.admit(2.0)
    assert over.error is not None and over.error.code == code
    body = json.loads(over.headers[header])
    if kind is HeaderKind.APP:
        assert body == {"call_count": 150, "total_time": 150, "total_cputime": 150}
    else:
        assert body["acc_id_util_pct"] == 150.0 and body["reset_time_duration"] == 59


def test_uncounted_throttles_leave_the_window_alone() -> None:
    m = SlidingWindow(limit=1, window_s=1.0, count_throttled=False)
    assert m.admit(0.0).admitted
    assert not m.admit(0.5).admitted
    assert m.admit(1.0).admitted


def test_spend_stands_for_other_callers() -> None:
    m = SlidingWindow(limit=10, window_s=60.0)
    m.spend(-30.0, 5)
    assert m.admit(0.0).usage_pct == 60
    assert m.admit(30.0).usage_pct == 20  # the others' calls left at 30


@pytest.mark.parametrize("bad", [{"limit": 0}, {"window_s": 0.0}, {"time_scale": 0.0}])
def test_bad_shapes_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SlidingWindow(**bad)  # type: ignore[arg-type]
