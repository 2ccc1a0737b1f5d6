"""Request rates per user and per tenant: token buckets in Redis, one Lua call a request.

What is a token bucket? Each user (and each tenant) has a bucket of at most `burst`
tokens that refills at a steady rate; a request takes one token, and a request that
finds the bucket empty is refused with the time until a token is back. A quiet user
has a full bucket, so a burst passes; a loop is held to the rate.

How is it kept? A bucket is a Redis hash of two fields, the tokens it held and when (ms).
One script (EVALSHA, through redis-py's ``register_script``) refills the user's bucket
and their tenant's by the time elapsed, takes a token from both or from neither, and
answers whether the request may pass and, if not, how long to wait. Both buckets in one
call, so a request refused by its tenant costs its user nothing and two gateways cannot
interleave between the two checks; both keys carry the tenant's hash tag `{t:<tenant>}`
(`chatlog.projections.keys`) so that call is one slot on Redis Cluster as well.

Whose clock? Redis's (``TIME`` inside the script), not the gateway's: every gateway
process refills a bucket by the same clock, so a gateway whose clock is ahead cannot
hand out tokens early, nor one behind take them late. A bucket lives on one node, so it
only ever sees that node's clock; after a failover to a replica with a clock behind,
the elapsed time is taken as zero (no refill until the clock passes the last update),
never negative. (Scripts that read ``TIME`` and then write need effects replication,
the default since Redis 5.)

Idle buckets vanish: each write sets the key to expire when the bucket would be full
again, which is the same as having no key. A tenant with a million idle users costs
nothing.

If Redis does not answer, the request fails (`StoreUnavailable`, 503): fail closed.
The gateway could let requests pass unlimited instead, but the limits exist to protect
shared capacity from one tenant, and an outage of Redis is exactly when that capacity
is short; and the gateway's reads need Redis anyway.
"""

from __future__ import annotations

import redis.asyncio

from chatlog.projections.keys import KeySpace
from chatlog.projections.redis_store import redis_errors
from chatlog.schemas.limits import Rate, Verdict
from chatlog.settings import Settings

__all__ = ["RedisRateLimiter"]

# KEYS: the tenant's bucket, the user's (one hash tag). ARGV: the tenant's tokens per ms
# and burst, the user's (a rate of 0: no such limit). Answers {1, 0, 0} to pass (a token
# taken from each bucket), else {0, wait ms, which bucket: 1 the tenant, 2 the user} and
# nothing taken.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local level = {}
local wait, empty = 0, 0
for i = 1, 2 do
  local rate, burst = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  if rate > 0 then
    local state = redis.call('HMGET', KEYS[i], 'tokens', 'at')
    local tokens, at = tonumber(state[1]), tonumber(state[2])
    if tokens == nil or at == nil then
      tokens = burst
    else
      tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
    end
    level[i] = tokens
    if tokens < 1 then
      local needed = math.ceil((1 - tokens) / rate)
      if needed > wait then wait, empty = needed, i end
    end
  end
end
if wait > 0 then return {0, wait, empty} end
for i = 1, 2 do
  if level[i] then
    local rate, burst = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
    local left = level[i] - 1
    redis.call('HSET', KEYS[i], 'tokens', tostring(left), 'at', now)
    redis.call('PEXPIRE', KEYS[i], math.ceil((burst - left) / rate) + 1)
  end
end
return {1, 0, 0}
"""

_WHOSE = {1: "tenant", 2: "user"}


def _args(rate: Rate | None) -> list[float | int]:
    return [0, 0] if rate is None else [rate.per_ms, rate.burst]


class RedisRateLimiter:
    """Takes a token from a user's bucket and their tenant's, together (asyncio)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "chatlog",
        user: Rate | None = None,
        tenant: Rate | None = None,
    ) -> None:
        self.client = client
        self.keys = KeySpace(prefix)
        self.user = user
        self.tenant = tenant
        self._take = client.register_script(_TAKE)

    @classmethod
    def from_settings(
        cls, settings: Settings, client: redis.asyncio.Redis
    ) -> RedisRateLimiter | None:
        """The limiter of ``CHATLOG_RATE_USER`` and ``CHATLOG_RATE_TENANT`` on `client`;
        None when both are off."""
        if settings.rate_user is None and settings.rate_tenant is None:
            return None
        return cls(
            client,
            prefix=settings.redis_prefix,
            user=settings.rate_user,
            tenant=settings.rate_tenant,
        )

    async def take(self, tenant: str, user_id: str) -> Verdict:
        """One request of `user_id` of `tenant`: a token from each bucket, or a refusal
        (`StoreUnavailable` if Redis does not answer)."""
        keys = [self.keys.tenant_rate(tenant), self.keys.user_rate(tenant, user_id)]
        with redis_errors():
            allowed, wait_ms, empty = await self._take(
                keys=keys, args=[*_args(self.tenant), *_args(self.user)]
            )
        if int(allowed):
            return Verdict(allowed=True)
        return Verdict(allowed=False, retry_after_ms=int(wait_ms), scope=_WHOSE[int(empty)])
