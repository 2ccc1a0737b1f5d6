"""A running gateway as the tests meet it: `chatlog serve` and a projector on fresh topics.

`gateway_stack` starts both (real uvicorn, real Kafka and Redis) on settings of their own
and yields a `Gateway`: its URL, its settings and a token issuer for the same secret, so a
test can act as any user of any tenant. The test modules of the gateway each start one
(the `gateway` fixture of tests/integration/conftest.py) and give every test users of its
own, so the tests do not see each other's sessions.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from chatlog.gateway.tokens import TokenIssuer
from chatlog.settings import Settings
from tests.processes import running_gateway, running_projector, unique_settings


@dataclass
class Gateway:
    """A running gateway: where it listens, what it runs on, and tokens it accepts."""

    url: str
    settings: Settings
    issuer: TokenIssuer

    def token(self, user: str, **claims: Any) -> str:
        """A valid token of `user` (`tenant=`, `ttl_s=`, `now=` and other claims)."""
        return self.issuer.mint(user, **claims)

    def auth(self, user: str, **claims: Any) -> dict[str, str]:
        """The Authorization header of a valid token of `user`."""
        return {"Authorization": f"Bearer {self.token(user, **claims)}"}


def new_user() -> str:
    """A user id no other test uses."""
    return f"u-{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def gateway_stack(kafka, redis_url: str, logs: Path, **overrides: Any) -> Iterator[Gateway]:
    """A projector and a gateway on fresh topics and a fresh Redis prefix, for the block;
    the prefix's keys are deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    secret = "gateway-tests-" + uuid.uuid4().hex  # 46 characters, fresh each run
    # Reads wait up to 30 s: a loaded test machine can take longer than 5 s to project.
    options = {"auth_secret": secret, "read_timeout_s": 30.0, **overrides}
    settings = unique_settings(kafka, redis_url, prefix, **options)
    try:
        with (
            running_projector(settings, log=logs / "projector.log"),
            running_gateway(settings, log=logs / "serve.log") as url,
        ):
            yield Gateway(url, settings, TokenIssuer.from_settings(settings))
    finally:
        client = redis.Redis.from_url(redis_url)
        try:
            keys = list(client.scan_iter(f"{prefix}*", count=1000))
            if keys:
                client.unlink(*keys)
        finally:
            client.close()
