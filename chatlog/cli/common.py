"""What the CLI's command groups share, apart from output: argument types, stopping on a
signal, the start-up check that the events topic exists, and the exit statuses."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, TypeAlias

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from chatlog import wiring
from chatlog.producers.kafka_topics import topic_partitions
from chatlog.schemas.errors import Incomplete, Interrupted, Unavailable
from chatlog.settings import Settings

if TYPE_CHECKING:
    # What `add_subparsers` returns; each command module adds its commands to it.
    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = [
    "EXIT_ACT",
    "EXIT_TEMPORARY",
    "EXIT_USAGE",
    "METADATA_TIMEOUT_S",
    "STOP_BOUND_S",
    "exit_at_deadline",
    "exit_status",
    "partition_count",
    "positive_float",
    "positive_int",
    "stop_on_signals",
]

METADATA_TIMEOUT_S = 10.0

# Exit statuses, for people and for supervisors (systemd's RestartPreventExitStatus, a
# Job's retry policy): 0 is success, and a processor stopped by SIGTERM or Ctrl-C.
EXIT_ACT = 1
"""A person must act (a setting, a missing topic, lost data, a bug): a restart fails again."""
EXIT_USAGE = 2
"""The command line is wrong (argparse's own status)."""
EXIT_TEMPORARY = 75
"""Nothing is wrong that time will not fix: run it again (BSD's EX_TEMPFAIL)."""


STOP_BOUND_S = 10.0
"""How long a processor may take to stop after SIGTERM or Ctrl-C (docs/operations.md)."""


def exit_at_deadline(seconds: float = STOP_BOUND_S) -> threading.Timer:
    """After a stop signal: exit with `EXIT_TEMPORARY` in `seconds` if still running.

    The last resort behind each processor's own bounded stop (a consumer closing against
    a broker that does not answer can take longer). Walking away is safe because every
    processor commits only what it finished: the rest is consumed again after a restart.
    """

    def give_up() -> None:
        sys.stderr.write(
            f"chatlog: still stopping {seconds:g} s after the signal; exiting without "
            f"waiting further (what was unfinished is not committed: it is done again "
            f"after the restart)\n"
        )
        sys.stderr.flush()
        os._exit(EXIT_TEMPORARY)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()
    return timer


def exit_status(error: BaseException) -> int:
    """The exit status for a command that ended with `error`.

    `EXIT_TEMPORARY` when running it again may work with nothing changed: Kafka, Redis
    or the LLM did not answer (`Unavailable`), or a long run was stopped or lost a part
    and resumes where it was (`Interrupted`, `Incomplete`); `EXIT_ACT` for anything else.
    """
    temporary = isinstance(error, Unavailable | Interrupted | Incomplete)
    return EXIT_TEMPORARY if temporary else EXIT_ACT


def partition_count(client: Consumer | AdminClient, settings: Settings) -> int:
    """The events topic's partition count; a missing topic or broker is a one-line error,
    and so is a broker that refuses the credentials or the TLS (`ConfigError`)."""
    with wiring.kafka_diagnosed(settings):
        return topic_partitions(
            client,
            settings.topic,
            bootstrap_servers=settings.kafka_bootstrap,
            timeout=METADATA_TIMEOUT_S,
        )


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


@contextmanager
def stop_on_signals(*, deadline_s: float | None = STOP_BOUND_S) -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGINT while the block runs; handlers restored after.

    The first signal asks for a clean stop, and the process exits anyway `deadline_s`
    later if it is still running (`exit_at_deadline`; None: no deadline). A second
    signal gets the previous behaviour back (Ctrl-C twice interrupts a stop that hangs).
    """
    stop = threading.Event()
    watched = (signal.SIGTERM, signal.SIGINT)
    previous = {signum: signal.getsignal(signum) for signum in watched}

    def request_stop(signum: int, frame: FrameType | None) -> None:
        # Not `stop.set()` here: a handler runs in the main thread between two bytecodes,
        # possibly while that thread holds the event's own lock inside `stop.wait()`, and
        # the lock is not reentrant: the process would hang, deaf to further signals.
        threading.Thread(target=stop.set, name="chatlog-stop-signal", daemon=True).start()
        if deadline_s is not None:
            exit_at_deadline(deadline_s)
        for each, handler in previous.items():
            signal.signal(each, handler)

    for signum in watched:
        signal.signal(signum, request_stop)
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
