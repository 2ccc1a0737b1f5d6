"""Build chatlog's parts from `Settings`: the one place settings meet constructors."""

from __future__ import annotations

import redis
import redis.asyncio
from confluent_kafka.admin import AdminClient

from chatlog.settings import Settings
from processors.kafka_projector import KafkaProjector
from processors.projection import ProjectionCore
from producers.kafka_producer import ConversationProducer
from producers.kafka_topics import TopicReport, broker_count, chatlog_topics, ensure_topics
from projections.keys import KeySpace
from projections.redis_reader import DEFAULT_GENERATION, AsyncRedisReader, RedisReader
from projections.redis_store import RedisViewStore, redis_errors, text
from projections.view import WindowPolicy
from schemas.codec import EventCodec
from schemas.errors import ConfigError

__all__ = [
    "admin_client",
    "async_reader",
    "codec",
    "create_topics",
    "live_store",
    "policy",
    "producer",
    "projector",
    "reader",
    "redis_client",
]


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


def redis_client(settings: Settings) -> redis.Redis:
    """A blocking Redis client for `settings.redis_url`."""
    return redis.Redis.from_url(settings.redis_url)


def policy(settings: Settings) -> WindowPolicy:
    """The window policy the settings describe."""
    return WindowPolicy(window=settings.window, max_overflow=settings.max_overflow)


def live_store(settings: Settings, client: redis.Redis | None = None) -> RedisViewStore:
    """The view store of the live generation (naming the first one if none is live yet)."""
    client = client or redis_client(settings)
    keys = KeySpace(settings.redis_prefix)
    with redis_errors():
        client.set(keys.pointer, DEFAULT_GENERATION, nx=True)
        live = client.get(keys.pointer)
    return RedisViewStore(
        client,
        keys=keys.with_generation(text(live) if live else DEFAULT_GENERATION),
        policy=policy(settings),
        ttl_s=settings.session_ttl_s or None,
    )


def projector(settings: Settings) -> KafkaProjector:
    """The projector: the events topic into the live generation of the read-model."""
    core = ProjectionCore(live_store(settings), codec=codec(settings), policy=policy(settings))
    return KafkaProjector(
        core,
        bootstrap_servers=settings.kafka_bootstrap,
        topic=settings.topic,
        dlq_topic=settings.dlq_topic,
        group_id=settings.projector_group,
        config=settings.kafka,
        batch_size=settings.projector_batch,
    )


def reader(settings: Settings, client: redis.Redis | None = None) -> RedisReader:
    """A blocking reader of the live generation."""
    return RedisReader(
        client or redis_client(settings),
        prefix=settings.redis_prefix,
        ttl_s=settings.session_ttl_s or None,
    )


def async_reader(settings: Settings) -> AsyncRedisReader:
    """An asyncio reader of the live generation."""
    return AsyncRedisReader(
        redis.asyncio.Redis.from_url(settings.redis_url),
        prefix=settings.redis_prefix,
        ttl_s=settings.session_ttl_s or None,
    )
