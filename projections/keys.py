"""The Redis key layout of the read-model.

Every key lives under `<prefix>:<generation>:`, and one pointer key `<prefix>:generation`
names the live generation. A rebuild fills a new generation while readers keep using the
live one, then flips the pointer. A session's keys share the hash tag `{<session_id>}`, so
one Lua call can update them atomically (one slot on Redis Cluster too, though the epoch
check of that call is not yet). A user's session index has a tag of its own,
`{u:<tenant>:<user_id>}` (one index per user of a tenant, as the key directory's
`{k:<tenant>:<user_id>}`), and is updated separately.

    chatlog:generation                          -> "g1"
    chatlog:g1:s:{session-42}:meta              hash: owner and tenant, counts, summary, ...
    chatlog:g1:s:{session-42}:msgs              list: overflow then window, oldest first
    chatlog:g1:u:{u:acme:alice}:sessions        sorted set: session id by last activity
    chatlog:g1:progress                         hash: partition -> last projected offset
    chatlog:g1:epoch                            "v2-<token>": the layout, a token written
                                                when g1 was created
    chatlog:keys:{k:acme:alice}                 hash: key id -> wrapped data key; !erased
    chatlog:owner:{session-42}                  "acme<US>alice": the session's claim
    chatlog:claimed:{c:acme:alice}              sorted set: her claimed sessions by expiry
    chatlog:rate:{t:acme}:tenant                hash: the tenant's request bucket
    chatlog:rate:{t:acme}:u:alice               hash: alice's request bucket in acme

The claims and the rate buckets are outside every generation too: they are no
projection of the log, and a rebuild must not reset them. A user's claimed sessions
count them against ``CHATLOG_MAX_SESSIONS_PER_USER``; the one Lua call that takes a
claim counts it, so it spans the session's slot and the user's (one Redis node; on
Cluster it is for the Cluster issue, as the erasure's calls are). The rate buckets of
one tenant share the tag `{t:<tenant>}`, so the gateway checks a user's bucket and
their tenant's in one call, on one Cluster node: a tenant's whole request load lands on
that node, the price of taking both tokens atomically.

    chatlog:applied:{session-42}                sharded pub/sub channel: "applied" notices

The recall index (`chatlog.projections.redis_vectors`) lives on the Redis that
``CHATLOG_RECALL_REDIS_URL`` names (the same one by default), in the same generations:

    chatlog:g1:recall                           the search index (FT.CREATE), over:
    chatlog:g1:recall:m:session-42:msg-7        hash: one turn's vector, its tags, the
                                                sealed message as the read-model stores it
    chatlog:g1:recall:meta                      hash: embedding model, dimension, epoch
    chatlog:g1:recall:progress                  hash: partition -> last offset indexed
    chatlog:recall-erased:{r:acme:alice}        the time alice was erased: no vector of
                                                hers is written again, in any generation

The key directory (`chatlog.projections.redis_keys`) is shared by every generation: it
copies the `chatlog.keys` topic, not the events, so a rebuild has nothing to redo there.

Ids cannot contain `{`, `}` or `:` (see `chatlog.schemas.ids`), so no id can break out of its tag.

Why are session keys not scoped by tenant? A session id is one Kafka key, one partition,
one claim and one fold, whoever writes it: two tenants cannot both have a session
`session-42` (the second writer is refused, `chatlog.projections.redis_claims`). The
session's meta records its tenant, and every read compares it
(`chatlog.projections.access`). Only a user's index needed the tenant in its name.

Layouts. `LAYOUT` is the layout this code writes; a generation records the one it was
built with in its epoch value (`chatlog.projections.epochs.layout_of`). Layout 1 (before
the tenant-scoped index) had one index per user id, `u:{u:<user_id>}`, shared by every
tenant: a generation built with it keeps being written in it (its readers read it so),
its contexts are served (their keys did not change), and its session lists are refused
until `chatlog replay` builds a generation of the current layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chatlog.schemas.errors import ConfigError

__all__ = ["ERASED_FIELD", "LAYOUT", "LEGACY_LAYOUT", "KeySpace"]

LAYOUT = 2
"""The key layout this code writes: 2, the user index scoped by tenant."""
LEGACY_LAYOUT = 1
"""The layout of a generation whose epoch names none: one user index per user id."""

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

    def checkpoints(self, session_id: str) -> str:
        """The hash of the session's LangGraph thread: each namespace's latest checkpoint
        and its pending writes (`chatlog.projections.checkpoints`)."""
        return f"{self.prefix}:{self.generation}:s:{{{session_id}}}:ckpt"

    def checkpoint_index(self, session_id: str) -> str:
        """The hash of where each of the thread's checkpoints is in the log (its offset)."""
        return f"{self.prefix}:{self.generation}:s:{{{session_id}}}:ckpti"

    def user_sessions(self, tenant: str, user_id: str, *, layout: int = LAYOUT) -> str:
        """A user's sessions in their tenant, scored by last activity (ms); in a generation
        of `layout` 1, the index of the user id, shared by every tenant."""
        if layout == LEGACY_LAYOUT:
            return f"{self.prefix}:{self.generation}:u:{{u:{user_id}}}:sessions"
        return f"{self.prefix}:{self.generation}:u:{{u:{tenant}:{user_id}}}:sessions"

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

    def claim(self, session_id: str) -> str:
        """Who owns the session: "<tenant><US><user>" (`chatlog.projections.redis_claims`)."""
        return f"{self.prefix}:owner:{{{session_id}}}"

    def claimed_sessions(self, tenant: str, user_id: str) -> str:
        """The sessions a user has claimed, scored by when each claim expires (ms)."""
        return f"{self.prefix}:claimed:{{c:{tenant}:{user_id}}}"

    def tenant_rate(self, tenant: str) -> str:
        """The tenant's request bucket (`chatlog.gateway.redis_ratelimit`)."""
        return f"{self.prefix}:rate:{{t:{tenant}}}:tenant"

    def user_rate(self, tenant: str, user_id: str) -> str:
        """A user's request bucket, in their tenant's slot."""
        return f"{self.prefix}:rate:{{t:{tenant}}}:u:{user_id}"

    def applied(self, session_id: str) -> str:
        """The shard channel (SPUBLISH) on which the projector says it applied events of
        the session. Outside every generation, so a listener keeps it across a rebuild;
        in the session's hash tag, so on Redis Cluster it lives on the session's shard."""
        return f"{self.prefix}:applied:{{{session_id}}}"

    @property
    def recall_index(self) -> str:
        """The name of this generation's recall index (a search index, not a key)."""
        return f"{self.prefix}:{self.generation}:recall"

    @property
    def recall_documents(self) -> str:
        """The prefix of the recall index's documents: what FT.CREATE indexes."""
        return f"{self.prefix}:{self.generation}:recall:m:"

    def recall_document(self, session_id: str, message_id: str) -> str:
        """One turn's document in the recall index. A message id is unique in its session
        only, so the session is part of the name (ids hold no `:`)."""
        return f"{self.recall_documents}{session_id}:{message_id}"

    @property
    def recall_meta(self) -> str:
        """The recall index's metadata: embedding model, dimension, algorithm, epoch."""
        return f"{self.prefix}:{self.generation}:recall:meta"

    @property
    def recall_progress(self) -> str:
        """How far the recall index has read: partition -> last offset indexed."""
        return f"{self.prefix}:{self.generation}:recall:progress"

    def recall_erased(self, tenant: str, user_id: str) -> str:
        """The mark of a user's erasure for the recall index, outside every generation."""
        return f"{self.prefix}:recall-erased:{{r:{tenant}:{user_id}}}"

    def generation_pattern(self) -> str:
        """A SCAN pattern for every key of this generation."""
        return f"{self.prefix}:{self.generation}:*"
