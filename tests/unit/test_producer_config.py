"""The producer refuses settings that would weaken its guarantees, before any I/O."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from chatlog.producers.kafka_producer import ConversationProducer
from chatlog.schemas.errors import ConfigError, DeliveryFailed, NotQueued


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


def test_an_event_the_client_refuses_to_queue_is_not_sent_but_a_failed_delivery_may_be():
    producer = _producer()
    try:
        fatal = KafkaError(KafkaError._FATAL)
        refused = producer._error(fatal, {"topic": "t"}, sent=False)
        assert isinstance(refused, NotQueued)
        assert "it was not sent" in refused.message
        failed = producer._error(fatal, {"topic": "t"}, sent=True)
        assert isinstance(failed, DeliveryFailed)
        assert "may or may not be stored" in failed.message
    finally:
        producer.close(timeout=1)
