"""The producer: publish conversation events to Kafka and return their positions.

What this adds to a bare confluent-kafka Producer:

* The guarantees chatlog relies on are not optional: idempotence on, ``acks=all``, the
  Java-compatible murmur2 partitioner, key = session_id. Settings that would weaken them
  are refused at construction, as is any property librdkafka does not know.
* Every publish resolves to a `Position` (partition, offset), the token a reader passes to
  wait for its own write. `publish` waits for it; `send` returns a future at once;
  `publish_many` sends a batch and waits once; `AsyncConversationProducer` awaits it.
* Adaptive linger: what a caller waits for (`publish`, `publish_many`) goes out at once
  when nothing else is pending, rather than after linger.ms; records sent back to back
  batch as linger.ms says (see `ConversationProducer._waited`).
* Failures become chatlog errors that say what to do: no broker (`BrokerUnavailable`), no
  topic (`TopicMissing`), a full local queue for too long (`QueueFull`), and so on. An
  event sent but not acknowledged is an `OutcomeUnknown` (`PublishTimeout`,
  `DeliveryFailed`): it may be stored, so it is retried as the same event. A publish
  never hangs past its timeout.
* Pending events are flushed on `close`, at interpreter exit, and on SIGTERM.
* Personal data is redacted (`redact_with`, `chatlog.schemas.redaction`), then every
  personal field sealed (`seal_with`), before an event is encoded: nothing downstream,
  the topic, the dead-letter topic, Redis or a summarizer's LLM, sees an original.

One background thread serves librdkafka's delivery reports, so callers on any thread (or
an asyncio loop) only wait on futures; a caller whose records go out at once serves its
own, and the thread stays out of its way meanwhile.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import logging
import signal
import socket
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any, Self, Unpack

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from chatlog.distribution import installed_version
from chatlog.producers.commands import MessageFields, append_message
from chatlog.producers.kafka_topics import kafka_reason, topic_partitions
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.errors import (
    ChatlogError,
    ConfigError,
    DeliveryFailed,
    InvalidEvent,
    InvalidInput,
    NotQueued,
    PublishTimeout,
    QueueFull,
    TopicMissing,
)
from chatlog.schemas.events import ConversationEvent, ProducerInfo, Role, epoch_millis
from chatlog.schemas.keyring import Keyring
from chatlog.schemas.position import Position
from chatlog.schemas.redaction import MAC_PURPOSE, Mode, RedactionPolicy
from chatlog.schemas.sealing import KeyScope, Mac, seal_event

__all__ = ["AsyncConversationProducer", "ConversationProducer"]

# Properties chatlog's guarantees rest on: per-session order needs idempotence with
# acks=all (no reordering on retry), and cross-language placement needs murmur2.
_REQUIRED = {"enable.idempotence": "true", "acks": "all", "partitioner": "murmur2_random"}
_RESERVED = {"bootstrap.servers", "error_cb", "on_delivery", "message.timeout.ms"}
_KAFKA_LOG = logging.getLogger("chatlog.kafka")
_BROKER_DOWN = {KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE}
_NO_TOPIC = {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC}


@dataclass(frozen=True, slots=True)
class _Record:
    """One record to produce; `context` names it in errors (topic, session)."""

    topic: str
    key: str
    value: bytes | None
    timestamp: int  # ms; 0 for the client's clock
    context: dict[str, Any]


class ConversationProducer:
    """Publishes `ConversationEvent`s to the events topic, keyed by session_id."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topic: str = "chatlog.events",
        codec: EventCodec | None = None,
        config: Mapping[str, Any] | None = None,
        delivery_timeout: float = 30.0,
        queue_timeout: float = 10.0,
        linger_ms: int = 2,
        check_topic: bool = True,
        check_timeout: float = 10.0,
        flush_on_sigterm: bool = True,
    ) -> None:
        self.topic = topic
        self.bootstrap_servers = bootstrap_servers
        self.codec = codec or EventCodec()
        self.delivery_timeout = delivery_timeout
        self.queue_timeout = queue_timeout
        self.info = ProducerInfo(
            client="chatlog-python", version=installed_version(), host=socket.gethostname()
        )
        self._last_broker_error: KafkaError | None = None
        self._keyring: Keyring | None = None
        self._redaction: RedactionPolicy | None = None
        # The linger librdkafka applies (a Kafka property may override the setting).
        given = [config.get(key) for key in ("linger.ms", "queue.buffering.max.ms") if config]
        self._linger_s = float(next((v for v in given if v is not None), linger_ms)) / 1000
        self._producer = _build_producer(
            bootstrap_servers=bootstrap_servers,
            config=config or {},
            delivery_timeout=delivery_timeout,
            linger_ms=linger_ms,
            error_cb=self._on_client_error,
        )
        self._closed = threading.Event()
        # Records handed to librdkafka whose delivery report has not come: what close()
        # reports as unacknowledged (librdkafka's own count includes error events too).
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        # Callers serving their own delivery reports (`_waited`), and the poller's cue that
        # it has reports to serve again (a first record in flight, or the callers done).
        self._hurrying = 0
        # A lone record an asyncio caller awaits: the poller sends it at once (`_rush`).
        self._rushed = False
        self._poll_cue = threading.Condition(self._in_flight_lock)
        self._poller = threading.Thread(
            target=self._serve_delivery_reports, name="chatlog-producer-poll", daemon=True
        )
        self._poller.start()
        _LIVE.add(self)
        if flush_on_sigterm:
            _install_sigterm_flush()
        if check_topic:
            try:
                self.check(timeout=check_timeout)
            except Exception:
                # A constructor that raises must not leave its poller thread running.
                self._stop()
                raise

    # -- publishing -------------------------------------------------------------------

    def append(
        self,
        session_id: str,
        *,
        user_id: str,
        role: Role | str,
        content: str,
        timeout: float | None = None,
        **fields: Unpack[MessageFields],
    ) -> Position:
        """Append one chat message to `session_id` and wait for its position."""
        event = append_message(
            session_id, user_id=user_id, role=role, content=content, producer=self.info, **fields
        )
        return self.publish(event, timeout=timeout)

    def publish(self, event: ConversationEvent, *, timeout: float | None = None) -> Position:
        """Publish `event` and wait until the broker acknowledged it."""
        record = self._event_record(event, self.encode(event))
        (future,) = self._waited([record])
        return self.wait(future, what=_event_name(event), timeout=timeout)

    def publish_many(
        self, events: Iterable[ConversationEvent], *, timeout: float | None = None
    ) -> list[Position]:
        """Publish a batch without waiting per event; positions in the batch's order.

        Events are encoded (and so validated) before the first is sent, so a batch with a
        bad event publishes nothing.
        """
        payloads = [(event, self.encode(event)) for event in events]
        futures = self._waited([self._event_record(event, value) for event, value in payloads])
        limit = self._wait_limit(timeout)
        return [
            _result(f, limit, what=_event_name(event))
            for f, (event, _) in zip(futures, payloads, strict=True)
        ]

    def send(self, event: ConversationEvent) -> Future[Position]:
        """Publish `event` without waiting; the future resolves to its position."""
        return self._send_encoded(event, self.encode(event))

    def seal_with(self, keyring: Keyring) -> None:
        """Seal every event's personal fields under its owner's key from now on.

        A method rather than an argument: the keyring logs new keys through this very
        producer (`chatlog.producers.kafka_keys`), so it is made after it.
        """
        self._keyring = keyring

    @property
    def keyring(self) -> Keyring | None:
        """The keyring that seals this producer's events (None: they go unsealed)."""
        return self._keyring

    def redact_with(self, policy: RedactionPolicy) -> None:
        """Redact every event's personal data as `policy` says from now on.

        After `seal_with`: each redaction keeps a MAC made with the owner's data key,
        and tokenize's originals are sealed under it. `ConfigError`
        without a keyring (unless the mode is off).
        """
        if policy.mode is not Mode.OFF and self._keyring is None:
            why = (
                "keeps each original sealed under its owner's data key"
                if policy.mode is Mode.TOKENIZE
                else "records a keyed HMAC of each original, made with its owner's data key"
            )
            raise ConfigError(
                f"CHATLOG_PII_MODE={policy.mode.value} {why}, but this producer has no "
                f"keyring (it seals nothing): call seal_with(keyring) first, or set "
                f"CHATLOG_PII_MODE=off",
                setting="CHATLOG_PII_MODE",
            )
        self._redaction = policy

    @property
    def redaction(self) -> RedactionPolicy | None:
        """The policy that redacts this producer's events (None: nothing is redacted)."""
        return self._redaction

    def encode(self, event: ConversationEvent) -> bytes:
        """`event` as the bytes it is published as: redacted and sealed (as configured),
        then encoded.

        Sealing may make the owner's first key, which is logged and acknowledged first;
        `Erased` if the owner was erased (nothing is sent).
        """
        scope = KeyScope.of(event)  # redaction keeps the owner
        if self._redaction is not None:
            event = self._redaction.apply(event, functools.partial(self._mac, scope))
        if self._keyring is not None and event.sealed is None:
            event = seal_event(event, self._keyring.for_writing(scope))
        if event.tokens and event.sealed is None:
            # A token's original is personal data by definition: it never travels clear.
            raise InvalidInput(
                f"event {event.event_id} carries tokenized originals but is not sealed; "
                f"publish it through a producer with a keyring",
                session_id=event.session_id,
            )
        return self.codec.encode(event)

    def _mac(self, scope: KeyScope, data: bytes) -> Mac:
        assert self._keyring is not None  # redact_with refuses a producer without one
        # The owner's own key: equal values of two users never match, and the user's
        # erasure leaves nothing to test a guess against.
        return self._keyring.for_writing(scope).mac(MAC_PURPOSE, data)

    def send_record(
        self, topic: str, *, key: str, value: bytes | None, **context: Any
    ) -> Future[Position]:
        """Publish one record of another chatlog topic (`chatlog.keys`) with the same
        client, guarantees and errors as events; `value` None is a tombstone."""
        # Timestamp 0: the client's clock.
        return self._send_record(_Record(topic, key, value, 0, {"topic": topic, **context}))

    def wait(
        self, future: Future[Position], *, what: str, timeout: float | None = None
    ) -> Position:
        """The position `future` resolves to, within the delivery timeout (or `timeout`);
        `PublishTimeout` naming `what` if no delivery report came."""
        return _result(future, self._wait_limit(timeout), what=what)

    def flush(self, timeout: float = 30.0) -> int:
        """Wait until every pending event is acknowledged; returns how many are left."""
        return int(self._producer.flush(timeout))

    def check(self, *, timeout: float = 10.0) -> int:
        """Fail fast: raise unless the broker answers and the topic exists.

        Returns the topic's partition count.
        """
        return topic_partitions(
            self._producer, self.topic, bootstrap_servers=self.bootstrap_servers, timeout=timeout
        )

    def close(self, timeout: float = 30.0) -> None:
        """Flush pending events and stop; idempotent."""
        if self._closed.is_set():
            return
        self.flush(timeout)
        with self._in_flight_lock:
            left = self._in_flight
        if left:
            # Fail the undelivered events' futures now rather than keep them (and this
            # client, which their callbacks reference) queued and retrying until exit.
            self._producer.purge()
            self._producer.poll(0)
        self._stop()
        if left:
            raise PublishTimeout(
                f"{left} events were still unacknowledged after {timeout:g} s at close; "
                f"they may or may not be stored",
                topic=self.topic,
            )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------

    def _stop(self) -> None:
        self._closed.set()
        with self._poll_cue:
            self._poll_cue.notify()
        self._poller.join()
        _LIVE.discard(self)

    def _waited(self, records: Sequence[_Record]) -> list[Future[Position]]:
        """Produce `records`, which the caller waits for next: at once, when nothing else
        is pending (see `_hurry`), else batched as linger.ms says.

        Encoded before: encoding may publish the owner's first key and wait for it, which
        must not happen inside the hurry (the poller stays out until `_end_hurry`)."""
        lone = self._begin_hurry()
        try:
            futures = [self._send_record(record) for record in records]
            if lone:
                self._hurry()
        finally:
            if lone:
                self._end_hurry()
        return futures

    def _begin_hurry(self) -> bool:
        """Whether the records about to be produced go out at once: True when nothing is
        pending (and linger.ms is not 0 already); then call `_hurry`, and `_end_hurry`."""
        if self._linger_s <= 0:
            return False
        with self._poll_cue:
            if self._in_flight:
                # Others are pending: linger.ms gathers these records with them.
                return False
            self._hurrying += 1
            return True

    def _hurry(self) -> None:
        """Send what is queued now, and serve the delivery reports until it is acknowledged.

        A lone append (a chat turn) need not wait out linger.ms for company that is not
        coming. librdkafka's `flush` sends what is queued without waiting out linger.ms
        for as long as the call lasts, and serves the delivery reports in this thread;
        the poller thread stays out meanwhile (`_serve_delivery_reports`), or it could
        take the report this call waits for. Bounded by linger.ms: after that the
        records would have gone anyway, and the caller waits for them as usual.
        """
        self._producer.flush(self._linger_s)

    def _end_hurry(self) -> None:
        with self._poll_cue:
            self._hurrying -= 1
            if self._in_flight and not self._hurrying:
                self._poll_cue.notify()  # reports left to serve (linger.ms passed first)

    def _send_encoded(self, event: ConversationEvent, value: bytes) -> Future[Position]:
        return self._send_record(self._event_record(event, value))

    def _event_record(self, event: ConversationEvent, value: bytes) -> _Record:
        return _Record(
            self.topic,
            key=event.session_id,
            value=value,
            timestamp=epoch_millis(event.occurred_at),
            context={"topic": self.topic, "session_id": event.session_id},
        )

    def _send_record(self, record: _Record) -> Future[Position]:
        deadline = time.monotonic() + self.queue_timeout
        while True:
            future = self._try_produce(record)
            if future is not None:
                return future
            # The local queue is full: it drains as the broker acknowledges and the
            # reports are served, here too (the poller stays out while a caller of
            # `_waited` hurries, and that caller may be this one).
            self._raise_if_queue_stuck(record, deadline)
            self._producer.poll(0.005)

    def _try_produce(self, record: _Record, *, rush: bool = False) -> Future[Position] | None:
        """Hand `record` to librdkafka; None when its local queue is full.

        `rush`: the caller awaits it and cannot flush itself (an event loop); if it is
        the only record pending, the poller sends it at once (`_serve_delivery_reports`).
        """
        if self._closed.is_set():
            raise InvalidInput("the producer is closed", topic=record.topic)
        future: Future[Position] = Future()
        # Running from the start: a record handed to librdkafka goes whatever its caller
        # does, so an await that is cancelled (a timeout, a client gone) must not cancel
        # this future; its delivery report could not set a cancelled one's result.
        future.set_running_or_notify_cancel()
        try:
            self._producer.produce(
                record.topic,
                value=record.value,
                key=record.key.encode("utf-8"),
                timestamp=record.timestamp,
                on_delivery=lambda err, msg: self._on_delivery(future, err, msg, record.context),
            )
        except BufferError:
            return None
        except KafkaException as exc:
            raise self._error(exc.args[0], record.context, sent=False) from exc
        with self._poll_cue:
            self._in_flight += 1
            if self._in_flight == 1 and not self._hurrying:
                # Decided with the count, so that the poller, woken here, sees it.
                self._rushed = rush and self._linger_s > 0
                self._poll_cue.notify()  # the poller has reports to wait for again
        return future

    def _raise_if_queue_stuck(self, record: _Record, deadline: float) -> None:
        if time.monotonic() >= deadline:
            raise QueueFull(
                f"the producer queue stayed full for {self.queue_timeout:g} s; the broker at "
                f"{self.bootstrap_servers} is slow or down",
                **record.context,
            )

    def _on_delivery(
        self,
        future: Future[Position],
        err: KafkaError | None,
        msg: Message,
        context: dict[str, Any],
    ) -> None:
        with self._in_flight_lock:
            self._in_flight -= 1
        partition, offset = msg.partition(), msg.offset()
        if err is None and partition is not None and offset is not None:
            # A broker answered: an older connection error no longer explains a timeout.
            self._last_broker_error = None
            future.set_result(Position(partition, offset))
        elif err is None:
            # A retried send that the broker had already written (librdkafka's duplicate
            # sequence): stored, but the broker did not say where.
            future.set_exception(
                DeliveryFailed(
                    "the broker acknowledged the event without its position (a retried send "
                    "it had already stored); retry with the same event (the same message_id) "
                    "to learn a position: the projection keeps it once",
                    **context,
                )
            )
        else:
            future.set_exception(self._error(err, context, sent=True))

    def _error(self, err: KafkaError, context: dict[str, Any], *, sent: bool) -> ChatlogError:
        """The chatlog error for a failed produce (`sent` False: librdkafka refused to queue
        the record) or delivery (`sent` True); `context` names the record and its topic."""
        code = err.code()
        if code in _NO_TOPIC:
            return TopicMissing(
                f"topic {context['topic']!r} does not exist; create it with "
                f"`chatlog topics create`",
                **context,
            )
        if code == KafkaError.MSG_SIZE_TOO_LARGE:
            return InvalidEvent(f"event too large for the broker: {err.str()}", **context)
        if code == KafkaError._MSG_TIMED_OUT:
            # A timeout, even with every broker down, may follow a write whose
            # acknowledgement was lost: the outcome is unknown, not "not stored".
            broker = self._last_broker_error
            if broker is not None and broker.code() in _BROKER_DOWN:
                # Maybe one broker of several (a partition leader moving), maybe all.
                return PublishTimeout(
                    f"not acknowledged within {self.delivery_timeout:g} s; the client last "
                    f"reported {broker.str()} (if no broker of {self.bootstrap_servers} is "
                    f"running, check CHATLOG_KAFKA_BOOTSTRAP). The event may or may not be "
                    f"stored: retry with the same event",
                    broker_error=broker.str(),
                    **context,
                )
            return PublishTimeout(
                f"not acknowledged within {self.delivery_timeout:g} s: {err.str()}; the "
                f"event may or may not be stored: retry with the same event",
                **context,
            )
        if not sent:
            return NotQueued(
                f"the Kafka client refused the event: {err.str()}; it was not sent", **context
            )
        return DeliveryFailed(
            f"publish failed: {err.str()}; the event may or may not be stored: retry with "
            f"the same event",
            **context,
        )

    def _on_client_error(self, err: KafkaError) -> None:
        self._last_broker_error = err

    def _serve_delivery_reports(self) -> None:
        while not self._closed.is_set():
            with self._poll_cue:
                rushed, self._rushed = self._rushed, False
                if self._hurrying or not self._in_flight:
                    # Nothing to wait for, or a caller serves the reports (`_hurry`): a
                    # poll here could take the one it waits for. Woken when that changes;
                    # else, every 0.1 s, the client's errors and logs are served below.
                    if self._poll_cue.wait(0.1) or self._hurrying:
                        continue
                    timeout = 0.0
                else:
                    timeout = 0.1
            if rushed:
                # What `_hurry` does for a blocking caller, done here for an asyncio one:
                # its loop must not block in a flush, and a flush in a thread of its own
                # would leave the reports it waits for to nobody (the poller stays out
                # while a caller hurries). Bounded by linger.ms, as there.
                self._producer.flush(self._linger_s)
            else:
                self._producer.poll(timeout)

    def _wait_limit(self, timeout: float | None) -> float:
        # librdkafka fails the delivery itself at delivery_timeout; the margin covers the
        # report's way back, so the caller sees librdkafka's precise error, not ours.
        return timeout if timeout is not None else self.delivery_timeout + 5.0


