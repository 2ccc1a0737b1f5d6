"""The synthetic chat traffic the scenarios publish: sessions, owners and sized events.

Every event is a `MessageAppended` built by the producer's own command function, so it
goes through the same validation and encoding a chat back end's events do. The content
length is chosen so the encoded record value is about `record_bytes` long; the text is
drawn from a pool of random words so that lz4 (the producer's compression) sees text
that compresses like prose, not a run of one letter.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from processors.projection import Record
from producers.commands import append_message
from schemas.codec import EventCodec
from schemas.events import ConversationEvent, ProducerInfo
from schemas.position import Position

__all__ = [
    "Traffic",
    "chat_events",
    "last_positions",
    "records_for",
    "session_name",
    "user_of",
]

_WORDS = (
    "order",
    "shipping",
    "refund",
    "invoice",
    "account",
    "password",
    "reset",
    "delivery",
    "address",
    "tracking",
    "number",
    "please",
    "thanks",
    "hello",
    "help",
    "where",
    "when",
    "why",
    "how",
    "status",
    "update",
    "cancel",
    "change",
    "payment",
    "card",
    "billing",
    "plan",
    "upgrade",
    "support",
    "agent",
    "ticket",
    "issue",
    "error",
    "login",
    "email",
)
_ROLES = ("user", "assistant")
_POOL_SIZE = 512


@dataclass(frozen=True, slots=True)
class Traffic:
    """Events to publish, with the sessions they touch."""

    events: list[ConversationEvent]
    sessions: list[str]


def session_name(index: int) -> str:
    """The id of session number `index` (ids only need to be unique within a scenario)."""
    return f"bench-s{index:05d}"


def user_of(index: int) -> str:
    """The owner of session number `index`: four sessions per user, as a chat app has."""
    return f"bench-u{index // 4:05d}"


def content_length(codec: EventCodec, info: ProducerInfo, record_bytes: int) -> int:
    """How many ASCII characters of content make an encoded event `record_bytes` long."""
    probe = append_message(
        session_name(0), user_id=user_of(0), role="user", content="x", producer=info
    )
    overhead = len(codec.encode(probe)) - 1
    return max(1, record_bytes - overhead)


def chat_events(
    *,
    sessions: int,
    count: int,
    record_bytes: int,
    codec: EventCodec,
    info: ProducerInfo,
    seed: int = 7,
    per_session: Sequence[int] | None = None,
) -> Traffic:
    """`count` messages spread over `sessions` sessions in a random interleaving.

    With `per_session`, session *i* gets exactly `per_session[i]` messages instead (and
    `count` is ignored): the read scenario needs sessions of a known length.
    """
    rng = random.Random(seed)
    length = content_length(codec, info, record_bytes)
    pool = [_text(rng, length) for _ in range(_POOL_SIZE)]
    if per_session is None:
        order = [n % sessions for n in range(count)]
    else:
        order = [i for i, n in enumerate(per_session) for _ in range(n)]
    rng.shuffle(order)
    seen = [0] * (len(per_session) if per_session is not None else sessions)
    events = []
    for index in order:
        events.append(
            append_message(
                session_name(index),
                user_id=user_of(index),
                role=_ROLES[seen[index] % 2],
                content=pool[rng.randrange(_POOL_SIZE)],
                producer=info,
            )
        )
        seen[index] += 1
    return Traffic(events=events, sessions=[session_name(i) for i in range(len(seen))])


def last_positions(
    events: Sequence[ConversationEvent], positions: Sequence[Position]
) -> dict[str, Position]:
    """Each session's last position: where its view is complete."""
    last: dict[str, Position] = {}
    for event, position in zip(events, positions, strict=True):
        known = last.get(event.session_id)
        if known is None or position.offset > known.offset:
            last[event.session_id] = position
    return last


def records_for(
    events: Sequence[ConversationEvent],
    positions: Sequence[Position],
    codec: EventCodec,
    *,
    topic: str,
) -> list[Record]:
    """The records a consumer of `topic` sees for `events`, in publish order.

    The positions are the ones the broker acknowledged, so the pure core folds exactly
    what the projector consumed.
    """
    return [
        Record(
            topic=topic,
            partition=position.partition,
            offset=position.offset,
            key=event.session_id.encode(),
            value=codec.encode(event),
        )
        for event, position in zip(events, positions, strict=True)
    ]


def _text(rng: random.Random, length: int) -> str:
    words: list[str] = []
    size = 0
    while size < length:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:length]
