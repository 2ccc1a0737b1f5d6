"""Build chatlog's parts from `Settings`: the one place settings meet constructors."""

from __future__ import annotations

import contextlib
import functools
import getpass
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.backoff
import redis.cluster
import redis.retry
from confluent_kafka.admin import AdminClient

from chatlog.distribution import installed_version
from chatlog.logs import setup_logging
from chatlog.processors import kafka_key_log
from chatlog.processors.audit import AuditTrail
from chatlog.processors.embeddings import EmbeddingModel, ResilientEmbedder
from chatlog.processors.erasure import Erasure, RecallVectors, UserEraser
from chatlog.processors.extractive import ExtractiveSummarizer
from chatlog.processors.kafka_audit import KafkaAuditWriter
from chatlog.processors.kafka_export import KafkaExporter
from chatlog.processors.kafka_history import KafkaHistory, KafkaSessionLog
from chatlog.processors.kafka_key_log import KeysRotated
from chatlog.processors.kafka_keys_tick import KafkaKeysTicker
from chatlog.processors.kafka_lag import KafkaTopicEnds
from chatlog.processors.kafka_projector import KafkaProjector
from chatlog.processors.kafka_replay import REPLAY_BATCH, KafkaReplay, ReplayProgress
from chatlog.processors.projection import ProjectionCore
from chatlog.processors.projector_stats import LIVENESS_BOUND_S
from chatlog.processors.recall_indexing import RecallIndexing
from chatlog.processors.replay import ReplayParts, rebuild, rebuild_partitions
from chatlog.processors.replay_recall import RecallSink
from chatlog.processors.summarizers import (
    CircuitBreaker,
    ResilientSummarizer,
    Summarizer,
)
from chatlog.processors.summary_engine import SummaryEngine, SummaryPolicy, check_policy
from chatlog.producers import kafka_topics
from chatlog.producers.kafka_access import check_access
from chatlog.producers.kafka_keys import KafkaKeyLog
from chatlog.producers.kafka_producer import AsyncConversationProducer, ConversationProducer
from chatlog.producers.kafka_topics import (
    Drift,
    TopicReport,
    TopicSpec,
    broker_count,
    chatlog_topics,
    config_drift,
    ensure_topics,
    keys_tick_interval_ms,
)
from chatlog.projections import tokens
from chatlog.projections.context import SummaryRole, TokenCounter
from chatlog.projections.keys import KeySpace
from chatlog.projections.opening import EventOpener, ViewOpener
from chatlog.projections.recall import EmbeddingModel as IndexModel
from chatlog.projections.redis_claims import AsyncRedisSessionClaims, RedisSessionClaims
from chatlog.projections.redis_erasure import RedisUserSessions
from chatlog.projections.redis_generations import GenerationStore
from chatlog.projections.redis_keys import RedisKeyDirectory
from chatlog.projections.redis_reader import DEFAULT_GENERATION, AsyncRedisReader, RedisReader
from chatlog.projections.redis_store import RedisViewStore
from chatlog.projections.store import ViewStore
from chatlog.projections.view import WindowPolicy
from chatlog.schemas.audit import AuditAction
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.errors import BrokerUnavailable, ConfigError, MissingExtra, StoreUnavailable
from chatlog.schemas.events import ProducerInfo
from chatlog.schemas.keyring import KeyLog, Keyring
from chatlog.schemas.master_keys import LocalKeyProvider
from chatlog.schemas.pii import Detector
from chatlog.schemas.redaction import Mode, RedactionPolicy
from chatlog.schemas.secrets import redacted_url
from chatlog.schemas.transport import kafka_security, redis_tls_options, schema_registry_config
from chatlog.settings import Settings

if TYPE_CHECKING:
    from chatlog.processors.faust_summarizer import FaustSummarizer
    from chatlog.processors.kafka_embedder import KafkaEmbedder
    from chatlog.processors.redis_recall import RedisRecallGenerations
    from chatlog.processors.redis_recall_reader import AsyncRedisRecall, RedisRecall
    from chatlog.prom_metrics import Collector, MetricsServer

__all__ = [
    "admin_client",
    "async_claims",
    "async_reader",
    "async_recall",
    "async_redis_client",
    "audit_trail",
    "audit_writer",
    "check_kafka_access",
    "check_recall",
    "claims",
    "codec",
    "create_topics",
    "erase_user",
    "eraser",
    "exporter",
    "generation_store",
    "generations",
    "kafka_diagnosed",
    "kafka_replay",
    "keys_ticker",
    "live_store",
    "llm_prices",
    "metrics_server",
    "policy",
    "principal",
    "producer",
    "projector",
    "reader",
    "recall",
    "recall_client",
    "recall_embedder",
    "recall_erasure",
    "redaction_policy",
    "redis_answers",
    "redis_client",
    "redis_tls",
    "replay_parts",
    "replay_recall",
    "summarizer",
    "summarizer_worker",
    "summary_policy",
    "token_counter",
]


def codec(settings: Settings) -> EventCodec:
    """The event codec: Confluent framing when a registry is configured."""
    if settings.schema_registry_url is None:
        return EventCodec()
    from chatlog.schemas.kafka_registry import ConfluentSchemaRegistry  # noqa: PLC0415 - optional

    config = schema_registry_config(
        basic_auth=settings.schema_registry_basic_auth,
        ca=settings.schema_registry_ca_file,
        cert=settings.schema_registry_cert_file,
        key=settings.schema_registry_key_file,
    )
    return EventCodec(registry=ConfluentSchemaRegistry(settings.schema_registry_url, config=config))


