"""Fixtures shared by the integration tests: a fresh topic and prefix, and a client on them."""

from __future__ import annotations

import pytest

from chatlog import wiring
from chatlog.client import ChatLog
from tests.gateways import gateway_stack
from tests.processes import unique_settings


@pytest.fixture
def settings(kafka, redis_url, redis_prefix):
    """Settings on a fresh topic, DLQ, Redis prefix and projector group (modules may
    define their own)."""
    return unique_settings(kafka, redis_url, redis_prefix)


@pytest.fixture
def chat(settings):
    """A `ChatLog` on `settings`, reads waiting up to 30 s for the projector."""
    log = ChatLog(
        producer=wiring.producer(settings, flush_on_sigterm=False),
        reader=wiring.reader(settings),
        read_timeout_s=30,
    )
    yield log
    log.close()


@pytest.fixture(scope="module")
def gateway(kafka, redis_url, tmp_path_factory):
    """A running `chatlog serve` and projector for the module (starting them costs
    seconds); each test uses users of its own (`tests.gateways.new_user`)."""
    with gateway_stack(kafka, redis_url, tmp_path_factory.mktemp("gateway")) as running:
        yield running
