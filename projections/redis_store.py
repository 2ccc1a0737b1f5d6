"""The read-model in Redis: `RedisViewStore` writes session views and lists sessions.

Each write of one session is one Lua call on the session's two keys (same hash tag),
so it is atomic, and it carries the expected and the new last offset, so it is
idempotent (see `chatlog.projections.store`). Ids travel as KEYS and ARGV, never inside the
script text. All the writes of a batch go in one pipeline: one round trip per batch; on
one node the batch's progress mark is the pipeline's last call (`apply_marking`).

Time-to-live slides with activity and counts from the session's last event time, not
from the moment of the write, so a replay rebuilds exactly the expiry the live
projector produced. The per-user index has its own hash tag: on one node the session's
call writes its entry too, on a cluster (another slot) a second small script in the same
pipeline does; its entries are scored by last activity, which lets a read drop expired
sessions from it.
The index's key is that of the generation's key layout (read from its epoch), so a
generation built with an older layout stays whole in it until a replay replaces it.

The live projector's store also says, after each batch, which sessions it wrote: one
SPUBLISH per session on the session's shard channel (`KeySpace.applied`), in the same
pipeline, so it costs no round trip. Gateways listen there to stream updates; a notice
is a hint to read through the normal read path, and a lost one only delays the read.

On Redis Cluster every script here touches one slot: the epoch it checks is its slot's
stamp, and the checks a single node makes across slots are made as separate steps
(`chatlog.projections.redis_cluster` says which and why).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import orjson
import redis

from chatlog.projections.checkpoints import CheckpointRecord
from chatlog.projections.encoding import MessagesDelta, decode_view, diff, encode_meta
from chatlog.projections.epochs import is_intact, layout_of, layout_problem
from chatlog.projections.keys import ERASED_FIELD, LAYOUT, KeySpace
from chatlog.projections.redis_cluster import execute, is_cluster, stamp
from chatlog.projections.store import Change, Outcome
from chatlog.projections.view import DEFAULT_POLICY, SessionStatus, SessionView, WindowPolicy
from chatlog.schemas.errors import ConfigError, DataLoss, LayoutMismatch, StoreUnavailable
from chatlog.schemas.position import Position

__all__ = [
    "CHECKPOINT_FIELD_SEP",
    "RedisViewStore",
    "applied_notice",
    "parse_applied_notice",
    "redis_errors",
    "text",
    "text_map",
]

# Every script below that writes into a generation first checks its epoch (see
# `chatlog.projections.epochs`): KEYS[n] the epoch key, ARGV[n] the token the store
# read when it first wrote. Without it the generation is lost, and the script returns
# 3 and writes nothing, so a running projector cannot recreate part of a lost view.
_GUARD = """
local function lost(epoch_key, token)
  return redis.call('GET', epoch_key) ~= token
end
"""

# An erased owner is never written (see `chatlog.processors.erasure`): the script that
# writes a session (its view and its index entry, in one call) also reads the owner's
# entry in the key directory (KEYS: its hash) and, if it has the erased mark, deletes the
# session's keys and index entry instead and returns 4. A batch opened before an erasure
# and written after it therefore leaves nothing. Like the epoch check, this spans hash
# slots: one Redis node. On a cluster the store reads the marks after the write instead
# (`RedisViewStore._unwrite_erased`).
_ERASED = f"""
local function erased(user_keys)
  return redis.call('HEXISTS', user_keys, '{ERASED_FIELD}') == 1