def producer(
    settings: Settings, *, check_topic: bool = True, flush_on_sigterm: bool = True
) -> ConversationProducer:
    """A producer for the events topic that seals every event under its owner's key.

    `ConfigError` without a master key; with `check_topic`, the events topic must exist
    and the keys topic must shred erased keys within `CHATLOG_KEY_SHRED_WITHIN`.
    """
    provider = key_provider(settings)  # first: no master key, no producer
    with kafka_diagnosed(settings):
        if check_topic:
            check_keys_topic(settings)
        writer = ConversationProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            topic=settings.topic,
            codec=codec(settings),
            config=settings.kafka,
            delivery_timeout=settings.delivery_timeout_s,
            linger_ms=settings.linger_ms,
            check_topic=check_topic,
            flush_on_sigterm=flush_on_sigterm,
        )
    writer.seal_with(keyring(settings, writer, provider=provider))
    writer.redact_with(redaction_policy(settings))
    return writer


def redaction_policy(settings: Settings) -> RedactionPolicy:
    """What the producer does with personal data (CHATLOG_PII_*), checked at start."""
    return RedactionPolicy(
        mode=Mode(settings.pii_mode),
        redactor=Detector(
            region=settings.pii_phone_region,
            custom=settings.pii_patterns,
            allow=settings.pii_allow,
        ),
    )


def admin_client(settings: Settings) -> AdminClient:
    """An AdminClient with the same connection properties as the producer."""
    conf: dict[str, Any] = {
        **settings.kafka,
        "bootstrap.servers": settings.kafka_bootstrap,
        # Through `logging` (masked, filtered), not straight to stderr, as the producer's
        # and the consumers' reports go.
        "logger": logging.getLogger("chatlog.kafka"),
    }
    try:
        return AdminClient(conf)
    except Exception as exc:
        raise ConfigError(f"invalid Kafka admin settings: {exc}") from exc


def create_topics(settings: Settings, *, timeout: float = 30.0) -> list[TopicReport]:
    """Create chatlog's topics as the settings describe; existing ones are left alone."""
    admin = admin_client(settings)
    replication = settings.replication_factor or min(3, broker_count(admin, timeout=timeout))
    return ensure_topics(admin, topic_specs(settings, replication), timeout=timeout)


def topic_specs(settings: Settings, replication_factor: int) -> list[TopicSpec]:
    """chatlog's topics as the settings describe them."""
    return chatlog_topics(
        events_topic=settings.topic,
        dlq_topic=settings.dlq_topic,
        keys_topic=settings.keys_topic,
        partitions=settings.partitions,
        replication_factor=replication_factor,
        min_insync_replicas=settings.min_insync_replicas,
        retention_ms=_ms(settings.retention),
        dlq_retention_ms=_ms(settings.dlq_retention),
        key_shred_within_ms=_ms(settings.key_shred_within),
        audit_topic=settings.audit_topic,
        audit_retention_ms=_ms(settings.audit_retention),
    )


def topic_drift(settings: Settings, *, timeout: float = 30.0) -> list[Drift]:
    """How chatlog's existing topics differ from what the settings say."""
    admin = admin_client(settings)
    specs = topic_specs(settings, settings.replication_factor or 1)
    return config_drift(admin, specs, timeout=timeout)


def check_keys_topic(settings: Settings, *, timeout: float = 30.0) -> None:
    """Refuse to start on a keys topic that would keep erased keys (`ConfigError`)."""
    kafka_topics.check_keys_topic(
        admin_client(settings),
        settings.keys_topic,
        shred_within_ms=_ms(settings.key_shred_within),
        timeout=timeout,
    )


def key_provider(settings: Settings) -> LocalKeyProvider:
    """The master keys, from CHATLOG_MASTER_KEY or CHATLOG_MASTER_KEY_FILE.

    `ConfigError`, in one line that says how to make one, when neither is set: every
    process that writes or reads personal data needs them.
    """
    if settings.master_key is not None:
        return LocalKeyProvider.from_spec(
            settings.master_key.get_secret_value(), setting="CHATLOG_MASTER_KEY"
        )
    path = settings.master_key_file
    if path is None:
        raise ConfigError(
            "no master key is configured, and chatlog seals every user's data under keys it "
            "wraps: set CHATLOG_MASTER_KEY to the output of `chatlog keys new-master-key` "
            "(or CHATLOG_MASTER_KEY_FILE to a file holding it); `make services` keeps one "
            "for the local stack",
            setting="CHATLOG_MASTER_KEY",
        )
    try:
        spec = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"CHATLOG_MASTER_KEY_FILE={path} cannot be read ({exc.strerror}); point it at the "
            f"file holding the master keys",
            setting="CHATLOG_MASTER_KEY_FILE",
        ) from exc
    return LocalKeyProvider.from_spec(spec, setting=f"CHATLOG_MASTER_KEY_FILE ({path})")


def key_directory(settings: Settings, client: redis.Redis | None = None) -> RedisKeyDirectory:
    """Each user's wrapped data keys in Redis, shared by every generation."""
    return RedisKeyDirectory(client or redis_client(settings), prefix=settings.redis_prefix)


