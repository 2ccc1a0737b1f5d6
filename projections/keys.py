"""The Redis key layout of the read-model.

Every key lives under `<prefix>:<generation>:`, and one pointer key `<prefix>:generation`
names the live generation. A rebuild fills a new generation while readers keep using the
live one, then flips the pointer. A session's keys share the hash tag `{<session_id>}`, so
one Lua call can update them atomically (one slot on Redis Cluster too, though the epoch
check of that call is not yet). A user's session index has a tag of its own,
`{u:<user_id>}`, and is updated separately.

    chatlog:generation                          -> "g1"
    chatlog:g1:s:{session-42}:meta              hash: owner, counts, summary, last offset
    chatlog:g1:s:{session-42}:msgs              list: overflow then window, oldest first
    chatlog:g1:u:{u:alice}:sessions             sorted set: session id by last activity
    chatlog:g1:progress                         hash: partition -> last projected offset
    chatlog:g1:epoch                            token written when g1 was created
    chatlog:keys:{k:acme:alice}                 hash: key id -> wrapped data key; !erased
    chatlog:owner:{session-42}                  "acme<US>alice": the session's claim
    chatlog:applied:{session-42}                sharded pub/sub channel: "applied" notices

The key directory (`chatlog.projections.redis_keys`) is shared by every generation: it
copies the `chatlog.keys` topic, not the events, so a rebuild has nothing to redo there.

Ids cannot contain `{`, `}` or `:` (see `chatlog.schemas.ids`), so no id can break out of its tag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chatlog.schemas.errors import ConfigError

__all__ = ["ERASED_FIELD", "KeySpace"]

# The field of a user's key directory hash that marks them erased, with the time (ms).
# `!` is no id character, so no key id can collide with it.
ERASED_FIELD = "!erased"

_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_GENERATION = re.compile(r"[A-Za-z0-9_.-]{1,32}")


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Names the keys of one generation of the read-model."""

    prefix: str = "chatlog"
    generation: str = "g1"

    def __post_init__(self) -> None:
        if _PREFIX.fullmatch(self.prefix) is None:
            raise ConfigError(
                f"Redis key prefix {self.prefix!r} must be 1-64 of [A-Za-z0-9_.:-]",
                setting="CHATLOG_REDIS_PREFIX",
            )
        if _GENERATION.fullmatch(self.generation) is None:
            raise ConfigError(f"generation {self.generation!r} must be 1-32 of [A-Za-z0-9_.-]")

    @property
    def pointer(self) -> str:
        """The key naming the live generation (shared by all generations)."""
        return f"{self.prefix}:generation"

    def with_generation(self, generation: str) -> KeySpace:
        """The same layout in another generation."""
        return KeySpace(self.prefix, generation)

    def meta(self, session_id: str) -> str:
        """A session's meta hash."""
        return f"{self.prefix}:{self.generation}:s:{{{session_id}}}:meta"

    def messages(self, session_id: str) -> str:
        """A session's message list (overflow then window, oldest first)."""
        return f"{self.prefix}:{self.generation}:s:{{{session_id}}}:msgs"

    def user_sessions(self, user_id: str) -> str:
        """A user's sessions, scored by last activity (ms)."""
        return f"{self.prefix}:{self.generation}:u:{{u:{user_id}}}:sessions"

    @property
    def progress(self) -> str:
        """The projection's progress: partition -> last offset it has projected."""
        return f"{self.prefix}:{self.generation}:progress"

    @property
    def epoch(self) -> str:
        """The generation's epoch: a token written when it is created. A generation the
        pointer names without its epoch has lost its data (see `chatlog.projections.epochs`)."""
        return f"{self.prefix}:{self.generation}:epoch"

    def user_keys(self, tenant: str, user_id: str) -> str:
        """A user's wrapped data keys and erasure mark, outside every generation."""
        return f"{self.prefix}:keys:{{k:{tenant}:{user_id}}}"

    def applied(self, session_id: str) -> str:
        """The shard channel (SPUBLISH) on which the projector says it applied events of
        the session. Outside every generation, so a listener keeps it across a rebuild;
        in the session's hash tag, so on Redis Cluster it lives on the session's shard."""
        return f"{self.prefix}:applied:{{{session_id}}}"

    def generation_pattern(self) -> str:
        """A SCAN pattern for every key of this generation."""
        return f"{self.prefix}:{self.generation}:*"
