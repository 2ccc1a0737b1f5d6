"""The gateway's rate limits as a FastAPI dependency: `limited(principal)`.

Every ``/v1`` route depends on the caller's principal; `limited` wraps that dependency,
so a request is counted once it is authenticated, against its user's bucket and its
tenant's (`chatlog.gateway.redis_ratelimit`), and refused with `RateLimited` (429 with
``Retry-After``, from `chatlog.gateway.http_errors`) when either is empty. Routes that
take no principal (``/healthz``, ``/readyz``, the OpenAPI document) are not limited, nor
is a request without a valid token: it is refused (401) before it is counted, and an
anonymous flood is for the load balancer's per-address limits.

The limiter is the application's ``state.limiter`` (`create_app(..., limiter=...)`);
without one, nothing is limited.
"""

# No `from __future__ import annotations`: FastAPI reads the dependency's signature at
# run time, and its annotation names `principal`, a variable of the enclosing function.
from collections.abc import Awaitable, Callable
from typing import Annotated, Protocol

from fastapi import Depends, Request

from chatlog.gateway.principals import Principal
from chatlog.schemas.errors import RateLimited
from chatlog.schemas.limits import Verdict, retry_after_s

__all__ = ["RateLimiter", "limited", "refusal"]


class RateLimiter(Protocol):
    """What the gateway asks of a limiter (`RedisRateLimiter`)."""

    async def take(self, tenant: str, user_id: str) -> Verdict:
        """Count one request of `user_id` of `tenant`; whether it may pass."""
        ...


def refusal(verdict: Verdict) -> RateLimited:
    """The error for a request `verdict` refuses: it says whose limit and when to retry."""
    seconds = retry_after_s(verdict.retry_after_ms)
    whose = "your tenant's requests" if verdict.scope == "tenant" else "your requests"
    return RateLimited(
        f"too many requests: {whose} are over the rate limit; retry after {seconds} s",
        retry_after_s=seconds,
        scope=verdict.scope or "user",
    )


def limited(
    principal: Callable[..., Principal | Awaitable[Principal]],
) -> Callable[..., Awaitable[Principal]]:
    """A dependency giving what `principal` gives, once the request is within the limits."""

    async def within_limits(
        request: Request, caller: Annotated[Principal, Depends(principal)]
    ) -> Principal:
        limiter: RateLimiter | None = getattr(request.app.state, "limiter", None)
        if limiter is not None:
            verdict = await limiter.take(caller.tenant, caller.user_id)
            if not verdict.allowed:
                raise refusal(verdict)
        return caller

    return within_limits
