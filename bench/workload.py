"""The synthetic chat traffic the scenarios publish: sessions, owners and sized events.

Every event is a `MessageAppended` built by the producer's own command function, so it
goes through the same validation and encoding a chat back end's events do. The content
length is chosen so the encoded record value is about `record_bytes` long; the text is
drawn from a pool of random words so that lz4 (the producer's compression) sees text
that compresses like prose, not a run of one letter.

The summary scenarios need turns a summarizer has something to do with, so
`support_chat` scripts a customer-support session instead: sentences with names, order
and tracking numbers, amounts, dates, decisions and questions, 40 to 120 words a turn.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from chatlog.processors.projection import Record
from chatlog.producers.commands import append_message
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.events import ConversationEvent, ProducerInfo
from chatlog.schemas.position import Position

__all__ = [
    "Traffic",
    "Turn",
    "chat_event_chunks",
    "chat_events",
    "chat_text",
    "chat_turns",
    "last_positions",
    "records_for",
    "session_name",
    "support_chat",
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
    first_session: int = 0,
) -> Traffic:
    """`count` messages spread over `sessions` sessions in a random interleaving.

    With `per_session`, session *i* gets exactly `per_session[i]` messages instead (and
    `count` is ignored): the read scenario needs sessions of a known length. Sessions are
    numbered from `first_session`, so that two workloads can use sessions of their own.
    """
    chunks = chat_event_chunks(
        sessions=sessions,
        count=count,
        record_bytes=record_bytes,
        codec=codec,
        info=info,
        seed=seed,
        per_session=per_session,
        chunk=max(1, count, sum(per_session or ())),
        first_session=first_session,
    )
    events = [event for chunk in chunks for event in chunk]
    total = len(per_session) if per_session is not None else sessions
    return Traffic(
        events=events,
        sessions=[session_name(first_session + i) for i in range(total)],
    )


@dataclass(frozen=True, slots=True)
class Turn:
    """One chat message as a chat back end has it before storing it anywhere."""

    session_id: str
    user_id: str
    role: str
    content: str


def chat_turns(
    *,
    sessions: int,
    count: int,
    record_bytes: int,
    codec: EventCodec,
    info: ProducerInfo,
    seed: int = 7,
    first_session: int = 0,
) -> list[Turn]:
    """The messages `chat_events` would make events of, as plain values.

    For the append scenario: every store (chatlog and its peers) is handed the same
    messages, and chatlog's cost of making the event is part of what is timed.
    """
    return [
        Turn(
            session_name(first_session + index),
            user_of(first_session + index),
            role,
            content,
        )
        for index, role, content in _turns(
            sessions=sessions,
            count=count,
            per_session=None,
            length=content_length(codec, info, record_bytes),
            rng=random.Random(seed),
        )
    ]


def _turns(
    *,
    sessions: int,
    count: int,
    per_session: Sequence[int] | None,
    length: int,
    rng: random.Random,
) -> Iterator[tuple[int, str, str]]:
    """(session number, role, content) of each message, in publishing order."""
    pool = [chat_text(rng, length) for _ in range(_POOL_SIZE)]
    if per_session is None:
        order = [n % sessions for n in range(count)]
    else:
        order = [i for i, n in enumerate(per_session) for _ in range(n)]
    rng.shuffle(order)
    seen = [0] * (len(per_session) if per_session is not None else sessions)
    for index in order:
        content = pool[rng.randrange(_POOL_SIZE)]
        yield index, _ROLES[seen[index] % 2], content
        seen[index] += 1


def chat_event_chunks(
    *,
    sessions: int,
    count: int,
    record_bytes: int,
    codec: EventCodec,
    info: ProducerInfo,
    seed: int = 7,
    per_session: Sequence[int] | None = None,
    chunk: int = 10_000,
    share: tuple[int, int] = (0, 1),
    first_session: int = 0,
) -> Iterator[list[ConversationEvent]]:
    """The events of `chat_events`, the same ones in the same order, `chunk` at a time.

    For workloads too large to hold as objects at once (a million events): each chunk can
    be published and dropped before the next is built. With `share=(k, n)`, only the
    events of sessions whose number is k modulo n are built (the same events as without
    it, in the same order), so that n processes can build and publish a workload
    together, each session's events all from one of them and in order.
    """
    mine, shares = share
    turns = _turns(
        sessions=sessions,
        count=count,
        per_session=per_session,
        length=content_length(codec, info, record_bytes),
        rng=random.Random(seed),
    )
    events: list[ConversationEvent] = []
    for index, role, content in turns:
        if index % shares != mine:
            continue  # its content was drawn all the same: the stream stays the same
        events.append(
            append_message(
                session_name(first_session + index),
                user_id=user_of(first_session + index),
                role=role,
                content=content,
                producer=info,
            )
        )
        if len(events) >= chunk:
            yield events
            events = []
    if events:
        yield events


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
    codec: EventCodec | None = None,
    *,
    topic: str,
    values: Sequence[bytes] | None = None,
) -> list[Record]:
    """The records a consumer of `topic` sees for `events`, in publish order.

    The positions are the ones the broker acknowledged, so the pure core folds exactly
    what the projector consumed. The values are `values` when given (a producer's own
    encoding: sealed), else `codec`'s encoding of each event (clear).
    """
    if values is None:
        if codec is None:
            raise TypeError("records_for needs a codec or the values")
        values = [codec.encode(event) for event in events]
    return [
        Record(
            topic=topic,
            partition=position.partition,
            offset=position.offset,
            key=event.session_id.encode(),
            value=value,
        )
        for event, position, value in zip(events, positions, values, strict=True)
    ]


def chat_text(rng: random.Random, length: int) -> str:
    """`length` characters of chat-like words (support vocabulary), drawn from `rng`."""
    words: list[str] = []
    size = 0
    while size < length:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:length]


# -- scripted support chats, for the summary scenarios ------------------------------------

_NAMES = ("Maria Lopez", "James Chen", "Aisha Khan", "Tom Becker", "Sofia Rossi", "Liam Walsh")
_PRODUCTS = (
    "Aurora X2 headphones",
    "Nimbus 15 laptop",
    "Vega S3 phone",
    "Orbit Mini speaker",
    "Atlas Pro monitor",
    "Pulse 4 smartwatch",
)
_CITIES = ("Lisbon", "Rotterdam", "Leeds", "Lyon", "Munich", "Valencia")
_CARRIERS = ("DHL", "UPS", "DPD", "GLS")
_MIN_WORDS, _MAX_WORDS = 40, 120
_MONTHS = ("March", "April", "May", "June", "July", "August")
# Placeholders drawn afresh for every sentence, so a long session keeps mentioning new
# orders, amounts and dates, as a long support session does, and the summary has work.
_USER_SENTENCES = (
    "Hi, this is {name}. I ordered the {product} on {date} under order {order} and it "
    "still has not arrived.",
    "The tracking number {tracking} has not shown any update since {date}, which is "
    "strange because it said out for delivery.",
    "Can you tell me when it will actually be delivered?",
    "I was charged {amount} twice on my card ending {last4}, once on {date} and again "
    "the day after.",
    "Could you send the invoice {invoice} to my work address as well?",
    "I would like to change the delivery address to {street}, {city}, if it is not too late.",
    "Is it possible to get a refund instead of a replacement?",
    "The {product} stopped working after {days} days; the screen flickers and then it "
    "turns off completely.",
    "I tried resetting it as the manual says, holding the power button for {days} "
    "seconds, but nothing changed at all.",
    "My colleague {name} ordered the same model under order {order}; does that one have "
    "the same problem?",
    "I need it before {date} because I am travelling to {city} for work that week.",
    "Thanks for looking into this, I really appreciate the quick answers so far.",
    "What happens to the discount code I used, will it be applied to the new order too?",
    "Honestly this is the second time this happens with an order from your shop.",
)
_ASSISTANT_SENTENCES = (
    "Thanks, {name}. I found order {order} for the {product}, placed on {date}.",
    "The parcel left our {city} warehouse on {date} with {carrier}, tracking number "
    "{tracking}, and it is currently held at their depot.",
    "I am sorry about the double charge of {amount}; I can see both transactions on the "
    "card ending {last4}.",
    "I will refund {amount} to your card today; it usually takes three to five business "
    "days to appear on your statement.",
    "I have scheduled a replacement {product} for delivery on {date}, and we will email "
    "you a prepaid label for the return.",
    "I have escalated this to our logistics team under ticket {ticket}, and they will "
    "contact {carrier} directly about the delay.",
    "Your delivery address is now {street}, {city}; the change applies to order {order} only.",
    "The invoice {invoice} has been sent again, and a copy is attached to ticket {ticket}.",
    "For the flickering screen, please update the firmware to version {version} first; "
    "many customers saw the issue disappear after that.",
    "If the problem continues, we can offer a full refund of {amount} or an exchange for "
    "the {product}.",
    "The discount code stays valid, and I have applied a credit of {amount} to your "
    "account as an apology for the trouble.",
    "Is there anything else I can help you with regarding order {order}?",
    "I understand the frustration, and I have added a note to your account so the next "
    "agent sees the whole history.",
)


def support_chat(turns: int, *, seed: int = 11) -> list[tuple[str, str]]:
    """`turns` (role, content) pairs of a customer-support session, user first.

    Each turn has 40 to 120 words (the aim drawn uniformly) of sentences that carry what a rolling
    summary must keep: names, order, ticket and tracking numbers, amounts, dates, promises
    and open questions. The same seed gives the same session.
    """
    rng = random.Random(seed)
    chat = []
    for n in range(turns):
        role = _ROLES[n % 2]
        sentences = _USER_SENTENCES if role == "user" else _ASSISTANT_SENTENCES
        target = rng.randint(_MIN_WORDS, _MAX_WORDS)
        words: list[str] = []
        # Each sentence at most once a turn; one that would pass the maximum is skipped.
        for template in rng.sample(sentences, len(sentences)):
            sentence = _fill(rng, template).split()
            if len(words) + len(sentence) <= _MAX_WORDS:
                words += sentence
            if len(words) >= target:
                break
        chat.append((role, " ".join(words)))
    return chat


def _fill(rng: random.Random, template: str) -> str:
    return template.format(
        name=rng.choice(_NAMES),
        product=rng.choice(_PRODUCTS),
        city=rng.choice(_CITIES),
        carrier=rng.choice(_CARRIERS),
        date=f"{rng.choice(_MONTHS)} {rng.randint(1, 28)}",
        order=f"#{rng.choice('ABCDEFGH')}{rng.randint(1, 9)}-{rng.randint(1000, 9999)}",
        tracking=f"TRK{rng.randint(100000, 999999)}",
        ticket=f"#T-{rng.randint(10000, 99999)}",
        invoice=f"INV{rng.randint(20240, 20259)}{rng.randint(100, 999)}",
        amount=f"${rng.randint(9, 899)}.{rng.randint(0, 99):02d}",
        last4=f"{rng.randint(1000, 9999)}",
        street=f"{rng.randint(1, 180)} {rng.choice(('Harbour', 'Station', 'Mill', 'Oak'))} Street",
        days=rng.randint(2, 30),
        version=f"{rng.randint(1, 4)}.{rng.randint(0, 9)}.{rng.randint(0, 20)}",
    )
