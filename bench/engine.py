"""What the summary scenarios share: the engine's window and thresholds, driving it, tokens.

Both run chatlog's real `SummaryEngine` outside its consumer, fed records from memory:
the same window and thresholds, a no-op commit, a wait until no summary is under way, and
the prompt counted in approximate tokens the way an LLM bill would count it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from chatlog.processors.openai_summarizer import summary_messages
from chatlog.processors.summarizers import SummaryRequest
from chatlog.processors.summary_engine import SummaryEngine
from chatlog.projections.context import approx_tokens
from chatlog.projections.view import WindowPolicy

__all__ = ["THRESHOLDS", "WINDOW", "content_tokens", "no_ack", "prompt_tokens", "settle"]

WINDOW = WindowPolicy(window=20, max_overflow=200)


THRESHOLDS = (10, 20)


def prompt_tokens(request: SummaryRequest) -> int:
    """The prompt chatlog's LLM summarizer would send for `request`, in approximate tokens."""
    return content_tokens(summary_messages(request))


def content_tokens(messages: Iterable[Mapping[str, object]]) -> int:
    """Approximate tokens of the chat messages' contents."""
    return sum(approx_tokens(str(m.get("content") or "")) for m in messages)


async def no_ack() -> None:
    """Nothing to commit: the records come from memory."""


async def settle(engine: SummaryEngine, timeout: float) -> None:
    """Wait until the engine has no work under way, including work started meanwhile.

    `drain` waits for the tasks running when it is called; a load that finishes starts
    the session's summary, a new task, so it is called until none is left.
    """
    deadline = time.monotonic() + timeout
    while engine.in_flight:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(
                f"the summary engine still had {engine.in_flight} tasks after {timeout:g} s"
            )
        await engine.drain(left)
