"""How the projector reads a fenced consumer: a setting to fix, or a failover to restart.

librdkafka reports both the same way (a fatal error whose text names group.instance.id).
Fenced with its session intact, the projector was replaced by a second process with its
instance id: a person must give each its own (`ConfigError`, exit 1). Fenced just after
its own session expired, it was replaced by its own rejoin, which is what a crash of the
group coordinator's broker leads to (tests/system/test_broker_faults.py): a restart
fixes it (`BrokerUnavailable`, exit 75). No broker is contacted here.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError, TopicPartition

from chatlog.cli.common import EXIT_ACT, EXIT_TEMPORARY, exit_status
from chatlog.processors.kafka_projector import KafkaProjector
from chatlog.processors.projection import ProjectionCore
from chatlog.projections.store import InMemoryViewStore
from chatlog.schemas.errors import BrokerUnavailable, ConfigError

FENCED = (
    "Fatal error: Broker: Static consumer fenced by other consumer with same "
    "group.instance.id: OffsetCommit failed: Broker: Static consumer fenced by other "
    "consumer with same group.instance.id"
)


class _ErrorMessage:
    """What `Consumer.poll` returns for an error: a message with only `error()`."""

    def __init__(self, error: KafkaError) -> None:
        self._error = error

    def error(self) -> KafkaError:
        return self._error


@pytest.fixture
def projector() -> Iterator[KafkaProjector]:
    # Nothing listens on port 1; the clients connect only when used, which they are not.
    built = KafkaProjector(
        ProjectionCore(InMemoryViewStore()),
        bootstrap_servers="127.0.0.1:1",
        topic="events",
        dlq_topic="events.dlq",
        group_id="projectors",
        instance_id="projector-a",
    )
    yield built
    built.close(timeout=5)


def _fenced() -> _ErrorMessage:
    return _ErrorMessage(KafkaError(KafkaError._FATAL, FENCED, fatal=True))


def test_fenced_with_its_session_intact_names_the_duplicate_instance_id(projector):
    with pytest.raises(ConfigError, match="CHATLOG_INSTANCE_ID") as raised:
        projector._membership.record_of(_fenced(), projector.topic)
    assert exit_status(raised.value) == EXIT_ACT


def test_fenced_right_after_its_session_expired_is_a_failover_to_restart(projector):
    projector._on_lost(None, [TopicPartition("events", 0)])
    with pytest.raises(BrokerUnavailable, match="session timeout") as raised:
        projector._membership.record_of(_fenced(), projector.topic)
    assert not isinstance(raised.value, ConfigError)
    assert exit_status(raised.value) == EXIT_TEMPORARY