def opener(settings: Settings, client: redis.Redis | None = None) -> EventOpener:
    """Opens sealed events for a reader of the log; a key the directory lacks is looked
    for in the keys topic (which rewrites the directory from it) before it is given up."""
    directory = key_directory(settings, client)
    reading = Keyring(key_provider(settings), directory=directory)
    return EventOpener(reading, directory, catch_up=_catch_up(settings, directory))


def _catch_up(
    settings: Settings, directory: RedisKeyDirectory, key_log: KeyLog | None = None
) -> Callable[[], object]:
    """Rewrites `directory` from the keys topic when called (tombstoning, through
    `key_log` if given, erased users' keys that the topic still holds alive)."""

    def catch_up() -> object:
        return kafka_key_log.catch_up_keys(
            directory,
            bootstrap_servers=settings.kafka_bootstrap,
            topic=settings.keys_topic,
            config=settings.kafka,
            key_log=key_log,
        )

    return catch_up


def eraser(
    settings: Settings, producer: ConversationProducer, client: redis.Redis | None = None
) -> UserEraser:
    """Erases users: tombstones and erasure records through `producer` (whose keyring
    then stops sealing for them), the key directory, and every generation in Redis."""
    client = client or redis_client(settings)
    directory = key_directory(settings, client)
    return UserEraser(
        keyring=producer.keyring or keyring(settings, producer, directory),
        directory=directory,
        catch_up=_catch_up(settings, directory, KafkaKeyLog(producer, topic=settings.keys_topic)),
        sessions=RedisUserSessions(client, prefix=settings.redis_prefix),
        keys_topic=settings.keys_topic,
        vectors=recall_erasure(settings),
    )


def recall_erasure(settings: Settings) -> RecallVectors | None:
    """Erases a user's vectors on the recall index's Redis, in every generation; None
    when the `recall` extra is not installed and recall is off (no vector was written by
    this deployment's processes: they could not have)."""
    try:
        from chatlog.projections.redis_vectors import RedisRecallErasure  # noqa: PLC0415
    except MissingExtra:
        if settings.recall:
            raise
        return None
    return RedisRecallErasure(recall_client(settings), prefix=settings.redis_prefix)


def recall_client(settings: Settings) -> redis.Redis:
    """A client of the Redis that holds the recall index (CHATLOG_RECALL_REDIS_URL, else
    the read-model's)."""
    return redis_client(settings, url=settings.recall_redis)


def check_recall(settings: Settings, client: redis.Redis) -> None:
    """`ConfigError`, naming the setting and the fix, unless recall is on and `client`
    (the recall index's Redis) has the query engine."""
    if not settings.recall:
        raise ConfigError(
            "semantic recall is off (CHATLOG_RECALL=false), so there is nothing to embed: "
            "set CHATLOG_RECALL=true (with a Redis that has the query engine in "
            "CHATLOG_RECALL_REDIS_URL) to run the embedder",
            setting="CHATLOG_RECALL",
        )
    from chatlog.projections.redis_vectors import has_query_engine  # noqa: PLC0415 - recall extra

    if not has_query_engine(client):
        raise ConfigError(
            f"the Redis at CHATLOG_RECALL_REDIS_URL ({redacted_url(settings.recall_redis)}) "
            f"has no query engine (RediSearch), which the recall index needs: point "
            f"CHATLOG_RECALL_REDIS_URL at a Redis Stack 7.4 or a Redis 8 (`make services` "
            f"starts one locally; docker-compose.yml runs redis-stack)",
            setting="CHATLOG_RECALL_REDIS_URL",
        )


def recall_embedder(settings: Settings) -> KafkaEmbedder:
    """The embedder process: the events topic into the live generation's recall index.
    Refuses to be built unless recall is on and its Redis has the query engine."""
    from chatlog.processors.kafka_embedder import KafkaEmbedder  # noqa: PLC0415 - recall extra
    from chatlog.processors.redis_recall_writer import RedisRecallWriter  # noqa: PLC0415

    recall = recall_client(settings)
    check_recall(settings, recall)
    client = redis_client(settings)
    model = embedder(settings)
    writer = RedisRecallWriter(
        recall,
        prefix=settings.redis_prefix,
        model=IndexModel(model.model, model.dimension),
        pointer=generations(settings, client),
        views=client,  # the sessions' owners, as the projector holds them
    )
    # An endpoint's call may take its timeout on each of its 4 attempts: not a hang.
    bound = LIVENESS_BOUND_S + 4 * settings.embedding_timeout_s
    return KafkaEmbedder(
        model,
        writer,
        codec=codec(settings),
        opener=opener(settings, client),
        bootstrap_servers=settings.kafka_bootstrap,
        topic=settings.topic,
        group_id=settings.embedder_group,
        instance_id=settings.instance_id,
        session_timeout_s=settings.session_timeout_s,
        config=settings.kafka,
        lag_every_s=1.0 if settings.metrics_port else None,
        liveness_bound_s=bound,
    )


def erase_user(settings: Settings, user_id: str, *, tenant: str = "default") -> Erasure:
    """Erase one user (`chatlog erase`), recorded in the audit trail."""
    with producer(settings, flush_on_sigterm=False) as writer:
        return eraser(settings, writer).erase(user_id, tenant=tenant, audit=audit_trail(settings))


