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
failing LLM costs one fast refusal per call instead of a pile of stalled ones; the policy
itself is `chatlog.processors.resilience`'s, shared with the embedder.

A summarizer signals failure with the errors of `chatlog.schemas.errors`, grouped there by
what went wrong: `SummarizerError` (a `Refused`: the LLM answered, but not with a
summary) is final; `RetryableSummarizerError` and its `SummarizerTimeout` (`Unavailable`:
busy, failing, unreachable, slow) are retried; `SummarizerUnavailable` (`Unavailable`)
says the circuit is open and nothing was attempted.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from chatlog.processors.resilience import (
    BreakerState,
    CircuitBreaker,
    Resilience,
    RetryPolicy,
    refusal_text,
)
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
        self._resilience = Resilience(
            transient=RetryableSummarizerError,
            final=SummarizerError,
            retry=retry,
            breaker=breaker,
            clock=clock,
            sleep=sleep,
            rng=rng,
        )
        self.retry = self._resilience.retry
        self.breaker = self._resilience.breaker

    async def summarize(self, request: SummaryRequest) -> SummaryResult:
        """`inner`'s summary, after retries; `SummarizerUnavailable` while the circuit is open."""

        def refusal(retry_in: float, cause: Exception | None) -> SummarizerUnavailable:
            return SummarizerUnavailable(
                refusal_text("the summarizer", self.breaker, retry_in, cause),
                session_id=request.session_id,
                retry_in=retry_in,
            )

        return await self._resilience.acall(lambda: self.inner.summarize(request), refusal)