end
"""

# A session's write travels as one argument: a JSON list (`_write_args`) that the script
# decodes with Redis' built-in cjson into the table W. Forty-odd arguments a session, each
# packed by redis-py in Python, cost the live projector a fifth of its CPU; one orjson
# call packs them in C. Values the script hands to Redis commands unconverted are
# strings in W, as they were as ARGV, so Redis stores exactly the same bytes.
# W: the epoch token, the session's partition (text), the lowest progress mark this store
# has seen there (a mark below it: an older snapshot was restored under the running
# projector), the session id, the index score (last activity ms, text), the index's ttl
# ms (0: none), "add" or "rem" (its index entry), then the expected offset, the new
# offset, expire-at ms (0: none), mode ("d" delta / "r" replace), trim, #overwrites,
# #appends, #meta pairs, meta mode ("f" full / "p" only the fields that changed), then the
# overwrites (index, json)..., the appended json..., the meta pairs.
# `write_view` (KEYS[1] meta, KEYS[2] msgs) returns 0 duplicate, 1 written, 2 conflict.
_WRITE_VIEW = """
local function write_view(W)
  local stored = redis.call('HGET', KEYS[1], 'last_offset')
  local expected = tonumber(W[8])
  local new_last = tonumber(W[9])
  if stored then
    stored = tonumber(stored)
    if stored >= new_last then return 0 end
    if stored ~= expected then return 2 end
  elseif expected ~= -1 then
    return 2
  end
  local n_over, n_app, n_meta = tonumber(W[13]), tonumber(W[14]), tonumber(W[15])
  local i = 17
  if W[11] == 'r' then
    redis.call('DEL', KEYS[2])
  else
    local trim = tonumber(W[12])
    if trim > 0 then redis.call('LTRIM', KEYS[2], trim, -1) end
    for _ = 1, n_over do
      redis.call('LSET', KEYS[2], tonumber(W[i]), W[i + 1])
      i = i + 2
    end
  end
  local j = 0
  while j < n_app do
    local k = math.min(j + 500, n_app)
    redis.call('RPUSH', KEYS[2], unpack(W, i + j, i + k - 1))
    j = k
  end
  i = i + n_app
  if W[16] == 'f' then redis.call('DEL', KEYS[1]) end
  if n_meta > 0 then redis.call('HSET', KEYS[1], unpack(W, i, i + 2 * n_meta - 1)) end
  local expire_at = tonumber(W[10])
  if expire_at > 0 then
    redis.call('PEXPIREAT', KEYS[1], expire_at)
    redis.call('PEXPIREAT', KEYS[2], expire_at)
  end
  return 1
end
"""

# The per-user index entry of a session: scored by last activity, removed for an erased
# session; the index lives as long as its most recently active session.
_INDEX_ENTRY = """
local function index_entry(index, session_id, score, ttl, op)
  if op == 'rem' then
    redis.call('ZREM', index, session_id)
  else
    redis.call('ZADD', index, 'GT', score, session_id)
  end
  ttl = tonumber(ttl)
  if ttl > 0 then
    local top = redis.call('ZREVRANGE', index, 0, 0, 'WITHSCORES')
    if top[2] then redis.call('PEXPIREAT', index, tonumber(top[2]) + ttl) end
  end
end
"""

# One node: the whole of a session's write in one call. KEYS: meta, msgs, epoch,
# progress, the owner's key directory hash, the user's index. ARGV[1]: W. Returns as
# `write_view`, 3 (generation lost) or 4 (owner erased: the session's keys and its index
# entry deleted instead). The index entry is written whatever the view's outcome (ZADD
# GT: a replay or a duplicate moves nothing back).
_APPLY = (
    _GUARD
    + _ERASED
    + _WRITE_VIEW
    + _INDEX_ENTRY
    + """
local W = cjson.decode(ARGV[1])
if lost(KEYS[3], W[1]) then return 3 end
if tonumber(redis.call('HGET', KEYS[4], W[2]) or '-1') < tonumber(W[3]) then
  return 3
end
if erased(KEYS[5]) then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('ZREM', KEYS[6], W[4])
  return 4
end
local outcome = write_view(W)
index_entry(KEYS[6], W[4], W[5], W[6], W[7])
return outcome
"""
)
# On Redis Cluster (`chatlog.projections.redis_cluster`): KEYS meta, msgs and the epoch
# stamp of their slot, ARGV[1] W as above. The index is in the user's slot (`_INDEX`),
# the progress marks and the erased mark in others: the store checks the erased mark
# after the write instead.
_APPLY_CLUSTER = (
    _GUARD
    + _WRITE_VIEW
    + """
