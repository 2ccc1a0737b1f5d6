"""Redis refusing chatlog's credentials is a setting to fix, not an outage to wait out.

A real Redis user made for the test (ACL SETUSER) with a password and a narrow ACL; a
wrong password, and a user whose ACL forbids chatlog's commands, both answer
`ConfigError` naming CHATLOG_REDIS_URL (exit 1: a restart fails again), never
`StoreUnavailable` (exit 75: run it again). The password is in no message.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from chatlog import wiring
from chatlog.cli.common import EXIT_ACT, exit_status
from chatlog.schemas.errors import ConfigError
from tests.processes import unique_settings

pytestmark = pytest.mark.integration


def _url_as(redis_url: str, user: str, password: str) -> str:
    parts = urlsplit(redis_url)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))


@pytest.fixture
def acl_user(redis_url: str) -> Iterator[tuple[str, str]]:
    """A Redis user allowed only PING (and AUTH/HELLO), with a fresh password."""
    name, password = f"chatlog-test-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser(name, enabled=True, passwords=[f"+{password}"], commands=["+ping"], keys=[])
    try:
        yield name, password
    finally:
        admin.acl_deluser(name)
        admin.close()


@pytest.mark.parametrize("wrong", ["password", "acl"])
def test_refused_credentials_are_a_config_error(kafka, redis_url, acl_user, wrong) -> None:
    name, password = acl_user
    secret = "not-" + password if wrong == "password" else password
    settings = unique_settings(kafka, _url_as(redis_url, name, secret), "cred")
    reader = wiring.reader(settings)
    try:
        with pytest.raises(ConfigError) as raised:
            reader.sessions("alice")
    finally:
        reader.client.close()
    assert raised.value.context.get("setting") == "CHATLOG_REDIS_URL"
    assert "CHATLOG_REDIS_URL" in raised.value.message
    assert secret not in str(raised.value)
    assert password not in str(raised.value)
    assert exit_status(raised.value) == EXIT_ACT
