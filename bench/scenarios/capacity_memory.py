"""Capacity, Redis: the bytes a typical session and a user keep in the read-model.

`capacity_users` users with `capacity_sessions_per_user` sessions each, every session
`capacity_turns` turns of the scripted support chat (user and assistant alternating,
40 to 120 words a turn), published through `wiring.producer` (so sealed: every personal
field under its owner's data key, and redacted as deployed), each session claimed for
its owner first (`wiring.claims`, as `start_session` and the gateway do). Summaries
arrive where the real engine would ask for them: every `summary_threshold` turns that
leave the window (`CHATLOG_WINDOW`), each a `SummaryUpdated` through the last turn it
covers, of a fixed text of three quarters of `CHATLOG_SUMMARY_MAX_TOKENS` (no LLM is
needed to count bytes). A projector process projects it all; then every key under the
run's prefix is measured with `MEMORY USAGE <key> SAMPLES 0` and put with the session
whose hash tag it carries (meta, messages, owner claim), the user's (session index, key
directory, claimed sessions) or neither (progress marks, epoch, pointer). Beside it, the
growth of `INFO memory`'s `used_memory` over the whole step, per session: what Redis
itself paid, its key table and allocator included.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.infra import BenchStack, ReadModelProbe, fresh_producer, publish_bulk, running
from bench.measure import load_average
from bench.plan import Plan
from bench.report import Figure, say
from bench.workload import support_chat
from chatlog import wiring
from chatlog.producers.commands import append_message, new_event
from chatlog.projections.redis_store import text
from chatlog.schemas.events import ConversationEvent, SummaryUpdated
from chatlog.schemas.position import Position
from chatlog.schemas.sealing import KeyScope
from chatlog.settings import Settings

__all__ = ["MemoryRun", "redis_bytes"]

_TAG = re.compile(r"\{([^}]*)\}")
_USER_TAGS = ("u:", "k:", "c:")  # a user's session index, key directory, claimed sessions


@dataclass
class MemoryRun:
    """What the Redis part measured, for the table and the model."""

    figures: list[Figure] = field(default_factory=list)
    session_bytes: float = 0.0
    user_bytes: float = 0.0
    notes: list[str] = field(default_factory=list)


def _summary_points(turns: int, window: int, threshold: int) -> list[int]:
    """After which turns (1-based) a summary is due, and it covers up to turn - window.

    With turns arriving one by one, the overflow (turns out of the window not summarized
    yet) reaches the threshold at window + threshold, window + 2 x threshold, ...
    """
    return list(range(window + threshold, turns + 1, threshold))


def redis_bytes(stack: BenchStack, plan: Plan) -> MemoryRun:
    """Project typical sessions, then measure the bytes of their keys."""
    settings = stack.scenario("capacity_memory")
    users, per_user, turns = (
        plan.capacity_users,
        plan.capacity_sessions_per_user,
        plan.capacity_turns,
    )
    chat = support_chat(turns)
    summary = _summary_text(chat, settings.summary_max_tokens * 3)  # ~4 characters a token
    points = _summary_points(turns, settings.window, settings.summary_threshold)
    owners = {f"cap-s{u:05d}-{j}": f"cap-u{u:05d}" for u in range(users) for j in range(per_user)}
    before = int(stack.redis.info("memory")["used_memory"])
    load = load_average()
    claims = wiring.claims(settings, stack.redis)
    positions: dict[str, list[Position]] = {s: [] for s in owners}
    last: dict[str, Position] = {}
    with fresh_producer(settings) as producer:
        turn_events = {
            session: [
                append_message(
                    session, user_id=user, role=role, content=content, producer=producer.info
                )
                for role, content in chat
            ]
            for session, user in owners.items()
        }
        for session, events in turn_events.items():
            claims.claim(KeyScope.of(events[0]), session)
        done = 0
        for point in sorted({*points, turns}):
            batch: list[ConversationEvent] = []
            for session in owners:
                batch += turn_events[session][done:point]
            for event, position in zip(batch, publish_bulk(producer, batch), strict=True):
                positions[event.session_id].append(position)
                last[event.session_id] = position
            done = point
            if point not in points:
                continue
            covered = point - settings.window
            summaries = [
                _summary(owners, session, summary, positions[session][covered - 1], covered)
                for session in owners
            ]
            for event, position in zip(summaries, publish_bulk(producer, summaries), strict=True):
                last[event.session_id] = position
        say(
            f"capacity memory: {len(owners):,} sessions of {turns} turns and {len(points)} "
            f"summaries each published; projecting"
        )
    with running(settings, stack) as projector:
        projector.wait_assigned(partitions=settings.partitions)
        ReadModelProbe(stack.redis, settings.redis_prefix).wait_applied(
            last, projector, timeout=max(120.0, len(owners) * turns / 500)
        )
    after = int(stack.redis.info("memory")["used_memory"])
    _check(stack, settings, owners, turns, points)
    by_session, by_user, rest = _measure(stack, settings.redis_prefix, set(owners))
    run = MemoryRun()
    per_session = Figure(
        f"Redis per session ({turns} turns, window {settings.window}, summary, sealed): meta, "
        f"messages, owner claim",
        "KB",
    )
    per_session.add(statistics.median(by_session.values()) / 1024, load)
    user = Figure("Redis per user: session index, key directory, claimed sessions", "KB")
    user.add(statistics.median(by_user.values()) / 1024, load)
    thousand = Figure(f"Redis per 1,000 users with {per_user} sessions each (keys' data)", "MB")
    per_thousand = 1000 * (user.median + per_user * per_session.median) * 1024
    thousand.add(per_thousand / 1e6, load)
    grown = Figure("Redis used_memory growth per session (allocator and key table included)", "KB")
    grown.add((after - before) / len(owners) / 1024, load)
    run.figures += [per_session, user, thousand, grown]
    run.session_bytes = per_session.median * 1024
    run.user_bytes = user.median * 1024
    run.notes.append(
        f"Redis: {users:,} users x {per_user} sessions of {turns} turns of the scripted "
        f"support chat (40-120 words a turn), sealed and redacted as published, each "
        f"session claimed first; a SummaryUpdated of {len(summary):,} characters after turns "
        f"{', '.join(map(str, points))} (threshold {settings.summary_threshold}, window "
        f"{settings.window}); MEMORY USAGE SAMPLES 0 of every key, grouped by hash tag, "
        f"median; keys of neither a session nor a user: {rest:,} B in all; used_memory grew "
        f"{(after - before) / 1e6:,.1f} MB over the step (Redis without persistence)"
    )
    return run


def _summary_text(chat: Sequence[tuple[str, str]], characters: int) -> str:
    """A summary-like text of `characters`: the chat's own sentences, cut to length."""
    return " ".join(content for _, content in chat)[:characters]