class AsyncConversationProducer:
    """The asyncio face of `ConversationProducer`: the same events, awaited."""

    def __init__(self, producer: ConversationProducer) -> None:
        self.sync = producer

    async def append(
        self,
        session_id: str,
        *,
        user_id: str,
        role: Role | str,
        content: str,
        **fields: Unpack[MessageFields],
    ) -> Position:
        """Append one chat message (as `ConversationProducer.append`) and await it."""
        event = append_message(
            session_id,
            user_id=user_id,
            role=role,
            content=content,
            producer=self.sync.info,
            **fields,
        )
        return await self.publish(event)

    async def publish(self, event: ConversationEvent) -> Position:
        """Publish `event` and await its position: at once when nothing else is pending,
        as a lone `ConversationProducer.publish`, but sent by the poller thread (a flush
        here would block the loop); else batched by linger.ms."""
        return await asyncio.wrap_future(await self._send(event, rush=True))

    async def publish_many(self, events: Sequence[ConversationEvent]) -> list[Position]:
        """Publish a batch without awaiting per event."""
        futures = [await self._send(event) for event in events]
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    async def _send(self, event: ConversationEvent, *, rush: bool = False) -> Future[Position]:
        record = self.sync._event_record(event, self.sync.encode(event))
        deadline = time.monotonic() + self.sync.queue_timeout
        while True:
            future = self.sync._try_produce(record, rush=rush)
            if future is not None:
                return future
            # Back-pressure without blocking the event loop; the reports served here
            # too, without waiting (see `ConversationProducer._send_record`).
            self.sync._raise_if_queue_stuck(record, deadline)
            self.sync._producer.poll(0)
            await asyncio.sleep(0.005)

    async def aclose(self, timeout: float = 30.0) -> None:
        """Flush and stop without blocking the event loop (see `ConversationProducer.close`)."""
        await asyncio.to_thread(self.sync.close, timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _build_producer(
    *,
    bootstrap_servers: str,
    config: Mapping[str, Any],
    delivery_timeout: float,
    linger_ms: int,
    error_cb: Any,
) -> Producer:
    for key, required in _REQUIRED.items():
        if key in config and str(config[key]).lower() != required:
            raise ConfigError(
                f"Kafka property {key}={config[key]!r} conflicts with chatlog's guarantees "
                f"(it needs {key}={required}); remove it from the Kafka settings",
                setting=key,
            )
    reserved = sorted(_RESERVED & set(config))
    if reserved:
        raise ConfigError(
            f"Kafka properties {', '.join(reserved)} are set by chatlog; use its own settings",
            setting=reserved[0],
        )
    conf: dict[str, Any] = {
        "linger.ms": linger_ms,
        "compression.type": "lz4",
        "client.id": "chatlog-producer",
        **config,
        **_REQUIRED,
        "bootstrap.servers": bootstrap_servers,
        "message.timeout.ms": int(delivery_timeout * 1000),
        "error_cb": error_cb,
        # librdkafka logs through `logging` rather than straight to stderr.
        "logger": _KAFKA_LOG,
    }
    try:
        return Producer(conf)
    except KafkaException as exc:
        raise ConfigError(f"invalid Kafka producer settings: {kafka_reason(exc)}") from exc


def _event_name(event: ConversationEvent) -> str:
    return f"event {event.event_id} of session {event.session_id}"


def _result(future: Future[Position], timeout: float, *, what: str) -> Position:
    try:
        return future.result(timeout=timeout)
    except TimeoutError as exc:
        if isinstance(exc, ChatlogError):
            raise  # the delivery report's own error, which is a TimeoutError too
        raise PublishTimeout(
            f"no delivery report for {what} within {timeout:g} s; it may or may not be "
            f"stored: retry the same record"
        ) from None


# -- flushing on exit and SIGTERM -------------------------------------------------------

_LIVE: weakref.WeakSet[ConversationProducer] = weakref.WeakSet()
_SIGTERM_INSTALLED = False


def _flush_live(timeout: float = 10.0) -> None:
    for producer in list(_LIVE):
        with contextlib.suppress(Exception):
            producer.flush(timeout)


def _install_sigterm_flush() -> None:
    """On SIGTERM, flush every live producer, then do what SIGTERM did before."""
    global _SIGTERM_INSTALLED  # noqa: PLW0603 - installed once per process
    if _SIGTERM_INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        _flush_live()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
    _SIGTERM_INSTALLED = True


atexit.register(_flush_live)
