"""The `openai` client as chatlog's models use it: its errors translated, its logs masked.

The summarizer (chat completions) and the embedder (embeddings) call OpenAI-compatible
servers through the same client, and a failure means the same for both: a rate limit, a
server error, a timeout or a lost connection is transient (retried by
`chatlog.processors.resilience`, with the server's ``Retry-After``); any other 4xx, or a
body that is not the answer asked for, is final. `translated_errors` is that rule, once,
for both; each caller names itself and its own error classes.

Clients are built with ``max_retries=0``: retrying is `Resilience`'s job, and two layers
retrying multiply each other's attempts.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import math
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai

from chatlog.schemas.errors import ChatlogError
from chatlog.schemas.secrets import MASK, RedactingFilter

__all__ = ["retry_after", "translated_errors"]

# httpx logs every request's URL at INFO, userinfo included (a base URL may carry a
# proxy's password): masked on that logger, whoever's handlers format it. The openai
# client runs on httpx or, from its 3.x releases, on its fork httpx2.
for _http_logger in ("httpx", "httpx2"):
    logging.getLogger(_http_logger).addFilter(RedactingFilter())

# A transient error class: takes the message, ``retry_after=`` and context (the
# summarizer's `RetryableSummarizerError`, the embedder's `RetryableEmbeddingError`).
Transient = Callable[..., ChatlogError]


@contextlib.contextmanager
def translated_errors(
    service: str,
    *,
    answer: str,
    timeout_s: float,
    final: type[ChatlogError],
    transient: Transient,
    timeout: Transient,
    secret: str | None = None,
    ca_setting: str | None = None,
    **context: Any,
) -> Iterator[None]:
    """Raise the openai client's errors inside as chatlog's: `transient` (with the
    server's retry hint), `timeout` or `final`, each naming `service` ("the summarizer's
    LLM") and carrying `context`. `answer` names what a good body holds ("a chat
    completion"). `secret` (the API key) is masked wherever the server quoted it back.
    `ca_setting` names the setting that trusts a private CA, for an untrusted certificate."""

    def masked(text: str) -> str:
        return text.replace(secret, MASK) if secret else text

    def cause(exc: Exception) -> Exception | None:
        # A traceback prints the library's error too: dropped when it quotes the secret.
        return None if secret and secret in str(exc) else exc

    try:
        yield
    except openai.APIStatusError as exc:
        status = exc.status_code
        message = masked(exc.message)
        if status == 429 or status >= 500:
            raise transient(
                f"{service} answered {status}: {message}",
                retry_after=retry_after(exc.response.headers),
                status_code=status,
                **context,
            ) from cause(exc)
        raise final(
            f"{service} refused the request with {status}: {message}",
            status_code=status,
            **context,
        ) from cause(exc)
    except openai.APITimeoutError as exc:
        raise timeout(f"{service} did not answer within {timeout_s:g} s", **context) from exc
    except openai.APIConnectionError as exc:
        raise transient(
            f"could not reach {service}: {masked(str(exc))}{_untrusted(exc, ca_setting)}",
            **context,
        ) from cause(exc)
    except (openai.APIResponseValidationError, ValueError) as exc:
        # The client parses the body before we see it: a body that is not JSON ends here.
        raise final(
            f"{service} answered with a body that is not {answer}: {masked(str(exc))}",
            **context,
        ) from cause(exc)


def _untrusted(exc: BaseException, ca_setting: str | None) -> str:
    """The fix, when the endpoint's certificate was not trusted (openai's own message
    says only "Connection error")."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            fix = f"; set {ca_setting} to the CA that signed it" if ca_setting else ""
            return f" (its TLS certificate is not trusted: {cause.verify_message}{fix})"
        cause = cause.__cause__ or cause.__context__
    return ""


def retry_after(headers: Any) -> float | None:
    """The server's ``Retry-After`` (or ``retry-after-ms``) in seconds, if it sent one."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        # The other form the header allows: an HTTP date.
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None
