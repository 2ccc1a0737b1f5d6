"""The CLI's long-lived processes: `run projector`, `run summarizer` and `run embedder`.

Each checks at start-up that the events topic exists (a missing one is a one-line error
with the fix) and then runs until SIGTERM or Ctrl-C, and exits 0 within `STOP_BOUND_S`
(10 s) of the signal, or 75 if its clean stop had to be cut short there. An error ends
either with 75 (temporary: restart it) or 1 (a person must act), as for every command.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from chatlog import wiring
from chatlog.cli.common import exit_at_deadline, exit_status, partition_count, stop_on_signals
from chatlog.processors.kafka_projector import KafkaProjector, tune_garbage_collector
from chatlog.schemas.secrets import redacted_url
from chatlog.settings import Settings

if TYPE_CHECKING:
    from chatlog.cli.common import Commands
    from chatlog.processors.kafka_embedder import KafkaEmbedder
    from chatlog.prom_metrics import Collector, MetricsServer

__all__ = ["add_commands"]


def add_commands(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add `run projector`, `run summarizer` and `run embedder` to the parser's `commands`."""
    run = commands.add_parser("run", help="run a long-lived processor")
    run_commands = run.add_subparsers(dest="run_command", required=True)
    projector = run_commands.add_parser(
        "projector", help="project the events topic into Redis until SIGTERM or Ctrl-C"
    )
    projector.set_defaults(handler=_run_projector, json=False, process="projector")
    summarizer = run_commands.add_parser(
        "summarizer",
        help="keep every session's overflow folded into its rolling summary (faust agent)",
    )
    summarizer.set_defaults(handler=_run_summarizer, json=False, process="summarizer")
    embedder = run_commands.add_parser(
        "embedder",
        help="embed every turn into the recall index (CHATLOG_RECALL=true) until SIGTERM",
    )
    embedder.set_defaults(handler=_run_embedder, json=False, process="embedder")


def _run_projector(args: argparse.Namespace, settings: Settings) -> None:
    log = logging.getLogger("chatlog.projector")
    _check_topics(settings)
    projector = wiring.projector(settings)
    log.info(
        "projecting %s (group %s) into Redis prefix %s; dead letters to %s; "
        "group member %s (CHATLOG_INSTANCE_ID), session timeout %g s",
        settings.topic,
        settings.projector_group,
        settings.redis_prefix,
        settings.dlq_topic,
        settings.instance_id,
        settings.session_timeout_s,
    )
    if projector.keys_ticker is not None:
        log.info(
            "a tick on every partition of %s every %g s, so that an erased key leaves the "
            "disks within CHATLOG_KEY_SHRED_WITHIN (%g s) on a quiet topic too",
            settings.keys_topic,
            projector.keys_ticker.interval_s,
            settings.key_shred_within,
        )
    metrics = _member_metrics(settings, projector)
    tune_garbage_collector()
    _run_until_stopped(projector, metrics)
    log.info("stopped: %s", projector.stats)


def _run_summarizer(args: argparse.Namespace, settings: Settings) -> None:
    log = logging.getLogger("chatlog.summarizer")
    _check_topics(settings)
    which = (
        f"{settings.llm_model} at {redacted_url(settings.llm_base_url)}"
        if settings.llm_base_url
        else "the offline extractive summarizer (set CHATLOG_LLM_BASE_URL for an LLM)"
    )
    worker = wiring.summarizer_worker(settings)
    metrics = None
    if settings.metrics_port:
        from chatlog.prom_metrics import SummarizerCollector  # noqa: PLC0415 - the extra

        client = wiring.redis_client(settings)
        metrics = wiring.metrics_server(
            settings,
            SummarizerCollector(worker, prices=wiring.llm_prices(settings)),
            live=worker.liveness,
            ready=lambda: worker.readiness() or wiring.redis_answers(client),
        )
    log.info(
        "summarizing %s (group %s) with %s: every %d overflow turns, %d in flight at most; "
        "group member %s (CHATLOG_INSTANCE_ID), session timeout %g s",
        settings.topic,
        settings.summarizer_group,
        which,
        settings.summary_threshold,
        settings.summarizer_concurrency,
        settings.instance_id,
        settings.session_timeout_s,
    )
    try:
        status = worker.run(on_stop_signal=exit_at_deadline)
    finally:
        if metrics is not None:
            metrics.close()
    if worker.error is not None:
        # The agent failed (and logged why): a broker that did not answer at start-up is
        # worth a restart; anything else is not.
        raise SystemExit(exit_status(worker.error))
    if status:
        raise SystemExit(status)


def _run_embedder(args: argparse.Namespace, settings: Settings) -> None:
    log = logging.getLogger("chatlog.embedder")
    _check_topics(settings)
    embedder = wiring.recall_embedder(settings)  # refuses: recall off, no query engine
    try:
        state = embedder.open()  # refuses: another model's index, a lost one
        metrics = _member_metrics(settings, embedder)
        log.info(
            "embedding %s (group %s) with %s (dimension %d) into the recall index of "
            "generation %s at %s (%s); group member %s (CHATLOG_INSTANCE_ID)",
            settings.topic,
            settings.embedder_group,
            embedder.embedder.model,
            embedder.embedder.dimension,
            embedder.generation,
            redacted_url(settings.recall_redis),
            "created" if not state.marks else f"{len(state.marks)} partitions indexed so far",
            settings.instance_id,
        )
        _run_until_stopped(embedder, metrics)
    finally:
        embedder.close()
        embedder.embedder.close()
    log.info("stopped: %s", embedder.stats)


def _member_metrics(
    settings: Settings, member: KafkaProjector | KafkaEmbedder
) -> MetricsServer | None:
    """The projector's or the embedder's metrics and health (CHATLOG_METRICS_PORT); None
    when unset. Alive while its loop turns; ready while its partitions are within
    CHATLOG_READY_MAX_LAG and the Redis it writes answers."""
    if not settings.metrics_port:
        return None
    from chatlog.prom_metrics import (  # noqa: PLC0415 - the metrics extra
        EmbedderCollector,
        ProjectorCollector,
    )

    # Its own client: pings come from the server's thread.
    collector: Collector
    if isinstance(member, KafkaProjector):
        collector, client = ProjectorCollector(member), wiring.redis_client(settings)
    else:
        collector, client = EmbedderCollector(member), wiring.recall_client(settings)
    return wiring.metrics_server(
        settings,
        collector,
        live=member.liveness,
        ready=lambda: member.readiness(settings.ready_max_lag) or wiring.redis_answers(client),
    )


def _check_topics(settings: Settings) -> None:
    """Fail at start-up with the fix, rather than with a consumer error later; a refused
    password first, in a moment, rather than after the metadata wait."""
    wiring.check_kafka_access(settings)
    partition_count(wiring.admin_client(settings), settings)
    wiring.check_keys_topic(settings)


def _run_until_stopped(
    member: KafkaProjector | KafkaEmbedder, metrics: MetricsServer | None
) -> None:
    """Run `member` until SIGTERM or Ctrl-C; its metrics server closed after."""
    try:
        with stop_on_signals() as stop:
            member.run(stop=stop)
    finally:
        if metrics is not None:
            metrics.close()