def _summary(
    owners: dict[str, str], session: str, summary: str, through: Position, covered: int
) -> ConversationEvent:
    return new_event(
        session,
        user_id=owners[session],
        payload=SummaryUpdated(
            summary=summary,
            through_offset=through.offset,
            model="capacity-stand-in",
            covered_messages=covered,
        ),
    )


def _check(
    stack: BenchStack,
    settings: Settings,
    owners: dict[str, str],
    turns: int,
    points: Sequence[int],
) -> None:
    """The first session's context: the window, and the summary when one was published."""
    session, user = next(iter(owners.items()))
    context = wiring.reader(settings, stack.redis).context(session, user_id=user)
    if context.message_count != turns or (points and context.summary is None):
        raise AssertionError(
            f"{session}: {context.message_count} messages, summary "
            f"{'present' if context.summary else 'absent'}; expected {turns} and a summary"
        )


def _measure(
    stack: BenchStack, prefix: str, sessions: set[str]
) -> tuple[dict[str, int], dict[str, int], int]:
    """Bytes per session, per user, and of the rest, of every key under `prefix`."""
    names = [text(raw) for raw in stack.redis.scan_iter(match=f"{prefix}:*", count=1000)]
    pipe = stack.redis.pipeline(transaction=False)
    for name in names:
        pipe.memory_usage(name, samples=0)
    by_session: dict[str, int] = {}
    by_user: dict[str, int] = {}
    rest = 0
    for name, used in zip(names, pipe.execute(), strict=True):
        found = _TAG.search(name)
        tag = found.group(1) if found else ""
        size = int(used or 0)
        if tag in sessions:
            by_session[tag] = by_session.get(tag, 0) + size
        elif tag.startswith(_USER_TAGS):
            user = tag.split(":")[-1]
            by_user[user] = by_user.get(user, 0) + size
        else:
            rest += size
    return by_session, by_user, rest
