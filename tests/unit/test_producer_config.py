"""The producer refuses settings that would weaken its guarantees, before any I/O."""

from __future__ import annotations

import pytest

from chatlog.producers.kafka_producer import ConversationProducer
from chatlog.schemas.errors import ConfigError


def _producer(**config):
    return ConversationProducer(
        bootstrap_servers="127.0.0.1:1", config=config, check_topic=False, flush_on_sigterm=False
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [("enable.idempotence", False), ("acks", "1"), ("partitioner", "consistent_random")],
)
def test_conflicting_properties_are_refused(key, value):
    with pytest.raises(ConfigError, match=f"{key}=.*conflicts with chatlog's guarantees"):
        _producer(**{key: value})


def test_reserved_properties_are_refused():
    with pytest.raises(ConfigError, match=r"bootstrap\.servers are set by chatlog"):
        _producer(**{"bootstrap.servers": "x:1"})


def test_unknown_librdkafka_property_is_named():
    with pytest.raises(ConfigError, match=r"no\.such\.property"):
        _producer(**{"no.such.property": "1"})


def test_compatible_properties_are_accepted_and_close_is_idempotent():
    producer = _producer(**{"acks": "all", "client.id": "mine"})
    producer.close(timeout=1)
    producer.close(timeout=1)
