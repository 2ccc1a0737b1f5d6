"""The limits' settings and answers, without a server: rates as written, the cap, and what
a refusal says over HTTP."""

from __future__ import annotations

import pytest

from chatlog.gateway.http_errors import http_error
from chatlog.schemas.errors import ConfigError, RateLimited, TooManySessions
from chatlog.schemas.limits import Rate, Verdict, parse_rate, retry_after_s
from chatlog.settings import Settings


@pytest.mark.parametrize(
    ("text", "per_s", "burst"),
    [
        ("20/s burst=60", 20.0, 60),
        ("20/s", 20.0, 20),  # the burst is one unit's worth
        ("600/m", 10.0, 600),
        ("7/h", 7 / 3600, 7),
        ("0.5/s", 0.5, 1),  # at least one at once
        (" 10 / S , Burst = 3 ", 10.0, 3),
        ("1.25/s burst=2", 1.25, 2),
    ],
)
def test_rates_are_read_as_written_and_shown_so_they_read_back(text, per_s, burst):
    rate = parse_rate(text)
    assert rate is not None
    assert rate.per_s == pytest.approx(per_s)
    assert rate.burst == burst
    assert parse_rate(str(rate)) == rate


@pytest.mark.parametrize("text", ["off", "OFF", "0", "0/s", "0/m burst=5", "none"])
def test_off_and_zero_mean_no_limit(text):
    assert parse_rate(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20 per second", "is not a rate: write N/s, N/m or N/h"),
        ("20/d", "is not a rate"),
        ("-1/s", "is not a rate"),
        ("20/s burst=0", "burst=0 must be between 1 and 1000000"),
        ("20/s burst=2000000", "must be between 1 and 1000000"),
        ("20/s burst=1.5", "is not a rate"),
        ("20/s 60", "is not a rate"),
    ],
)
def test_bad_rates_are_refused_naming_the_forms(text, expected):
    with pytest.raises(ValueError, match=expected):
        parse_rate(text)


def test_the_settings_default_to_a_user_limit_no_tenant_limit_and_1000_sessions(tmp_path):
    settings = Settings.from_env({"CHATLOG_STATE_DIR": str(tmp_path)})
    assert settings.rate_user == Rate(count=20, unit="s", burst=60)
    assert settings.rate_tenant is None
    assert settings.max_sessions_per_user == 1000
    shown = settings.describe()
    assert shown["CHATLOG_RATE_USER"] == "20/s burst=60"
    assert shown["CHATLOG_RATE_TENANT"] == "off"
    # What `describe` shows reads back as the same (child processes get it so).
    again = Settings.from_env(
        {"CHATLOG_STATE_DIR": str(tmp_path), **{k: shown[k] for k in shown if "RATE" in k}}
    )
    assert (again.rate_user, again.rate_tenant) == (settings.rate_user, None)


def test_the_settings_read_rates_and_the_cap(tmp_path):
    settings = Settings.from_env(
        {
            "CHATLOG_STATE_DIR": str(tmp_path),
            "CHATLOG_RATE_USER": "off",
            "CHATLOG_RATE_TENANT": "6000/m burst=500",
            "CHATLOG_MAX_SESSIONS_PER_USER": "0",
        }
    )
    assert settings.rate_user is None
    assert settings.rate_tenant == Rate(count=6000, unit="m", burst=500)
    assert settings.max_sessions_per_user == 0


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CHATLOG_RATE_USER": "20 per second"}, "CHATLOG_RATE_USER='20 per second'.*N/s"),
        ({"CHATLOG_RATE_TENANT": "5/s burst=0"}, "CHATLOG_RATE_TENANT=.*burst=0 must be"),
        (
            {"CHATLOG_MAX_SESSIONS_PER_USER": "-1"},
            "CHATLOG_MAX_SESSIONS_PER_USER=.*or 0 for no cap",
        ),
        ({"CHATLOG_MAX_SESSIONS_PER_USER": "lots"}, "CHATLOG_MAX_SESSIONS_PER_USER=.*integer"),
        ({"CHATLOG_RATE_USERS": "5/s"}, "did you mean CHATLOG_RATE_USER"),
    ],
)
def test_bad_limit_settings_are_refused_naming_the_setting(env, expected):
    with pytest.raises(ConfigError, match=expected):
        Settings.from_env(env)


@pytest.mark.parametrize(("wait_ms", "seconds"), [(1, 1), (999, 1), (1000, 1), (1001, 2), (0, 1)])
def test_retry_after_is_whole_seconds_rounded_up_and_never_zero(wait_ms, seconds):
    assert retry_after_s(wait_ms) == seconds


def test_a_rate_refusal_is_429_with_retry_after_and_names_whose_limit():
    from chatlog.gateway.fastapi_limits import refusal

    error = refusal(Verdict(allowed=False, retry_after_ms=1500, scope="tenant"))
    assert isinstance(error, RateLimited)
    assert (error.retry_after_s, error.scope) == (2, "tenant")
    answer = http_error(error)
    assert (answer.status, answer.code) == (429, "rate_limited")
    assert answer.headers == {"Retry-After": "2"}
    assert "your tenant's requests are over the rate limit; retry after 2 s" in answer.message
    mine = http_error(refusal(Verdict(allowed=False, retry_after_ms=20, scope="user")))
    assert "your requests" in mine.message
    assert mine.headers == {"Retry-After": "1"}


def test_the_session_cap_is_409_without_retry_after():
    answer = http_error(TooManySessions("user u has 3 sessions", session_id="s"))
    assert (answer.status, answer.code) == (409, "too_many_sessions")
    assert answer.headers == {}
    assert "s" not in answer.message.split()  # names no session id of the caller's
