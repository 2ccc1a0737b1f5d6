"""The summarizer worker: a faust-streaming agent that feeds `SummaryEngine`.

faust consumes the events topic and runs the worker's life (start, rebalances, timers,
SIGTERM). Everything that decides what to summarize lives in the engine; this module
only moves records and acks between the two. Four faust settings matter:

* The agent runs with ``concurrency=1`` over a ``noack()`` stream, and the engine acks
  each record itself, in offset order, once its work is finished. faust commits the
  highest offset below which every record is acked; with several agent instances, or
  with acks out of order, it commits past records still being worked on
  (faust-streaming issue 606), and a crash would lose their summaries.
* ``stream_wait_empty=False``: on a stop or a rebalance faust would otherwise wait,
  with no time limit, until every record it handed to the agent is acked. The engine
  holds records unacked on purpose while it loads a session (which waits for the
  projector, for ever if none runs) or summarizes it, so that wait could last for ever:
  a SIGTERM was still not obeyed a minute later. The engine stops itself instead
  (`SummaryEngine.stop`, from faust's ``on_before_shutdown`` signal): at most
  ``drain_timeout_s`` for summaries under way, then faust commits what was acked. On a
  rebalance, records acked since faust's last periodic commit (every few seconds) are
  consumed again by the partition's next owner, which may publish a duplicate summary:
  harmless, as the engine explains.
* ``topic_allow_declare=False`` and ``topic_disable_leader=True``: faust creates no
  topics; chatlog's topics are created by `chatlog topics create`.
* No tables and no web server: the engine's state is rebuilt from the read-model.

Failover is the projector's: the worker is a static group member (aiokafka's
``group_instance_id``, through faust's ``consumer_group_instance_id``), so a restart
under the same id takes its partitions back without waiting for its old session, and
one that died for good loses them after ``session_timeout_s``. Like the projector it
does not leave the group when stopped. Unlike the projector its rebalances are eager
(aiokafka has no cooperative protocol): every member gives up its partitions during
one, which for a summarizer only delays summaries.

Kafka's TLS and SASL reach faust as its ``broker_credentials``: `KafkaSecurity` (read
from the same ``CHATLOG_KAFKA__*`` properties as the other clients, `chatlog.schemas.transport`)
becomes faust's `SASLCredentials` (with the SSL context for SASL_SSL) or
`SSLCredentials`, which faust hands to aiokafka's consumer and producer.

The worker is built inside the event loop (`build` is awaited by the agent), because
the Redis, Kafka and HTTP clients it uses belong to the loop that runs them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from chatlog.schemas.errors import ChatlogError, MissingExtra
from chatlog.schemas.transport import KafkaSecurity

try:
    import faust
    from faust.types import TP, EventT, StreamT
    from faust.types.auth import CredentialsT
except ImportError as missing:
    raise MissingExtra.needs(
        "summarizer", "the summarizer (chatlog run summarizer)", missing
    ) from missing

from chatlog.processors.projection import Record
from chatlog.processors.projector_stats import LIVENESS_BOUND_S
from chatlog.processors.summary_engine import SummaryEngine

__all__ = ["EngineFactory", "FaustSummarizer"]

log = logging.getLogger("chatlog.summarizer")

# The engine, and how to close what it uses (clients, producer) once it has stopped.
EngineFactory = Callable[[], Awaitable[tuple[SummaryEngine, Callable[[], Awaitable[None]]]]]


class FaustSummarizer:
    """A faust app whose one agent drives a `SummaryEngine` over the events topic."""

    def __init__(
        self,
        build: EngineFactory,
        *,
        bootstrap_servers: str,
        topic: str,
        group_id: str,
        datadir: Path,
        instance_id: str | None = None,
        session_timeout_s: float = 10.0,
        retry_interval_s: float = 1.0,
        report_interval_s: float = 30.0,
        drain_timeout_s: float = 5.0,
        security: KafkaSecurity | None = None,
    ) -> None:
        self._build = build
        self._drain_timeout_s = drain_timeout_s
        self.engine: SummaryEngine | None = None
        self.error: BaseException | None = None
        # The partitions this worker holds (its metrics and readiness read it).
        self.assigned: frozenset[int] = frozenset()
        self.beat_at = time.monotonic()
        brokers = ";".join(f"kafka://{server}" for server in bootstrap_servers.split(","))
        self.app = faust.App(
            group_id,
            broker=brokers,
            store="memory://",
            datadir=str(datadir),
            web_enabled=False,
            autodiscover=False,
            topic_allow_declare=False,
            topic_disable_leader=True,
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            consumer_group_instance_id=instance_id,
            stream_wait_empty=False,
            # A worker that died holds its partitions until this passes (faust's default
            # is 60 s); aiokafka heartbeats from a task of its own, every 3 s.
            broker_session_timeout=session_timeout_s,
            broker_credentials=_credentials(security or KafkaSecurity()),
        )
        source = self.app.topic(
            topic,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )
        self.app.agent(source, name=f"{group_id}.agent", concurrency=1)(self._consume)
        self.app.timer(retry_interval_s, name=f"{group_id}.retry")(self._retry)
        self.app.timer(report_interval_s, name=f"{group_id}.report")(self._report)
        self.app.on_partitions_revoked.connect(self._on_revoked)
        self.app.on_partitions_assigned.connect(self._on_assigned)
        # Sent once faust has stopped fetching, before the consumer's final commit.
        self.app.on_before_shutdown.connect(self._on_shutdown)

    def run(self, *, on_stop_signal: Callable[[], object] | None = None) -> int:
        """Run until SIGTERM or Ctrl-C; the exit status.

        Logging is the caller's (`chatlog.logs.setup_logging`, before this): the worker
        leaves it alone. `on_stop_signal` is called once, as the first SIGTERM or SIGINT
        starts the stop (the CLI arms its deadline there).
        """
        worker = _Worker(
            self.app,
            # mode would clear the root handlers and log in colour to stdout, and faust
            # prints a banner and a spinner there: one format for every process instead.
            override_logging=False,
            quiet=True,
            redirect_stdouts=False,
            on_stop_signal=on_stop_signal,
        )
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            status = int(exc.code or 0)
        else:  # pragma: no cover - execute_from_commandline always exits
            status = 0
        return 1 if self.error is not None else status

    async def _consume(self, stream: StreamT[bytes]) -> None:
        try:
            await self._drive(stream)
        except Exception as exc:
            # faust would restart the agent and keep the process up, holding its partitions
            # with nothing consuming them: stop the worker and exit non-zero instead.
            log.exception("summarizer: the agent failed; stopping")
            self.error = exc
            await self.app.crash(exc)

    async def _drive(self, stream: StreamT[bytes]) -> None:
        engine, close = await self._build()
        self.engine = engine
        manual: StreamT[bytes] = stream.noack()  # type: ignore[attr-defined]  # on Stream only
        try:
            async for event in manual.events():
                message = event.message
                record = Record(
                    message.topic, message.partition, message.offset, message.key, message.value
                )
                await engine.accept(record, partial(_ack, manual, event))
        finally:
            log.info("summarizer stopping: %s", engine.stats.line())
            # faust cancels the agent more than once while it stops: the clean-up runs
            # shielded, so a summary under way can still publish and the producer flush.
            await asyncio.shield(self._shut_down(engine, close))

    async def _shut_down(self, engine: SummaryEngine, close: Callable[[], Awaitable[None]]) -> None:
        await self._stop_engine(engine)
        try:
            await close()
        except ChatlogError as exc:  # e.g. summaries the broker never acknowledged
            log.warning("summarizer: closing its clients: %s", exc)
        log.info("summarizer stopped")

    async def _stop_engine(self, engine: SummaryEngine) -> None:
        # Summaries under way get a moment to publish and commit; the rest are asked for
        # again by the next worker, since their records stay uncommitted.
        left = await engine.stop(self._drain_timeout_s)
        if left:
            log.warning(
                "summarizer: %d summaries still under way after %g s are left for the next "
                "worker (their records are not committed)",
                left,
                self._drain_timeout_s,
            )

    async def _on_shutdown(self, sender: Any, /, *args: Any, **kwargs: Any) -> None:
        if self.engine is not None:
            await self._stop_engine(self.engine)

    async def _retry(self) -> None:
        self.beat_at = time.monotonic()  # the loop turns: liveness
        if self.engine is not None:
            await self.engine.retry_due()

    async def _report(self) -> None:
        if self.engine is not None:
            log.info("summarizer: %s", self.engine.stats.line())

    async def _on_revoked(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked: set[TP] = args[0] if args else kwargs.get("revoked", set())
        self.assigned = self.assigned - {tp.partition for tp in revoked}
        if self.engine is not None:
            self.engine.revoke({tp.partition for tp in revoked})

    async def _on_assigned(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        # Eager rebalances: each assignment is the whole of what this worker holds.
        assigned: set[TP] = args[0] if args else kwargs.get("assigned", set())
        self.assigned = frozenset(tp.partition for tp in assigned)

    def liveness(self, bound_s: float = LIVENESS_BOUND_S) -> str | None:
        """Why this worker is not alive (its event loop stopped turning); None if it is."""
        stalled = time.monotonic() - self.beat_at
        return None if stalled < bound_s else f"the event loop has not turned for {stalled:.0f} s"

    def readiness(self) -> str | None:
        """Why this worker is not ready; None when it is (its engine runs, partitions
        assigned). Called from the health server's thread: it only reads."""
        if self.error is not None:
            return f"the agent failed: {self.error}"
        if self.engine is None:
            return "not started yet"
        if not self.assigned:
            return "no partitions assigned"
        return None


class _Worker(faust.Worker):
    """faust's worker, telling its owner when a signal starts the stop."""

    def __init__(
        self, *args: Any, on_stop_signal: Callable[[], object] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._on_stop_signal = on_stop_signal
        # Written to stdout between log lines on a terminal (not silenced by `quiet`).
        self.spinner = None

    def _schedule_shutdown(self, signal: Any) -> None:
        if self._on_stop_signal is not None and not self._signal_stop_time:
            self._on_stop_signal()
        super()._schedule_shutdown(signal)


def _credentials(security: KafkaSecurity) -> CredentialsT | None:
    """faust's credentials for `security`; None for plaintext."""
    if security.sasl:
        password = security.password.get_secret_value() if security.password else None
        # SASL_SSL with a context, SASL_PLAINTEXT without; faust's repr shows the user only.
        return faust.SASLCredentials(
            username=security.username,
            password=password,
            mechanism=security.mechanism,
            ssl_context=security.ssl_context,
        )
    if security.ssl_context is not None:
        return faust.SSLCredentials(security.ssl_context)
    return None


async def _ack(stream: StreamT[bytes], event: EventT[bytes]) -> None:
    await stream.ack(event)
