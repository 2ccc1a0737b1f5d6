"""The projector's membership of its consumer group: the consumer that joins it, and
what the errors of a member mean.

Failover: the projector is a static group member (`instance_id`, KIP-345). Restarted
under the same id, it gets its partitions back as soon as it rejoins, with no rebalance
and no wait for its old session, which would otherwise hold them until it expired. A
static member does not leave the group when it closes either: after a SIGTERM its
partitions wait for the restart, or `session_timeout_s` at most before the other
members take them (a scale-down costs that pause once). Partitions move between
members by the cooperative-sticky protocol: a rebalance revokes only what moves, and
the callbacks see only that delta. Fenced (another member joined under its instance
id), it stops with `ConfigError`, naming CHATLOG_INSTANCE_ID; fenced just after the group
expired its own session (the group coordinator's broker died, and the failover outlasted
the session), its own rejoin did it, and it stops with `BrokerUnavailable` instead: a
restart rejoins at once.

The embedder (`chatlog.processors.kafka_embedder`) is a member of a group of its own in
the same way, and shares the duties written here: partitions assigned resumed, offsets
stored after the work is done, a commit when partitions are revoked, the loss of a
session noted, and a close within a bound.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence, Set
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from chatlog.processors.kafka_consumer import record_of
from chatlog.processors.projection import Record
from chatlog.schemas.errors import BrokerUnavailable, ConfigError

__all__ = ["GroupMembership"]

_KAFKA_LOG = logging.getLogger("chatlog.kafka")
log = logging.getLogger("chatlog.consumer")
# How long after its own session expired a fenced projector blames that expiry, not a
# second process with its instance id: a rejoin takes a second or two.
_REJOIN_WINDOW_S = 30.0


class GroupMembership:
    """The projector's place in consumer group `group_id`: static if it has an
    `instance_id`."""

    def __init__(
        self,
        *,
        group_id: str,
        instance_id: str | None,
        session_timeout_s: float,
        member: str = "projector",
    ) -> None:
        self.group_id = group_id
        self.member = member  # what the errors call this process
        self._log = logging.getLogger(f"chatlog.{member}")
        self.instance_id = instance_id
        self.session_timeout_s = session_timeout_s
        # When the group last expired this member's session (`session_expired`).
        self._session_lost_at: float | None = None

    def consumer(self, bootstrap_servers: str, config: Mapping[str, Any]) -> Consumer:
        """A consumer that joins the group as this member; `config` is the user's
        librdkafka settings, which the membership's own settings win over."""
        membership = {} if self.instance_id is None else {"group.instance.id": self.instance_id}
        return Consumer(
            {
                **config,
                **membership,
                "bootstrap.servers": bootstrap_servers,
                "group.id": self.group_id,
                "session.timeout.ms": round(self.session_timeout_s * 1000),
                "auto.offset.reset": "earliest",
                # Offsets are stored by hand after Redis acknowledged, committed in the
                # background; a crash replays at most the uncommitted tail.
                "enable.auto.commit": True,
                "enable.auto.offset.store": False,
                "auto.commit.interval.ms": 1000,
                "partition.assignment.strategy": "cooperative-sticky",
                "logger": _KAFKA_LOG,
            }
        )

    @staticmethod
    def store_offsets(
        consumer: Consumer, topic: str, last_offsets: Mapping[int, int], assigned: Set[int]
    ) -> None:
        """Store, for the next commit, the offsets after `last_offsets` (partition -> the
        last offset done) of the partitions still `assigned`."""
        # Only local: the background commit sends them, and retries a failed commit at
        # its next interval, so a broker fault here needs no retry of ours.
        owned = [TopicPartition(topic, p, o + 1) for p, o in last_offsets.items() if p in assigned]
        if not owned:
            return
        try:
            consumer.store_offsets(offsets=owned)
        except KafkaException as exc:
            # A partition revoked meanwhile: its new owner does it again, which is harmless.
            log.info("offsets not stored (%s); the next owner does them again", exc)

    @staticmethod
    def commit_revoked(consumer: Consumer) -> None:
        """Commit what was stored, as partitions are revoked (their new owner starts there)."""
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:  # nothing new to commit is fine
                log.warning("commit on revoke: %s", exc)

    @staticmethod
    def assign(
        consumer: Consumer,
        starts: list[TopicPartition],
        *,
        next_offsets: MutableMapping[int, int],
        paused: bool,
    ) -> None:
        """Add `starts` to the assignment: fetched from their offsets, or `paused` (during
        an outage: its end resumes them). `next_offsets` (partition -> the offset done
        next, for the lag) learns each known start and forgets each unknown one.

        librdkafka keeps a partition's pause across an unassign and an assign, so one
        paused before (held while Redis was out, or revoked during an outage and
        assigned again since) would never be fetched again. Resumed before the assign,
        so that the offset the assign sets is the last word on where to fetch from."""
        consumer.resume(starts)
        consumer.incremental_assign(starts)
        for tp in starts:  # an unknown start (committed, or the beginning) is found by the lag
            if tp.offset >= 0:
                next_offsets[tp.partition] = tp.offset
            else:
                next_offsets.pop(tp.partition, None)
        if paused:
            consumer.pause(starts)

    def serve(
        self, step: Callable[[], object], stop: threading.Event, *, stats: object, every_s: float
    ) -> None:
        """`step()` until `stop` is set; `stats` logged every `every_s` seconds."""
        last_report = time.monotonic()
        while not stop.is_set():
            step()
            if time.monotonic() - last_report >= every_s:
                self._log.info("%s: %s", self.member, stats)
                last_report = time.monotonic()

    def session_expired(self, partitions: Sequence[TopicPartition]) -> None:
        """Note that the group expired this member's session: `partitions` were lost."""
        # Lost, not revoked: another member may be working on them already, and the
        # group refuses commits from this one.
        self._log.warning(
            "lost partitions %s (session expired)", sorted(tp.partition for tp in partitions)
        )
        self._session_lost_at = time.monotonic()

    def close(
        self, consumer: Consumer, *, timeout: float, meanwhile: Callable[[], None] | None = None
    ) -> bool:
        """Commit what was stored and close `consumer`, within `timeout` seconds, running
        `meanwhile` as it closes; False if it did not close in time. That is safe to walk
        away from: the next owner of the partitions does the uncommitted tail again, which
        changes nothing (every write is idempotent)."""
        closing = threading.Thread(
            target=consumer.close, name=f"chatlog-{self.member}-close", daemon=True
        )
        closing.start()
        deadline = time.monotonic() + timeout
        if meanwhile is not None:
            meanwhile()
        closing.join(max(0.0, deadline - time.monotonic()))
        if closing.is_alive():
            self._log.warning(
                "the consumer did not close within %g s; leaving without the final commit "
                "(the next owner does the uncommitted tail again, which changes nothing)",
                timeout,
            )
            return False
        return True

    def record_of(self, message: Message, topic: str) -> Record | None:
        """`record_of`, with the errors a setting causes reported as that setting's."""
        error = message.error()
        # librdkafka reports a fenced static member as a generic fatal error (code _FATAL,
        # not FENCED_INSTANCE_ID): its text is all that tells them apart.
        if (
            error is not None
            and error.code() == KafkaError._FATAL
            and "group.instance.id" in error.str()
        ):
            lost_at = self._session_lost_at
            if lost_at is not None and time.monotonic() - lost_at <= _REJOIN_WINDOW_S:
                # Seen when the group coordinator's broker died: the failover outlasted
                # the session, librdkafka rejoined under the same instance id, and a
                # request still carrying the old member id was fenced by that rejoin
                # (librdkafka issue #3437). The consumer is unusable, but a restart
                # rejoins at once: temporary, not a setting to fix.
                raise BrokerUnavailable(
                    f"the group coordinator expired this {self.member}'s session in group "
                    f"{self.group_id} (a broker failover longer than the "
                    f"{self.session_timeout_s:g} s session timeout), and the Kafka client, "
                    f"fenced by its own rejoin, cannot continue: restart the {self.member} "
                    f"(it replays the uncommitted tail, which changes nothing)",
                    group=self.group_id,
                    instance_id=self.instance_id,
                )
            raise ConfigError(
                f"another process joined consumer group {self.group_id} with this "
                f"{self.member}'s group.instance.id {self.instance_id!r} and took its partitions: "
                f"give each {self.member} of the group its own CHATLOG_INSTANCE_ID (the default, "
                f"the host name, is the same for every {self.member} on one host)",
                setting="CHATLOG_INSTANCE_ID",
            )
        if error is not None and error.code() == KafkaError.INVALID_SESSION_TIMEOUT:
            raise ConfigError(
                f"the broker refused to let the {self.member} join group {self.group_id} with a "
                f"session timeout of {self.session_timeout_s:g} s: set "
                f"CHATLOG_SESSION_TIMEOUT_S within the broker's group.min.session.timeout.ms "
                f"and group.max.session.timeout.ms",
                setting="CHATLOG_SESSION_TIMEOUT_S",
            )
        return record_of(message, topic)
