"""Loading one session's stored view from Redis: one MULTI, guarded by the epoch.

Every reader of a view (`RedisReader`, the summarizer, the conversation store) loads it
here, in one round trip: the generation pointer and epoch (`check_guard`: a lost
generation raises `ReadModelLost`, never a partial view or a "not found"), the meta hash
and the message list of one state, and, when asked, the key-directory entries of the
user who reads, which open the view (`chatlog.projections.opening.ViewOpener`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import redis
import redis.asyncio

from chatlog.projections.epochs import layout_problem, reader_problem
from chatlog.projections.keys import KeySpace
from chatlog.projections.redis_cluster import is_cluster, stamp
from chatlog.projections.redis_keys import entries_of
from chatlog.projections.redis_store import decode_loaded, queue_load, redis_errors, text
from chatlog.projections.view import SessionView
from chatlog.schemas.errors import LayoutMismatch, ReadModelLost
from chatlog.schemas.keyring import KeyEntries
from chatlog.schemas.sealing import KeyScope

__all__ = [
    "Loaded",
    "aload_guarded",
    "aload_session",
    "arun_guarded",
    "check_guard",
    "check_layout",
    "load_guarded",
    "load_session",
    "queue_guard",
    "run_guarded",
]


def queue_guard(pipe: Any, keys: KeySpace) -> None:
    """Queue the reads `check_guard` needs: the pointer and the generation's epoch."""
    pipe.get(keys.pointer)
    pipe.get(keys.epoch)


def check_guard(replies: Sequence[Any], keys: KeySpace, *, final: bool = True) -> bool:
    """Whether the generation `keys` names may be served, from `queue_guard`'s replies;
    `ReadModelLost` if it is lost. False for a generation the pointer has moved away
    from and that is deleted, unless `final`: then read the new one."""
    pointer, epoch = (None if r is None else text(r) for r in replies)
    if pointer is not None and pointer != keys.generation and epoch is None and not final:
        return False
    problem = reader_problem(pointer and keys.generation, epoch)
    if problem is None:
        return True
    raise ReadModelLost(
        f"{problem}. Nothing is served from it until it is rebuilt from the log: by the "
        f"projector if it runs with CHATLOG_ON_DATA_LOSS=rebuild, else with `chatlog "
        f"replay` (is the projector running: `chatlog run projector`?). Meanwhile "
        f"`ChatLog.context(..., as_of=...)` reads the log itself",
        generation=pointer,
    )


def check_layout(replies: Sequence[Any], keys: KeySpace) -> None:
    """`LayoutMismatch` unless the generation `keys` names has this code's key layout,
    from `queue_guard`'s replies (once `check_guard` has passed them), for the reads that
    depend on the layout: a session list."""
    epoch = text(replies[1])
    problem = layout_problem(keys.generation, epoch)
    if problem is not None:
        raise LayoutMismatch(problem, generation=keys.generation)


class Loaded(NamedTuple):
    """A session's stored view, its window size, and the owner's key entries asked for."""

    view: SessionView | None
    window: int
    # The key-directory entries of the owner the load was asked to fetch, if any.
    entries: KeyEntries
    # With an owner, the messages are left as stored (the view has none yet), so that
    # they are decoded once, opened, after the read rule has let the reader see them.
    raw: Sequence[Any] = ()


def load_session(
    client: redis.Redis, keys: KeySpace, session_id: str, *, messages: bool = True
) -> tuple[SessionView | None, int]:
    """The session's stored view (None if it has none) and window size, in one round trip.

    `messages=False` leaves the message list unread (the view then has no messages), for
    callers that need only the session's meta. `ReadModelLost` if the generation is lost
    (see `check_guard`), never a partial view or a None for a session that existed. The
    view is as stored: sealed (see `ViewOpener`).
    """
    loaded = load_guarded(client, keys, session_id, messages=messages, final=True)
    assert loaded is not None  # final: lost raises
    return loaded.view, loaded.window


async def aload_session(
    client: redis.asyncio.Redis, keys: KeySpace, session_id: str, *, messages: bool = True
) -> tuple[SessionView | None, int]:
    """`load_session`, awaited."""
    loaded = await aload_guarded(client, keys, session_id, messages=messages, final=True)
    assert loaded is not None  # final: lost raises
    return loaded.view, loaded.window