def principal(settings: Settings) -> str:
    """Who the audit trail names for this process: `CHATLOG_PRINCIPAL`, else
    ``<os user>@<host>`` (no principal is authenticated yet; the gateway will pass one)."""
    if settings.principal:
        return settings.principal
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name: a container's bare uid
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def audit_trail(settings: Settings, *, principal_name: str | None = None) -> AuditTrail:
    """The audit trail, for `principal_name` (default `principal(settings)`).

    Free to build: its producer connects at the first record.
    """
    return AuditTrail(
        audit_writer(settings), key_provider(settings), principal_name or principal(settings)
    )


_AUDIT_WRITERS: dict[tuple[object, ...], KafkaAuditWriter] = {}
_AUDIT_WRITERS_LOCK = threading.Lock()


def audit_writer(settings: Settings) -> KafkaAuditWriter:
    """This process's one writer of the settings' audit topic, shared by every trail.

    Two writers in one process would each pay a transactional producer's start and fence
    each other whenever they picked the same partition; one writer serializes the
    process's records instead (about 3 ms each). Closing a trail releases the writer's
    producer; the next record opens it again.
    """
    key = (
        os.getpid(),  # a forked child must not use its parent's producer
        settings.kafka_bootstrap,
        settings.audit_topic,
        tuple(sorted(settings.kafka.items())),
        settings.delivery_timeout_s,
    )
    with _AUDIT_WRITERS_LOCK:
        writer = _AUDIT_WRITERS.get(key)
        if writer is None:
            writer = _AUDIT_WRITERS[key] = KafkaAuditWriter(
                bootstrap_servers=settings.kafka_bootstrap,
                topic=settings.audit_topic,
                config=settings.kafka,
                timeout=settings.delivery_timeout_s,
            )
        return writer


def exporter(settings: Settings, client: redis.Redis | None = None) -> KafkaExporter:
    """Exports a user's sessions from the events topic (`ChatLog.export_user`)."""
    return KafkaExporter(
        bootstrap_servers=settings.kafka_bootstrap,
        topic=settings.topic,
        opener=opener(settings, client),
        codec=codec(settings),
        config=settings.kafka,
        policy=policy(settings),
    )


def topic_ends(settings: Settings) -> KafkaTopicEnds:
    """The events topic's partition ends, for the projector's lag (the gateway's /readyz)."""
    return KafkaTopicEnds(
        bootstrap_servers=settings.kafka_bootstrap, topic=settings.topic, config=settings.kafka
    )


def keyring(
    settings: Settings,
    producer: ConversationProducer,
    directory: RedisKeyDirectory | None = None,
    *,
    provider: LocalKeyProvider | None = None,
) -> Keyring:
    """The keyring: keys logged through `producer` to the keys topic, found in Redis."""
    return Keyring(
        provider or key_provider(settings),
        log=KafkaKeyLog(producer, topic=settings.keys_topic),
        directory=directory or key_directory(settings),
    )


def rotate_keys(settings: Settings) -> KeysRotated:
    """Re-wrap every live data key under the current master key (`chatlog keys rotate`)."""
    check_keys_topic(settings)
    directory = key_directory(settings)
    trail = audit_trail(settings)
    with (
        producer(settings, flush_on_sigterm=False) as writer,
        trail.operation(AuditAction.KEYS_ROTATED) as details,
    ):
        ring = keyring(settings, writer, directory)
        rotated = kafka_key_log.rotate_keys(
            ring,
            directory,
            KafkaKeyLog(writer, topic=settings.keys_topic),
            bootstrap_servers=settings.kafka_bootstrap,
            topic=settings.keys_topic,
            config=settings.kafka,
        )
        details.update(
            master_key=ring.provider.current,
            rewrapped=rotated.rewrapped,
            current=rotated.current,
            erased=rotated.erased,
        )
        return rotated


def _ms(seconds: float | None) -> int:
    return -1 if seconds is None else round(seconds * 1000)


def redis_client(settings: Settings, *, url: str | None = None) -> redis.Redis:
    """A blocking Redis client for `settings.redis_url` (or `url`: the recall index's,
    `settings.recall_redis`), each call bounded in time: the Redis Cluster client when
    CHATLOG_REDIS_CLUSTER is set, for the read-model (the one place either is made).

    It connects, and waits for each reply, at most CHATLOG_REDIS_TIMEOUT_S: redis-py's
    own defaults (5 s, then up to ten retries on a timeout) would hold a read far past
    the timeout its caller asked for while Redis stalls. It retries once, at once, on a
    dropped connection only (a pooled socket Redis closed when it restarted); a timeout
    is the caller's to handle: the projector retries with backoff, a reader raises
    `StoreUnavailable`.
    """
    retry = redis.retry.Retry(redis.backoff.NoBackoff(), 1, (redis.ConnectionError,))
    if settings.redis_cluster and url is None:
        # Typed as the one-node client that chatlog's Redis parts take: it answers every
        # command they send, and the parts that must work otherwise on a cluster (one
        # slot per call) ask `chatlog.projections.redis_cluster.is_cluster`.
        return cast(
            "redis.Redis",
            redis.cluster.RedisCluster.from_url(
                settings.redis_url,
                socket_timeout=settings.redis_timeout_s,
                socket_connect_timeout=settings.redis_timeout_s,
                retry=retry,
                **redis_tls(settings),
            ),
        )
    return redis.Redis.from_url(
        url or settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        retry=retry,
        **redis_tls(settings, url),
    )


