"""Retries and a circuit breaker for calls to a remote model (an LLM, an embeddings endpoint).

A model behind an HTTP API fails in two ways that call for opposite answers. A transient
failure (a rate limit, a 5xx, a timeout, a lost connection) is retried after a backoff
(exponential, full jitter, the server's ``Retry-After`` honoured); a final one (the
request itself is at fault: a 4xx, an answer that is not what was asked) is raised at
once. And while the service keeps failing, a circuit breaker stops calling it: one fast
refusal per call instead of a pile of stalled ones, then one trial call after a cool-down.

`Resilience` is that policy, written once for every caller: the summarizer
(`chatlog.processors.summarizers.ResilientSummarizer`) and the embedder
(`chatlog.processors.embeddings.ResilientEmbedder`) each say which of their errors are
transient, which are final, and what to raise while the circuit is open. It runs a call
from asyncio (`acall`) or from a thread (`call`); time, sleeping and chance are passed
in, so tests drive it with no clock.
"""

from __future__ import annotations

import asyncio
import enum
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from chatlog.schemas.errors import ChatlogError, InvalidInput, Unavailable

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "Refusal",
    "Resilience",
    "RetryPolicy",
    "Transient",
    "refusal_text",
]

T = TypeVar("T")
# What a caller raises while the circuit is open: made of the seconds until a trial call
# may go through, and the last error (None when no call was attempted).
Refusal = Callable[[float, Exception | None], Unavailable]


def refusal_text(
    what: str, breaker: CircuitBreaker, retry_in: float, cause: Exception | None
) -> str:
    """A `Refusal`'s message: `what` ("the summarizer") failed, and when it is tried again."""
    reason = f" (last error: {cause})" if cause is not None else ""
    return (
        f"{what} failed {breaker.failure_threshold} times in a row{reason}; not calling it "
        f"for another {retry_in:.1f} s"
    )


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
    is a plain state machine that tests drive with any clock. It holds no lock:
    `Resilience` serializes its use.
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


class Transient(Protocol):
    """A transient failure: the server's ``Retry-After`` hint, in seconds, if it gave one."""

    @property
    def retry_after(self) -> float | None: ...


class Resilience:
    """Runs calls to one service with retries and a circuit breaker.

    Each attempt goes through the breaker first: while it is open, the call raises the
    error its `refusal` makes of ``(seconds until a trial call, the last error or None)``
    at once, and the service is not called. An error of a
    `transient` type counts as a failure and is retried after a backoff, up to
    `retry.max_attempts` attempts in all; an error of a `final` type means the service
    answered (the request itself is at fault), so it closes the breaker and is raised
    without a retry. Anything else (a bug, a cancellation) leaves the breaker as it was.
    """

    def __init__(
        self,
        *,
        transient: type[Unavailable],
        final: type[ChatlogError],
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        block: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.transient = transient
        self.final = final
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or CircuitBreaker()
        self._clock = clock
        self._sleep = sleep
        self._block = block
        self._rng = rng or random.Random()
        # The breaker's state changes in a few statements; a lock keeps them whole when
        # threads share one service (a reader's recall beside another's).
        self._lock = threading.Lock()

    async def acall(self, attempt: Callable[[], Awaitable[T]], refusal: Refusal) -> T:
        """`attempt()`'s result, after retries; `refusal`'s error while the circuit is open."""
        tries = 0
        while True:
            tries += 1
            self._admit(refusal)
            try:
                result = await attempt()
            except Exception as exc:
                await self._sleep(self._after(exc, tries, refusal))
                continue
            except BaseException:
                self._release()
                raise
            self._succeeded()
            return result

    def call(self, attempt: Callable[[], T], refusal: Refusal) -> T:
        """`acall`'s twin for a thread: the same retries, blocking while it waits."""
        tries = 0
        while True:
            tries += 1
            self._admit(refusal)
            try:
                result = attempt()
            except Exception as exc:
                self._block(self._after(exc, tries, refusal))
                continue
            except BaseException:
                self._release()
                raise
            self._succeeded()
            return result

    def _admit(self, refusal: Refusal) -> None:
        with self._lock:
            if self.breaker.acquire(self._clock()):
                return
            retry_in = self.breaker.retry_in(self._clock())
        raise refusal(retry_in, None)

    def _succeeded(self) -> None:
        with self._lock:
            self.breaker.record_success()

    def _release(self) -> None:
        with self._lock:
            self.breaker.release()

    def _after(self, error: Exception, tries: int, refusal: Refusal) -> float:
        """The wait before the next attempt after `error` on attempt `tries`; raises
        when there is none (`error` itself, or the refusal once the circuit opened)."""
        if isinstance(error, self.final):
            self._succeeded()
            raise error
        if not isinstance(error, self.transient):
            self._release()
            raise error
        with self._lock:
            now = self._clock()
            self.breaker.record_failure(now)
            opened = self.breaker.state(now) is not BreakerState.CLOSED
            retry_in = self.breaker.retry_in(now)
        delay = self._delay(tries, error)
        if delay is None:
            raise error
        if opened:
            # No point waiting for an attempt the breaker would refuse.
            raise refusal(retry_in, error) from error
        return delay

    def _delay(self, tries: int, error: Exception) -> float | None:
        """How long to wait before the next attempt; None when there is none."""
        if tries >= self.retry.max_attempts:
            return None
        delay = self.retry.backoff(tries, self._rng)
        hint = getattr(error, "retry_after", None)  # a `Transient`
        if hint is not None:
            if hint > self.retry.max_delay:
                return None
            delay = max(delay, hint)
        return delay