def load_guarded(
    client: redis.Redis,
    keys: KeySpace,
    session_id: str,
    *,
    final: bool,
    messages: bool = True,
    owner: KeyScope | None = None,
) -> Loaded | None:
    """`load_session` (and `owner`'s key entries); None if the pointer has moved away
    from `keys` (see `check_guard`)."""
    with redis_errors():
        replies = run_guarded(
            client,
            keys,
            keys.meta(session_id),
            lambda pipe: queue_load(pipe, keys, session_id, messages=messages),
            lambda pipe: _queue_entries(pipe, keys, owner),
        )
    return _guarded_load(replies, keys, final=final, messages=messages, owner=owner)


async def aload_guarded(
    client: redis.asyncio.Redis,
    keys: KeySpace,
    session_id: str,
    *,
    final: bool,
    messages: bool = True,
    owner: KeyScope | None = None,
) -> Loaded | None:
    """`load_guarded`, awaited."""
    with redis_errors():
        replies = await arun_guarded(
            client,
            keys,
            keys.meta(session_id),
            lambda pipe: queue_load(pipe, keys, session_id, messages=messages),
            lambda pipe: _queue_entries(pipe, keys, owner),
        )
    return _guarded_load(replies, keys, final=final, messages=messages, owner=owner)


def _queue_entries(pipe: Any, keys: KeySpace, owner: KeyScope | None) -> None:
    if owner is not None:
        pipe.hgetall(keys.user_keys(owner.tenant, owner.user_id))


# One MULTI on one node: the meta and the messages of one state (never a meta from
# before a projector's write beside messages from after it), the epoch that says the
# generation still holds everything it was given, and the keys that open the view.
# On a cluster the MULTI holds what shares the slot of `near` (with that slot's epoch
# stamp, `chatlog.projections.redis_cluster`); the pointer and `then` (the reader's key
# entries, another slot) are read right after it.
Queue = Callable[[Any], object]


def run_guarded(
    client: Any, keys: KeySpace, near: str, queue: Queue, then: Queue | None = None
) -> list[Any]:
    """The replies of `queue_guard` (pointer, epoch), of `queue`, then of `then`, read
    as one state of the key `near`'s slot (see above)."""
    return _in_order([pipe.execute() for pipe in _guarded(client, keys, near, queue, then)])


async def arun_guarded(
    client: Any, keys: KeySpace, near: str, queue: Queue, then: Queue | None = None
) -> list[Any]:
    """`run_guarded`, awaited."""
    return _in_order([await pipe.execute() for pipe in _guarded(client, keys, near, queue, then)])


def _guarded(client: Any, keys: KeySpace, near: str, queue: Queue, then: Queue | None) -> list[Any]:
    """The pipelines of `run_guarded`, to execute one after the other: one MULTI on one
    node; on a cluster, the MULTI of `near`'s slot, then the pointer and `then`."""
    if not is_cluster(client):
        pipe = client.pipeline(transaction=True)
        queue_guard(pipe, keys)
        queue(pipe)
        if then is not None:
            then(pipe)
        return [pipe]
    held = client.pipeline(transaction=True)
    held.get(stamp(keys, near))
    queue(held)
    rest = client.pipeline(transaction=False)
    rest.get(keys.pointer)
    if then is not None:
        then(rest)
    return [held, rest]


def _in_order(replies: list[Any]) -> list[Any]:
    """The replies of `_guarded`'s pipelines as one node's MULTI answers them."""
    if len(replies) == 1:
        return list(replies[0])
    (epoch, *held), (pointer, *rest) = replies
    return [pointer, epoch, *held, *rest]


def _guarded_load(
    replies: Sequence[Any], keys: KeySpace, *, final: bool, messages: bool, owner: KeyScope | None
) -> Loaded | None:
    if not check_guard(replies[:2], keys, final=final):
        return None
    if owner is None:
        return Loaded(*decode_loaded(replies[2:], messages=messages), KeyEntries())
    view, window = decode_loaded(replies[2:-1], messages=False)
    raw = replies[3] if messages else ()
    return Loaded(view, window, entries_of(owner, replies[-1]), raw)