def redis_tls(settings: Settings, url: str | None = None) -> dict[str, Any]:
    """redis-py's TLS options for ``rediss://`` (``CHATLOG_REDIS_TLS_*``); none otherwise."""
    return redis_tls_options(
        url or settings.redis_url,
        ca=settings.redis_tls_ca_file,
        cert=settings.redis_tls_cert_file,
        key=settings.redis_tls_key_file,
    )


# Connections an asyncio client holds at most (redis-py's own default too).
_ASYNC_REDIS_CONNECTIONS = 100


def async_redis_client(settings: Settings, *, url: str | None = None) -> redis.asyncio.Redis:
    """`redis_client`, for asyncio (the same bounds).

    Its pool blocks: a call made while all its connections are busy waits up to
    CHATLOG_REDIS_TIMEOUT_S for one. redis-py's default pool refuses it at once
    (``MaxConnectionsError``), so a gateway serving more than 100 requests at a time
    answered the rest 503 while Redis was idle (measured by the gateway benchmark).
    """
    if settings.redis_cluster and url is None:
        # One pool per node, of the same bound. Unlike the one-node pool below, redis-py's
        # cluster client refuses a call made while all of a node's connections are busy
        # (`MaxConnectionsError`, answered as `StoreUnavailable`): more than 100 requests
        # in flight on one node get a 503 on a cluster.
        return cast(
            "redis.asyncio.Redis",
            redis.asyncio.cluster.RedisCluster.from_url(
                settings.redis_url,
                max_connections=_ASYNC_REDIS_CONNECTIONS,
                socket_timeout=settings.redis_timeout_s,
                socket_connect_timeout=settings.redis_timeout_s,
                retry=redis.asyncio.retry.Retry(
                    redis.backoff.NoBackoff(), 1, (redis.ConnectionError,)
                ),
                **redis_tls(settings),
            ),
        )
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url or settings.redis_url,
        max_connections=_ASYNC_REDIS_CONNECTIONS,
        timeout=settings.redis_timeout_s,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        retry=redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 1, (redis.ConnectionError,)),
        **redis_tls(settings, url),
    )
    return redis.asyncio.Redis.from_pool(pool)


def policy(settings: Settings) -> WindowPolicy:
    """The window policy the settings describe."""
    return WindowPolicy(window=settings.window, max_overflow=settings.max_overflow)


def live_store(settings: Settings, client: redis.Redis | None = None) -> RedisViewStore:
    """The view store of the live generation (of the first one if none is live yet).

    It creates nothing: a missing pointer is for the projector to judge (a fresh
    deployment, or lost data), and its store refuses writes into a generation without
    its epoch.
    """
    client = client or redis_client(settings)
    live = generations(settings, client).live()
    return generation_store(settings, live or DEFAULT_GENERATION, client)


def generation_store(
    settings: Settings,
    generation: str,
    client: redis.Redis | None = None,
    *,
    notify: bool = False,
) -> RedisViewStore:
    """The view store of one generation, live or not; with `notify`, it publishes a
    notice for each session it writes (the live projector's, for the gateway)."""
    return RedisViewStore(
        client or redis_client(settings),
        keys=KeySpace(settings.redis_prefix, generation),
        policy=policy(settings),
        ttl_s=settings.session_ttl_s or None,
        notify=notify,
    )


def generations(settings: Settings, client: redis.Redis | None = None) -> GenerationStore:
    """The pointer to the live generation, and the tools to flip, compare and delete."""
    return GenerationStore(client or redis_client(settings), prefix=settings.redis_prefix)


def projector(settings: Settings) -> KafkaProjector:
    """The projector: the events topic into the live generation of the read-model."""
    client = redis_client(settings)
    try:
        live = generations(settings, client).live()
    except StoreUnavailable:
        # Not known yet. The projector looks the live generation up again when it is
        # assigned partitions, and waits there for Redis as for any Redis fault: a
        # projector started during a Redis outage keeps its place and starts projecting
        # when Redis answers, rather than exiting for its supervisor to retry.
        live = None
    notify = settings.applied_notices
    store = generation_store(settings, live or DEFAULT_GENERATION, client, notify=notify)
    core = ProjectionCore(
        store, codec=codec(settings), policy=policy(settings), opener=opener(settings, client)
    )

    def rebuild_lost(stop: threading.Event) -> str:
        # No hand-over: the projector itself continues from the new generation's marks.
        return rebuild(replay_parts(settings), handover_s=0.0, stop=stop).generation

    return KafkaProjector(
        core,
        bootstrap_servers=settings.kafka_bootstrap,
        topic=settings.topic,
        dlq_topic=settings.dlq_topic,
        group_id=settings.projector_group,
        instance_id=settings.instance_id,
        session_timeout_s=settings.session_timeout_s,
        config=settings.kafka,
        batch_size=settings.projector_batch,
        max_hold_s=settings.projector_hold_ms / 1000,
        generations=generations(settings, client),
        generation=live,
        # Notices for gateways (`RedisViewStore.notify`): this store is the live one.
        store_for=lambda generation: generation_store(settings, generation, client, notify=notify),
        on_data_loss=settings.on_data_loss,
        rebuild=rebuild_lost,
        keys_ticker=keys_ticker(settings),
        # Measured for the metrics and readiness only: a second is finer than a scrape.
        lag_every_s=1.0 if settings.metrics_port else None,
    )