local W = cjson.decode(ARGV[1])
if lost(KEYS[3], W[1]) then return 3 end
return write_view(W)
"""
)

# On Redis Cluster, the index entry in the user's slot: KEYS the user's index and the
# epoch stamp of its slot. ARGV: session id, score (last activity ms), ttl ms (0: none),
# "add" or "rem", the epoch token.
_INDEX = (
    _GUARD
    + _INDEX_ENTRY
    + """
if lost(KEYS[2], ARGV[5]) then return 3 end
index_entry(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return 1
"""
)

# Moves the progress marks in KEYS[1] (partition, offset, ... from index `first` of
# `pairs`): a mark only moves forward.
_MARK = """
local function mark(pairs, first)
  for i = first, #pairs, 2 do
    local stored = tonumber(redis.call('HGET', KEYS[1], pairs[i]) or '-1')
    if tonumber(pairs[i + 1]) > stored then redis.call('HSET', KEYS[1], pairs[i], pairs[i + 1]) end
  end
end
"""

# KEYS: the progress hash, the epoch. ARGV: the epoch token, then partition, offset, ...
_PROGRESS = (
    _GUARD
    + _MARK
    + """
if lost(KEYS[2], ARGV[1]) then return 3 end
mark(ARGV, 2)
return 1
"""
)

# One node, last in a batch's pipeline: KEYS the progress hash, the epoch, then the meta
# of each session the pipeline wrote. ARGV: the epoch token, then a JSON list: the new
# last offset of each of those sessions, then partition, offset, ... Marks only if every
# session stands at or past its new offset (`MarksWithWrites`), else returns 5.
_PROGRESS_AFTER = (
    _GUARD
    + _MARK
    + """
if lost(KEYS[2], ARGV[1]) then return 3 end
local M = cjson.decode(ARGV[2])
local n = #KEYS - 2
for s = 1, n do
  local stored = redis.call('HGET', KEYS[s + 2], 'last_offset')
  if not stored or tonumber(stored) < M[s] then return 5 end
end
mark(M, n + 1)
return 1
"""
)
_NOT_MARKED = 5

_OUTCOMES = {0: Outcome.DUPLICATE, 1: Outcome.APPLIED, 2: Outcome.CONFLICT, 4: Outcome.ERASED}
_LOST = 3


# KEYS: the thread's hash, its index. ARGV: kind, namespace, checkpoint id, offset, the
# event's bytes, the sliding TTL in ms (0: none).
# A LangGraph thread's hashes (`chatlog.projections.redis_checkpoints` describes and reads
# them): fields join their parts with this byte, in no namespace or id LangGraph makes.
CHECKPOINT_FIELD_SEP = "\x00"

_CHECKPOINT = r"""
local kind, ns, id, offset, value = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ttl = tonumber(ARGV[6])
if kind == 'e' then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 0
end
local latest = redis.call('HGET', KEYS[1], 'l\0' .. ns)
if kind == 'c' then
  redis.call('HSET', KEYS[2], 'p\0' .. ns .. '\0' .. id, offset)
  local first = redis.call('HGET', KEYS[2], 'first')
  if not first or tonumber(offset) < tonumber(first) then
    redis.call('HSET', KEYS[2], 'first', offset)
  end
  if not latest or id > latest then
    local writes = 'w\0' .. ns .. '\0'
    for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
      if string.sub(f, 1, #writes) == writes then redis.call('HDEL', KEYS[1], f) end
    end
    redis.call('HSET', KEYS[1], 'l\0' .. ns, id, 'c\0' .. ns, value)
  end
elseif kind == 'w' and latest == id then
  redis.call('HSET', KEYS[1], 'w\0' .. ns .. '\0' .. offset, value)
end
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1
"""


def _queue_checkpoints(
    script: Any, pipe: Any, keys: KeySpace, records: Sequence[CheckpointRecord], ttl_ms: int
) -> None:
    """Queue on `pipe` one call of the registered `_CHECKPOINT` `script` per record."""
    for record in records:
        script(
            keys=[keys.checkpoints(record.session_id), keys.checkpoint_index(record.session_id)],
            args=[
                record.kind.value,
                record.checkpoint_ns,
                record.checkpoint_id,
                record.position.offset,
                record.value,
                ttl_ms,
            ],
            client=pipe,
        )


class RedisViewStore:
    """The `ViewStore` role on Redis, one node or a Cluster (`chatlog.projections.redis_cluster`).

    It writes only into a generation whose epoch it found when it first wrote, and
    raises `DataLoss` once that epoch is gone, or once a progress mark it has seen goes
    back (an older snapshot restored): it never writes into a lost generation.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        keys: KeySpace,
        policy: WindowPolicy = DEFAULT_POLICY,
        ttl_s: float | None = None,
        notify: bool = False,
    ) -> None:
        self.client = client
        self.keys = keys
        self.policy = policy
        # Say on each written session's channel that it moved (`applied_notice`): the live
        # projector does, so that gateways stream updates; a replay filling a generation
        # nobody reads yet does not.
        self.notify = notify
        self.ttl_ms = int(ttl_s * 1000) if ttl_s else 0
        # On a cluster each script touches one slot (`chatlog.projections.redis_cluster`).
        self.cluster = is_cluster(client)
        self._apply = client.register_script(_APPLY_CLUSTER if self.cluster else _APPLY)
        self._index = client.register_script(_INDEX)  # its own call on a cluster only
        self._progress = client.register_script(_PROGRESS)
        self._progress_after = client.register_script(_PROGRESS_AFTER)
        self._checkpoint = client.register_script(_CHECKPOINT)
        self._epoch: str | None = None
        self._layout = LAYOUT  # the generation's key layout, from its epoch
        # The highest progress mark seen per partition: Redis holding less is a loss.
        self._marked: dict[int, int] = {}

    def epoch(self) -> str:
        """The generation's epoch token (read once); `DataLoss` if it is not there,
        `LayoutMismatch` if the generation has a key layout newer than this code's."""
        if self._epoch is not None:
            return self._epoch
        with redis_errors():
            value = self.client.get(self.keys.epoch)
        epoch = text(value) if value is not None else None
        if epoch is None or not is_intact(epoch):
            raise self._lost()
        if layout_of(epoch) > LAYOUT:
            problem = layout_problem(self.keys.generation, epoch)
            raise LayoutMismatch(f"{problem}; nothing is written into it")
        self._layout = layout_of(epoch)
        self._epoch = epoch
        return epoch

    def _lost(self) -> DataLoss:
        return DataLoss(
            f"Redis has lost part of the read-model: generation {self.keys.generation} lost "
            f"its epoch, is marked lost, or its progress marks went back (Redis flushed, "
            f"restarted empty, or restored from an older snapshot); nothing more is written "
            f"into it",
            generation=self.keys.generation,
        )

    def load(self, session_ids: Collection[str]) -> dict[str, SessionView | None]:
        ids = list(session_ids)
        # Not a MULTI: the sessions live in many hash slots, and the projector loading
        # them is their only writer.
        with redis_errors():
            replies = execute(self.client, functools.partial(_queue_loads, self.keys, ids))
        return {
            session_id: decode_loaded(replies[2 * n : 2 * n + 2])[0]
            for n, session_id in enumerate(ids)
        }

    def apply(self, changes: Sequence[Change]) -> list[Outcome]:
        return self._apply_changes(changes, None)[0]

    def apply_marking(
        self, changes: Sequence[Change], applied: Mapping[int, int]
    ) -> tuple[list[Outcome], bool]:
        """See `MarksWithWrites`: on one node, the mark is the last call of the writes'
        pipeline; on a cluster it is in a slot of its own, so never (the caller marks)."""
        if self.cluster or not changes or not applied:
            return self.apply(changes), False
        return self._apply_changes(changes, applied)

    def _apply_changes(
        self, changes: Sequence[Change], applied: Mapping[int, int] | None
    ) -> tuple[list[Outcome], bool]:
        if not changes:
            return [], False
        epoch = self.epoch()
        marks: list[Any] = []
        if applied is not None:
            marks = [change.new.last_offset for change in changes]
            # Text, as Redis stores it: a Lua number handed to HSET may come out as
            # 5e+07 on newer Redis versions.
            for partition, offset in sorted(applied.items()):
                marks += (str(partition), str(offset))

        def queue(pipe: Any) -> None:
            for change in changes:
                self._queue_apply(pipe, change, epoch)
            if self.cluster:
                for change in changes:
                    self._queue_index(pipe, change.new, epoch)
            if self.notify:
                # Last in the pipeline, so a listener that reads on a notice finds the
                # write (on a cluster, the notice goes to the session's own shard, after
                # the write there). Sent whatever the outcome: a notice for a write that
                # did not happen only costs its listeners a read that finds nothing new.
                for change in changes:
                    new = change.new
                    pipe.execute_command(
                        "SPUBLISH",
                        self.keys.applied(new.session_id),
                        applied_notice(new.session_id, new.position),
                    )
            if applied is not None:
                pipe.execute_command(
                    "EVALSHA",
                    self._progress_after.sha,
                    2 + len(changes),
                    self.keys.progress,
                    self.keys.epoch,
                    *[self.keys.meta(change.new.session_id) for change in changes],
                    epoch,
                    orjson.dumps(marks),
                )

        scripts = (self._apply, self._index, self._progress_after)
        with redis_errors():
            replies = execute(self.client, queue, scripts)
        # The notices' replies (after the scripts') count their listeners.
        writes = replies[: 2 * len(changes) if self.cluster else len(changes)]
        mark_reply = int(replies[-1]) if applied is not None else _NOT_MARKED
        if mark_reply == _LOST or any(int(reply) == _LOST for reply in writes):
            raise self._lost()
        outcomes = [_OUTCOMES[int(reply)] for reply in writes[: len(changes)]]
        marked = mark_reply != _NOT_MARKED
        if applied is not None and marked:
            self._saw_marks(applied)
        if not self.cluster:
            return outcomes, marked
        return self._unwrite_erased(changes, outcomes), False

    def _unwrite_erased(self, changes: Sequence[Change], outcomes: list[Outcome]) -> list[Outcome]:
        """On a cluster: read the erased marks of the owners just written (other slots
        than their sessions', so not in the write's own call) and delete what was written
        for an owner found erased. The erasure sets the mark before it SCANs the
        sessions, so a view written before this read is found by that SCAN, and one whose
        owner's mark this read sees is deleted here: none is left behind."""
        owners = list(dict.fromkeys((c.new.tenant, c.new.user_id) for c in changes))
        with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for tenant, user_id in owners:
                pipe.hexists(self.keys.user_keys(tenant, user_id), ERASED_FIELD)
            erased = {owner for owner, marked in zip(owners, pipe.execute(), strict=True) if marked}
            if not erased:
                return outcomes
            pipe = self.client.pipeline(transaction=False)
            for change in changes:
                new = change.new
                if (new.tenant, new.user_id) in erased:
                    # One key a DEL: a cluster pipeline sends each command to one node.
                    pipe.delete(self.keys.meta(new.session_id))
                    pipe.delete(self.keys.messages(new.session_id))
                    index = self.keys.user_sessions(new.tenant, new.user_id, layout=self._layout)
                    pipe.zrem(index, new.session_id)
            pipe.execute()
        return [
            Outcome.ERASED if (c.new.tenant, c.new.user_id) in erased else outcome
            for c, outcome in zip(changes, outcomes, strict=True)
        ]

    def apply_checkpoints(self, records: Sequence[CheckpointRecord]) -> None:
        """Keep threads' checkpoints beside their views (`chatlog.projections.checkpoints`);
        the projector calls it before `apply`, so a reader that sees a view's offset finds
        the checkpoints up to it."""
        if not records:
            return

        def queue(pipe: Any) -> None:
            _queue_checkpoints(self._checkpoint, pipe, self.keys, records, self.ttl_ms)

        # Through `execute`: a cluster pipeline sends the script's hash without loading it.
        with redis_errors():
            execute(self.client, queue, (self._checkpoint,))

    def mark_progress(self, applied: Mapping[int, int]) -> None:
        if not applied:
            return
        args: list[Any] = [self.epoch()]
        args += [value for pair in sorted(applied.items()) for value in pair]
        epoch_key = stamp(self.keys, self.keys.progress) if self.cluster else self.keys.epoch
        with redis_errors():
            reply = self._progress(keys=[self.keys.progress, epoch_key], args=args)
        if int(reply) == _LOST:
            raise self._lost()
        self._saw_marks(applied)

    def _saw_marks(self, applied: Mapping[int, int]) -> None:
        for partition, offset in applied.items():
            self._marked[partition] = max(offset, self._marked.get(partition, -1))

    def progress(self) -> dict[int, int]:
        with redis_errors():
            marks = text_map(self.client.hgetall(self.keys.progress))
        found = {int(p): int(o) for p, o in marks.items()}
        for partition, seen in found.items():
            self._marked[partition] = max(seen, self._marked.get(partition, -1))
        return found

    def _queue_apply(self, pipe: Any, change: Change, epoch: str) -> None:
        new = change.new
        old_messages = change.expected.messages if change.expected is not None else ()
        delta = diff(old_messages, new.messages)
        meta = encode_meta(new, window=self.policy.window)
        meta_mode = "f"
        if change.expected is not None:
            # The script only writes if the stored view is `expected`, so its meta is
            # exactly this: send the fields that change (a third of the arguments).
            stored = encode_meta(change.expected, window=self.policy.window)
            meta = {field: value for field, value in meta.items() if stored[field] != value}
            meta_mode = "p"
        mode = "d"
        if delta.replace_all is not None:
            mode, delta = "r", MessagesDelta(append=delta.replace_all)
        # W, in the order the scripts read it (`_WRITE_VIEW`).
        write: list[Any] = [
            epoch,
            str(new.partition),
            self._marked.get(new.partition, -1),
            new.session_id,
            str(new.updated_at_ms),
            self.ttl_ms,
            _index_op(new),
            -1 if change.expected is None else change.expected.last_offset,
            new.last_offset,
            new.updated_at_ms + self.ttl_ms if self.ttl_ms else 0,
            mode,
            delta.trim_left,
            len(delta.overwrite),
            len(delta.append),
            len(meta),
            meta_mode,
        ]
        for index, doc in delta.overwrite:
            write += (index, doc)
        write += delta.append
        for pair in meta.items():
            write += pair
        meta_key = self.keys.meta(new.session_id)
        messages_key = self.keys.messages(new.session_id)
        # EVALSHA queued directly: `Script.__call__` copies the arguments and imports
        # redis-py's pipeline classes on every call; `execute` loads a missing script.
        if self.cluster:
            pipe.execute_command(
                "EVALSHA",
                self._apply.sha,
                3,
                meta_key,
                messages_key,
                stamp(self.keys, meta_key),
                orjson.dumps(write),
            )
            return
        pipe.execute_command(
            "EVALSHA",
            self._apply.sha,
            6,
            meta_key,
            messages_key,
            self.keys.epoch,
            self.keys.progress,
            self.keys.user_keys(new.tenant, new.user_id),
            self.keys.user_sessions(new.tenant, new.user_id, layout=self._layout),
            orjson.dumps(write),
        )

    def _queue_index(self, pipe: Any, view: SessionView, epoch: str) -> None:
        """On a cluster: the session's entry in its owner's index, in the owner's slot."""
        index = self.keys.user_sessions(view.tenant, view.user_id, layout=self._layout)
        pipe.execute_command(
            "EVALSHA",
            self._index.sha,
            2,
            index,
            stamp(self.keys, index),
            view.session_id,
            view.updated_at_ms,
            self.ttl_ms,
            _index_op(view),
            epoch,
        )


def applied_notice(session_id: str, position: Position) -> str:
    """What the projector publishes on a session's channel once it wrote the session:
    ``<session id> <partition>:<offset>``, the position its view has now applied."""
    return f"{session_id} {position}"


def parse_applied_notice(data: str | bytes) -> Position | None:
    """The position an `applied_notice` names; None for anything else (a listener
    treats that as "something changed" and reads)."""
    _, _, position = text(data).partition(" ")
    try:
        return Position.parse(position)
    except ValueError:
        return None


def _queue_loads(keys: KeySpace, session_ids: Sequence[str], pipe: Any) -> None:
    for session_id in session_ids:
        queue_load(pipe, keys, session_id)


def queue_load(pipe: Any, keys: KeySpace, session_id: str, *, messages: bool = True) -> None:
    """Queue on `pipe` the reads of one session's stored view (its meta, then its
    messages unless `messages` is False); `decode_loaded` turns their replies into it."""
    pipe.hgetall(keys.meta(session_id))
    if messages:
        pipe.lrange(keys.messages(session_id), 0, -1)


def decode_loaded(
    replies: Sequence[Any], *, messages: bool = True
) -> tuple[SessionView | None, int]:
    """The view (None if the session has none) and its window size, from the replies of
    `queue_load`."""
    fields = text_map(replies[0])
    window = int(fields.get("window", "0") or 0)
    return decode_view(fields, replies[1] if messages else ()), window


@contextlib.contextmanager
def redis_errors(setting: str = "CHATLOG_REDIS_URL") -> Iterator[None]:
    """Redis client errors as chatlog's `StoreUnavailable`, with the fix in the message;
    `setting` names the Redis (the recall index's is CHATLOG_RECALL_REDIS_URL)."""
    try:
        yield
    except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
        # Not an outage: retrying will not help, the credentials or the ACL must change.
        raise ConfigError(
            f"Redis refused chatlog's credentials ({type(exc).__name__}: {exc}); check the "
            f"user and password in {setting} and that its ACL allows chatlog's keys "
            f"and commands",
            setting=setting,
        ) from exc
    except redis.RedisError as exc:
        if "unknown command 'ft." in str(exc).lower():  # the recall index on a plain Redis
            raise ConfigError(
                f"this Redis has no query engine, which the recall index needs ({exc}); set "
                f"CHATLOG_RECALL_REDIS_URL to a Redis Stack 7.4 or Redis 8, or turn "
                f"CHATLOG_RECALL off",
                setting="CHATLOG_RECALL_REDIS_URL",
            ) from exc
        if "certificate verify failed" in str(exc).lower():  # rediss:// with a CA to fix
            raise ConfigError(
                f"Redis's TLS certificate is not trusted ({exc}); set "
                f"CHATLOG_REDIS_TLS_CA_FILE to the CA that signed it",
                setting="CHATLOG_REDIS_TLS_CA_FILE",
            ) from exc
        raise StoreUnavailable(
            f"Redis did not answer ({type(exc).__name__}: {exc}); is it running "
            f"(`make services`)? check {setting}"
        ) from exc


def text(value: str | bytes) -> str:
    """A Redis reply as text, whatever the client's decode_responses setting."""
    return value.decode() if isinstance(value, bytes) else value


def text_map(raw: dict[Any, Any]) -> dict[str, str]:
    """A Redis hash reply as text."""
    return {text(k): text(v) for k, v in raw.items()}


def _index_op(view: SessionView) -> str:
    """What the scripts do with the session's entry in its owner's index (`_INDEX_ENTRY`):
    an erased session leaves it, any other is scored by its last activity."""
    return "rem" if view.status is SessionStatus.ERASED else "add"
