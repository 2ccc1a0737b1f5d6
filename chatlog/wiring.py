"""Build chatlog's parts from `Settings`: the one place settings meet constructors."""

from __future__ import annotations

from confluent_kafka.admin import AdminClient

from chatlog.settings import Settings
from producers.kafka_producer import ConversationProducer
from producers.kafka_topics import TopicReport, broker_count, chatlog_topics, ensure_topics
from schemas.codec import EventCodec
from schemas.errors import ConfigError

__all__ = ["admin_client", "codec", "create_topics", "producer"]


def codec(settings: Settings) -> EventCodec:
    """The event codec: Confluent framing when a registry is configured."""
    if settings.schema_registry_url is None:
        return EventCodec()
    from schemas.kafka_registry import ConfluentSchemaRegistry  # noqa: PLC0415 - optional

    return EventCodec(registry=ConfluentSchemaRegistry(settings.schema_registry_url))


def producer(
    settings: Settings, *, check_topic: bool = True, flush_on_sigterm: bool = True
) -> ConversationProducer:
    """A producer for the events topic, configured from `settings`."""
    return ConversationProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        topic=settings.topic,
        codec=codec(settings),
        config=settings.kafka,
        delivery_timeout=settings.delivery_timeout_s,
        linger_ms=settings.linger_ms,
        check_topic=check_topic,
        flush_on_sigterm=flush_on_sigterm,
    )


def admin_client(settings: Settings) -> AdminClient:
    """An AdminClient with the same connection properties as the producer."""
    try:
        return AdminClient({**settings.kafka, "bootstrap.servers": settings.kafka_bootstrap})
    except Exception as exc:
        raise ConfigError(f"invalid Kafka admin settings: {exc}") from exc


def create_topics(settings: Settings, *, timeout: float = 30.0) -> list[TopicReport]:
    """Create chatlog's topics as the settings describe; existing ones are left alone."""
    admin = admin_client(settings)
    replication = settings.replication_factor or min(3, broker_count(admin, timeout=timeout))
    specs = chatlog_topics(
        events_topic=settings.topic,
        dlq_topic=settings.dlq_topic,
        partitions=settings.partitions,
        replication_factor=replication,
        min_insync_replicas=settings.min_insync_replicas,
    )
    return ensure_topics(admin, specs, timeout=timeout)