def keys_ticker(settings: Settings) -> KafkaKeysTicker:
    """Ticks on the keys topic, often enough for `CHATLOG_KEY_SHRED_WITHIN` to hold when
    nothing else is written there (the projector runs it)."""
    return KafkaKeysTicker.connect(
        settings.kafka_bootstrap,
        settings.keys_topic,
        interval_s=keys_tick_interval_ms(_ms(settings.key_shred_within)) / 1000,
        config=settings.kafka,
    )


# Bounded memory: beyond this many sessions of the partition being read (the replay
# reads one at a time and drops a partition's views when done), the least recent views
# are reloaded from the generation being built. A view holds at most window +
# max_overflow messages, so this bounds the replay's memory whatever the topic's size.
_REPLAY_CACHED_VIEWS = 10_000


def kafka_replay(
    settings: Settings,
    store: ViewStore,
    *,
    batch_size: int = REPLAY_BATCH,
    recall: RecallSink | None = None,
    stop: threading.Event | None = None,
    on_progress: Callable[[ReplayProgress], None] | None = None,
) -> KafkaReplay:
    """A reader of the whole events topic (no consumer group) that folds it into `store`
    (and indexes it with `recall`, when given)."""
    core = ProjectionCore(
        store,
        codec=codec(settings),
        policy=policy(settings),
        cache_size=_REPLAY_CACHED_VIEWS,
        opener=opener(settings),
    )
    return KafkaReplay(
        core,
        bootstrap_servers=settings.kafka_bootstrap,
        topic=settings.topic,
        config=settings.kafka,
        batch_size=batch_size,
        on_progress=on_progress,
        stop=stop,
        recall=recall,
    )


def replay_parts(
    settings: Settings, client: redis.Redis | None = None, *, batch_size: int = REPLAY_BATCH
) -> ReplayParts:
    """What `chatlog.processors.replay.rebuild` and `verify` work with, from `settings`."""
    client = client or redis_client(settings)

    def replay_for(
        store: ViewStore,
        *,
        recall: RecallSink | None = None,
        stop: threading.Event | None = None,
        on_progress: Callable[[ReplayProgress], None] | None = None,
    ) -> KafkaReplay:
        return kafka_replay(
            settings,
            store,
            batch_size=batch_size,
            recall=recall,
            stop=stop,
            on_progress=on_progress,
        )

    return ReplayParts(
        generations=generations(settings, client),
        store_for=lambda generation: generation_store(settings, generation, client),
        replay_for=replay_for,
        # Pickled into each spawned worker: the settings travel as data, not as clients;
        # as Python values, not JSON, whose dump masks the secrets (SecretStr).
        worker=functools.partial(_replay_worker, settings.model_dump(), batch_size),
        recall=replay_recall(settings) if settings.recall else None,
    )


def replay_recall(settings: Settings) -> RedisRecallGenerations:
    """The recall indexes a replay builds, drops and compares (CHATLOG_RECALL on), on
    CHATLOG_RECALL_REDIS_URL; the embedder is loaded at the first index built."""
    # The recall extra (redisvl): imported only with recall on.
    from chatlog.processors.redis_recall import RedisRecallGenerations  # noqa: PLC0415

    made: list[ResilientEmbedder] = []

    def indexing() -> RecallIndexing:
        made.append(embedder(settings))
        return RecallIndexing(made[-1], codec=codec(settings), opener=opener(settings))

    def close() -> None:
        while made:
            made.pop().close()

    spec = settings.embedding
    return RedisRecallGenerations(
        recall_client(settings),
        prefix=settings.redis_prefix,
        model=IndexModel(spec.model, spec.dimension),
        indexing=indexing,
        close=close,
    )


def _replay_worker(
    data: dict[str, object],
    batch_size: int,
    generation: str,
    partitions: list[int],
    ends: dict[int, int],
) -> None:
    """A replay worker process: its own clients, built from the parent's settings."""
    settings = Settings.model_validate(data)
    # A spawned process starts with no logging of its own.
    setup_logging("replay", log_format=settings.log_format)
    rebuild_partitions(replay_parts(settings, batch_size=batch_size), generation, partitions, ends)


def view_opener(settings: Settings) -> ViewOpener:
    """Opens stored views for a reader, with keys unwrapped under the master keys."""
    return ViewOpener(Keyring(key_provider(settings)))


def claims(settings: Settings, client: redis.Redis | None = None) -> RedisSessionClaims:
    """Session claims: an append into another user's session, or a session over the user's
    ``CHATLOG_MAX_SESSIONS_PER_USER``, is refused before it is sent."""
    return RedisSessionClaims(
        client or redis_client(settings),
        prefix=settings.redis_prefix,
        ttl_s=settings.session_ttl_s or None,
        max_sessions=settings.max_sessions_per_user,
    )


def async_claims(
    settings: Settings, client: redis.asyncio.Redis | None = None
) -> AsyncRedisSessionClaims:
    """`claims` for asyncio callers."""
    return AsyncRedisSessionClaims(
        client or async_redis_client(settings),
        prefix=settings.redis_prefix,
        ttl_s=settings.session_ttl_s or None,
        max_sessions=settings.max_sessions_per_user,
    )


