"""Summarizers: fold turns evicted from a session's window into its rolling summary.

What is a rolling summary? A session keeps its recent turns in full; older turns move to
the overflow, and a summarizer folds them into one running text:
``summary(previous summary, evicted turns) -> new summary``. Each call sees only the
previous summary and the turns evicted since, never the whole history, so the cost of a
session grows with its length and not with its square. The result is published as a
`SummaryUpdated` event, so a replay reproduces it without asking anyone again.

Every summarizer plays the `Summarizer` role. The offline default
(`chatlog.processors.extractive.ExtractiveSummarizer`) and the LLM-backed one
(`chatlog.processors.openai_summarizer`, which imports a network library) live in modules
of their own. `ResilientSummarizer` wraps any summarizer with retries
(exponential backoff, full jitter, ``Retry-After`` honoured) and a circuit breaker, so a
failing LLM costs one fast refusal per call instead of a pile of stalled ones.

A summarizer signals failure with the errors of `chatlog.schemas.errors`, grouped there by
what went wrong: `SummarizerError` (a `Refused`: the LLM answered, but not with a
summary) is final; `RetryableSummarizerError` and its `SummarizerTimeout` (`Unavailable`:
busy, failing, unreachable, slow) are retried; `SummarizerUnavailable` (`Unavailable`)
says the circuit is open and nothing was attempted.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from chatlog.projections.view import Message
from chatlog.schemas.errors import (
    InvalidInput,
    RetryableSummarizerError,
    SummarizerError,
    SummarizerTimeout,
    SummarizerUnavailable,
)

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "ResilientSummarizer",
    "RetryPolicy",
    "RetryableSummarizerError",
    "Summarizer",
    "SummarizerError",
    "SummarizerTimeout",
    "SummarizerUnavailable",
    "SummaryRequest",
    "SummaryResult",
]


# --------------------------------------------------------------------------- the role


@dataclass(frozen=True, slots=True)
class SummaryRequest:
    """Fold `turns` (oldest first) into `previous_summary`, in at most `max_summary_tokens`."""

    session_id: str
    previous_summary: str | None
    turns: tuple[Message, ...]
    max_summary_tokens: int

    def __post_init__(self) -> None:
        if self.max_summary_tokens < 1:
            raise InvalidInput(
                f"max_summary_tokens must be at least 1, got {self.max_summary_tokens}",
                session_id=self.session_id,
            )


@dataclass(frozen=True, slots=True)
class SummaryResult:
    """A new rolling summary, who wrote it, and what it cost."""

    summary: str
    model: str
    prompt_tokens: int
    completion_tokens: int


class Summarizer(Protocol):
    """Anything that turns a previous summary and newer turns into a new summary."""

    async def summarize(self, request: SummaryRequest) -> SummaryResult:
        """The updated summary.

        Raises `SummarizerError` when the answer holds none and asking again will not
        help, `RetryableSummarizerError` (or `SummarizerTimeout`) when it may.
        """
        ...


# --------------------------------------------------------------------------- resilience


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often and how patiently to retry a transient failure.

    The n-th retry waits a uniformly random time in ``[0, min(max_delay, base_delay *
    2**(n-1))]`` ("full jitter": many clients retrying at once spread out instead of
    hitting a recovering server together). A server's ``Retry-After`` hint is a floor on
    the wait; a hint longer than `max_delay` is not waited for: the error is raised.
    """

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise InvalidInput(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < self.base_delay:
            raise InvalidInput(
                f"need 0 <= base_delay <= max_delay, got {self.base_delay} and {self.max_delay}"
            )

    def backoff(self, retry: int, rng: random.Random) -> float:
        """The jittered wait before retry number `retry` (1 for the first retry)."""
        return rng.uniform(0.0, min(self.max_delay, self.base_delay * 2.0 ** (retry - 1)))


class BreakerState(enum.StrEnum):
    """Where a circuit breaker is."""

    CLOSED = "closed"  # calls go through
    OPEN = "open"  # calls are refused until the cool-down has passed
    HALF_OPEN = "half_open"  # one trial call goes through; its outcome decides


class CircuitBreaker:
    """Opens after `failure_threshold` consecutive failures, for `reset_timeout` seconds.

    After the cool-down it lets one trial call through (half-open): a success closes it, a
    failure opens it for another cool-down. Time is passed in, not read, so the breaker
    is a plain state machine that tests drive with any clock. It is not thread-safe; it is
    meant for one event loop, where nothing interleaves between `acquire` and its outcome.
    """

    def __init__(self, *, failure_threshold: int = 5, reset_timeout: float = 30.0) -> None:
        if failure_threshold < 1:
            raise InvalidInput(f"failure_threshold must be at least 1, got {failure_threshold}")
        if reset_timeout < 0:
            raise InvalidInput(f"reset_timeout must be at least 0, got {reset_timeout}")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    def state(self, now: float) -> BreakerState:
        """The state at time `now`."""
        if self._opened_at is None:
            return BreakerState.CLOSED
        if now - self._opened_at < self.reset_timeout:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def retry_in(self, now: float) -> float:
        """Seconds until a call may go through again (0 when one may now)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.reset_timeout - now)

    def acquire(self, now: float) -> bool:
        """Whether a call may go through now; in half-open state only the first may."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        """The call went through and the service answered: close."""
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def record_failure(self, now: float) -> None:
        """The call failed in a way that says the service is unwell."""
        self._failures += 1
        if self._trial_in_flight or self._failures >= self.failure_threshold:
            self._opened_at = now
        self._trial_in_flight = False

    def release(self) -> None:
        """The call ended with no verdict on the service (a bug, a cancellation)."""
        self._trial_in_flight = False


class ResilientSummarizer:
    """Retries transient failures of `inner` and stops calling it while it keeps failing.

    Each attempt goes through the circuit breaker first: while it is open, `summarize`
    raises `SummarizerUnavailable` at once and `inner` is not called. A
    `RetryableSummarizerError` counts as a failure and is retried after a backoff, up to
    `retry.max_attempts` attempts in all; a `SummarizerError` means the summarizer
    answered (the request itself is at fault), so it closes the breaker and is raised
    without a retry.
    """

    def __init__(
        self,
        inner: Summarizer,
        *,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.inner = inner
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or CircuitBreaker()
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()

    async def summarize(self, request: SummaryRequest) -> SummaryResult:
        """`inner`'s summary, after retries; `SummarizerUnavailable` while the circuit is open."""
        attempt = 0
        while True:
            attempt += 1
            if not self.breaker.acquire(self._clock()):
                raise self._unavailable(request, cause=None)
            try:
                result = await self.inner.summarize(request)
            except RetryableSummarizerError as exc:
                now = self._clock()
                self.breaker.record_failure(now)
                delay = self._delay(attempt, exc)
                if delay is None:
                    raise
                if self.breaker.state(now) is not BreakerState.CLOSED:
                    # No point waiting for an attempt the breaker would refuse.
                    raise self._unavailable(request, cause=exc) from exc
                await self._sleep(delay)
                continue
            except SummarizerError:
                self.breaker.record_success()
                raise
            except BaseException:
                self.breaker.release()
                raise
            self.breaker.record_success()
            return result

    def _unavailable(
        self, request: SummaryRequest, *, cause: RetryableSummarizerError | None
    ) -> SummarizerUnavailable:
        retry_in = self.breaker.retry_in(self._clock())
        reason = f" (last error: {cause})" if cause is not None else ""
        return SummarizerUnavailable(
            f"the summarizer failed {self.breaker.failure_threshold} times in a row{reason}; "
            f"not calling it for another {retry_in:.1f} s",
            session_id=request.session_id,
            retry_in=retry_in,
        )

    def _delay(self, attempt: int, error: RetryableSummarizerError) -> float | None:
        """How long to wait before the next attempt; None when there is none."""
        if attempt >= self.retry.max_attempts:
            return None
        delay = self.retry.backoff(attempt, self._rng)
        if error.retry_after is not None:
            if error.retry_after > self.retry.max_delay:
                return None
            delay = max(delay, error.retry_after)
        return delay