def reader(settings: Settings, client: redis.Redis | None = None) -> RedisReader:
    """A blocking reader of the live generation."""
    return RedisReader(
        client or redis_client(settings),
        prefix=settings.redis_prefix,
        ttl_s=settings.session_ttl_s or None,
        count_tokens=token_counter(settings),
        summary_role=SummaryRole(settings.summary_role),
        opener=view_opener(settings),
    )


def async_reader(settings: Settings) -> AsyncRedisReader:
    """An asyncio reader of the live generation."""
    return AsyncRedisReader(
        async_redis_client(settings),
        prefix=settings.redis_prefix,
        ttl_s=settings.session_ttl_s or None,
        count_tokens=token_counter(settings),
        summary_role=SummaryRole(settings.summary_role),
        opener=view_opener(settings),
    )


def recall(settings: Settings, reader: RedisReader) -> RedisRecall | None:
    """Recall over the recall index (``CHATLOG_RECALL_REDIS_URL``) of `reader`'s live
    generation, embedding queries as the settings say; None while ``CHATLOG_RECALL`` is
    off. Needs the recall extra."""
    if not settings.recall:
        return None
    from chatlog.processors.redis_recall_reader import RedisRecall  # noqa: PLC0415 - the recall extra

    return RedisRecall(recall_client(settings), reader=reader, embedder=embedder(settings))


def async_recall(settings: Settings, reader: AsyncRedisReader) -> AsyncRedisRecall | None:
    """`recall` for asyncio callers."""
    if not settings.recall:
        return None
    from chatlog.processors.redis_recall_reader import AsyncRedisRecall  # noqa: PLC0415

    return AsyncRedisRecall(
        async_redis_client(settings, url=settings.recall_redis),
        reader=reader,
        embedder=embedder(settings),
    )


def summarizer(settings: Settings) -> tuple[Summarizer, Callable[[], Awaitable[None]]]:
    """The summarizer the settings name, and how to close it.

    With ``CHATLOG_LLM_BASE_URL`` set: an LLM behind the OpenAI chat API, with retries and
    a circuit breaker. Without: the offline extractive summarizer.
    """
    if settings.llm_base_url is None:
        return ExtractiveSummarizer(count_tokens=token_counter(settings)), _nothing_to_close
    from chatlog.processors.openai_summarizer import OpenAISummarizer  # noqa: PLC0415 - optional

    configured = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    api_key = configured or os.environ.get("OPENAI_API_KEY") or "unused"
    llm = OpenAISummarizer(
        base_url=settings.llm_base_url,
        api_key=api_key,
        model=settings.llm_model,
        timeout=settings.llm_timeout_s,
        ca_file=None if settings.llm_ca_file is None else str(settings.llm_ca_file),
    )
    breaker = CircuitBreaker(reset_timeout=settings.llm_breaker_reset_s)
    return ResilientSummarizer(llm, breaker=breaker), llm.aclose


def embedder(settings: Settings) -> ResilientEmbedder:
    """The embedder the settings name, with batching, retries and a circuit breaker.

    ``CHATLOG_EMBEDDING_PROVIDER=offline`` (the default): wordllama, in-process; ``openai``:
    an OpenAI-compatible endpoint. Close it with `close` (threads) or `aclose` (asyncio).
    """
    spec = settings.embedding
    model: EmbeddingModel
    if spec.provider == "offline":
        from chatlog.processors.wordllama_embeddings import (  # noqa: PLC0415 - optional
            WordLlamaEmbedder,
        )

        model = WordLlamaEmbedder(dimension=spec.dimension)
    else:
        from chatlog.processors.openai_embeddings import OpenAIEmbedder  # noqa: PLC0415

        configured = settings.embedding_api_key
        model = OpenAIEmbedder(
            base_url=settings.embedding_base_url,
            api_key=(configured.get_secret_value() if configured else None)
            or os.environ.get("OPENAI_API_KEY")
            or "unused",
            model=spec.model,
            dimension=spec.dimension,
            timeout=settings.embedding_timeout_s,
            send_dimension=settings.embedding_send_dimension,
            ca_file=None if settings.embedding_ca_file is None else str(settings.embedding_ca_file),
        )
    return ResilientEmbedder(
        model,
        batch_size=settings.embedding_batch_size,
        max_chars=settings.embedding_max_chars,
        breaker=CircuitBreaker(reset_timeout=settings.embedding_breaker_reset_s),
    )


def kafka_history(settings: Settings) -> KafkaHistory:
    """Point-in-time reads from the events topic, folding as the projector folds."""
    return KafkaHistory(
        bootstrap_servers=settings.kafka_bootstrap,
        topic=settings.topic,
        policy=policy(settings),
        codec=codec(settings),
        config=settings.kafka,
        count_tokens=token_counter(settings),
        summary_role=SummaryRole(settings.summary_role),
        opener=opener(settings),
    )


def token_counter(settings: Settings) -> TokenCounter:
    """The token counter ``CHATLOG_TOKENIZER`` names (checked once, at start-up)."""
    try:
        return tokens.token_counter(settings.tokenizer)
    except ConfigError as exc:
        raise ConfigError(f"CHATLOG_TOKENIZER: {exc}", setting="CHATLOG_TOKENIZER") from exc
    except MissingExtra as exc:
        raise MissingExtra(
            f"CHATLOG_TOKENIZER: {exc}", setting="CHATLOG_TOKENIZER", **exc.context
        ) from exc


def summary_policy(settings: Settings) -> SummaryPolicy:
    """When and how much the summarizer summarizes."""
    return SummaryPolicy(
        threshold=settings.summary_threshold,
        max_summary_tokens=settings.summary_max_tokens,
        max_in_flight=settings.summarizer_concurrency,
        failure_cooldown_s=settings.summary_retry_s,
    )


# How long the summarizer's producer may flush when it stops (see `summarizer_worker`).
_SUMMARY_FLUSH_S = 2.0


def summarizer_worker(settings: Settings) -> FaustSummarizer:
    """The summarizer process: a faust agent over the events topic, into the same topic."""
    from chatlog.processors.faust_summarizer import FaustSummarizer  # noqa: PLC0415 - imports faust

    # Checked here, before faust starts: inside the worker an error only stops the agent.
    check_policy(policy(settings), summary_policy(settings))
    token_counter(settings)
    # faust consumes with aiokafka: the same security, read from the same properties.
    security = kafka_security(settings.kafka)
    # A refused password or certificate is a setting to fix: found here, by the
    # producers' client, rather than by aiokafka retrying inside faust.
    check_kafka_access(settings)

    async def build() -> tuple[SummaryEngine, Callable[[], Awaitable[None]]]:
        # Built in the worker's event loop: the asyncio clients belong to it.
        views = async_reader(settings)
        # faust owns SIGTERM in this process; the producer is flushed when the agent stops.
        publisher = AsyncConversationProducer(producer(settings, flush_on_sigterm=False))
        llm, close_llm = summarizer(settings)
        engine = SummaryEngine(
            llm,
            views,
            publisher,
            window=policy(settings),
            policy=summary_policy(settings),
            codec=codec(settings),
            opener=opener(settings),
            # Withheld summaries are rebuilt from the log, never from what they replace.
            log=KafkaSessionLog(kafka_history(settings)),
            producer=ProducerInfo(
                client="chatlog-summarizer",
                version=installed_version(),
                host=socket.gethostname(),
            ),
        )

        async def close() -> None:
            try:
                # Bounded, so that a SIGTERM is obeyed with the broker down: a summary
                # not delivered by then has its record uncommitted and is asked again.
                await publisher.aclose(_SUMMARY_FLUSH_S)
            finally:
                await close_llm()
                await views.client.aclose()

        return engine, close

    return FaustSummarizer(
        build,
        bootstrap_servers=settings.kafka_bootstrap,
        topic=settings.topic,
        group_id=settings.summarizer_group,
        datadir=settings.state_dir / "faust",
        instance_id=settings.instance_id,
        session_timeout_s=settings.session_timeout_s,
        security=security,
    )


def check_kafka_access(settings: Settings, *, timeout: float = 10.0) -> None:
    """Fail fast, naming the setting, when Kafka refuses chatlog's credentials or TLS
    (`ConfigError`); returns when the brokers answer, or when none does (an outage is
    the caller's to report or wait out)."""
    check_access(settings.kafka_bootstrap, settings.kafka, timeout=timeout)


@contextlib.contextmanager
def kafka_diagnosed(settings: Settings) -> Iterator[None]:
    """`BrokerUnavailable` raised in the block becomes the `ConfigError` of a broker that
    refuses the credentials or the TLS, when that is why it did not answer: librdkafka
    reports both as an unreachable broker, which a retry cannot mend."""
    try:
        yield
    except BrokerUnavailable:
        check_kafka_access(settings, timeout=_DIAGNOSIS_S)
        raise


# Enough for a refusal to come back (a few hundred ms) on a loaded machine.
_DIAGNOSIS_S = 5.0


async def _nothing_to_close() -> None:
    return None


def redis_answers(client: redis.Redis) -> str | None:
    """Why Redis does not answer a PING (a readiness check); None when it does."""
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return f"Redis does not answer: {exc}"
    return None


def metrics_server(
    settings: Settings,
    *collectors: Collector,
    live: Callable[[], str | None],
    ready: Callable[[], str | None],
) -> MetricsServer | None:
    """The metrics and health server of a long-lived process, serving from a thread;
    None when ``CHATLOG_METRICS_PORT`` is unset or 0. Needs the ``metrics`` extra."""
    if not settings.metrics_port:
        return None
    from chatlog.prom_metrics import MetricsServer, registry_of  # noqa: PLC0415 - the extra

    host, port = settings.metrics_host, settings.metrics_port
    try:
        server = MetricsServer(
            registry_of(*collectors), host=host, port=port, live=live, ready=ready
        )
    except OSError as exc:
        raise ConfigError(
            f"CHATLOG_METRICS_PORT={port}: cannot listen on {host}:{port} ({exc.strerror}); "
            f"another process holds it? Give each process on a host a port of its own",
            setting="CHATLOG_METRICS_PORT",
        ) from exc
    return server.start()


def llm_prices(settings: Settings) -> tuple[float, float] | None:
    """Dollars per million prompt and completion tokens, when both are configured."""
    if settings.llm_price_input_per_mtok is None or settings.llm_price_output_per_mtok is None:
        return None
    return settings.llm_price_input_per_mtok, settings.llm_price_output_per_mtok
