"""The recall index in Redis: one vector search index per generation, through redisvl.

What is in it? One hash per turn (`chatlog.projections.recall` says what and why), under
``<prefix>:<generation>:recall:m:``, indexed by Redis's query engine (RediSearch, in
Redis Stack 7.4 or Redis 8) as ``<prefix>:<generation>:recall``:

    vector     VECTOR FLAT, FLOAT32, COSINE    the turn's embedding
    tenant     TAG                             filters: a search names tenant and user,
    user       TAG                             and maybe a session, so it never returns
    session    TAG                             another user's turn
    role       TAG
    created    NUMERIC                         when the turn was written (ms)
    partition, offset, doc                     returned, not indexed: the position and
                                               the sealed message

FLAT rather than HNSW (measured on this kind of machine, docs/recall.md): every search
names a user, and the tag filter leaves few enough of their vectors for the query engine
to compare them one by one, so both answer alike (5-6 ms p50 at 10k vectors of 384);
FLAT writes twice as fast or more and takes a sixth less memory. Even with one user
holding all 10k vectors the two were within the noise of a shared machine; HNSW's search
grows with log n and FLAT's with n, so a deployment whose users keep far more turns
builds one with `algorithm="HNSW"` (the metadata records which an index was built with).

Beside the index, a metadata hash records the embedding model, its dimension, the
algorithm and an epoch token (``...:recall:meta``), and a progress hash how far each
partition was indexed (``...:recall:progress``). Like the read-model's epoch
(`chatlog.projections.epochs`), they tell an index never built from one Redis lost:

* neither index nor metadata: none was built (or Redis lost both; the caller compares
  the progress with its consumer group's offsets: `IndexState.assess`);
* one without the other, or an epoch marked lost: lost (`RecallIndexLost`);
* both, with another model than the settings': refused (`EmbeddingModelMismatch`).

Writes go in one Lua call per batch (`apply`): it checks the epoch (a lost index is not
partly rebuilt by a running writer), skips the turns of users marked erased, deletes,
and records the progress marks, atomically. Upserts are keyed by session and message id,
so writing a turn twice leaves one document. A document belongs to the tenant and user
who wrote it first: another user's upsert or deletion of the same session and message
id is refused inside the same call, however the events reached the writer (the ids are
the publisher's to choose); a session's or a user's erasure selects by tenant and user
too, so it deletes only that owner's documents.

Erasure (`erase_user`, `erase_session`) works on every generation's index found on the
server (FT._LIST), so a rebuild in progress loses the vectors too; a user's erasure
first sets their mark outside every generation, so a write already under way cannot
bring a vector back. Searches are sync (`RedisVectorIndex.search`) and async
(`AsyncRedisVectorSearch`), one round trip each: the metadata and the KNN query in one
pipeline.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio
from redis.commands.search.query import Query

from chatlog.schemas.errors import InvalidInput, MissingExtra, RecallIndexLost

try:
    from redisvl.index import SearchIndex
    from redisvl.query import VectorQuery
    from redisvl.query.filter import FilterExpression, Tag
    from redisvl.schema import IndexSchema
except ImportError as missing:
    raise MissingExtra.needs("recall", "the recall index", missing) from missing

from chatlog.projections.encoding import decode_message, encode_message
from chatlog.projections.epochs import LOST, StartVerdict, assess_start, lost_epoch
from chatlog.projections.keys import KeySpace
from chatlog.projections.recall import (
    ALGORITHMS,
    MAX_K,
    Algorithm,
    EmbeddingModel,
    IndexedTurn,
    RecallHit,
    TurnRef,
    check_k,
    model_mismatch,
    vector_bytes,
)
from chatlog.projections.redis_store import redis_errors, text, text_map
from chatlog.schemas.sealing import KeyScope

__all__ = [
    "DEFAULT_ALGORITHM",
    "MAX_K",
    "ApplyResult",
    "AsyncRedisVectorSearch",
    "IndexState",
    "RedisRecallErasure",
    "RedisVectorIndex",
    "erase_session",
    "erase_user",
    "has_query_engine",
    "recall_generations",
]

DEFAULT_ALGORITHM: Algorithm = "FLAT"
# Which Redis a failure names: the recall index has its own.
RECALL_URL_SETTING = "CHATLOG_RECALL_REDIS_URL"
_DELETE_BATCH = 1000
# What a search returns of each document: never the vector.
_RETURNED = ("tenant", "user", "session", "partition", "doc")

# KEYS: meta, progress, then per upsert its document and its user's erasure mark, then
# per deletion its document. ARGV: the epoch token, #upserts, #deletions, #marks, then
# per upsert its 9 values (vector, tenant, user, session, role, created, partition,
# offset, doc), then per deletion its owner (tenant, user), then per mark (partition,
# offset). Returns {written, skipped, deleted, foreign}; -1 when the epoch is not the one
# this writer read: the index was lost.
#
# A document belongs to the tenant and user who first wrote it (the session claims'
# rule: first owner wins). A document is named by session and message id, both of which
# anyone who can publish can choose, so an upsert of another owner never replaces it
# and a deletion by another owner never deletes it: both are counted as `foreign`.
_APPLY = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return -1 end
local n_up, n_del, n_marks = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local written, skipped, deleted, foreign = 0, 0, 0, 0
local function owned_by_another(doc, tenant, user)
  local owner = redis.call('HMGET', doc, 'tenant', 'user')
  return owner[1] and (owner[1] ~= tenant or owner[2] ~= user)
end
local a = 5
for u = 1, n_up do
  local doc, erased = KEYS[1 + 2 * u], KEYS[2 + 2 * u]
  if redis.call('EXISTS', erased) == 1 then
    skipped = skipped + 1
  elseif owned_by_another(doc, ARGV[a + 1], ARGV[a + 2]) then
    foreign = foreign + 1
  else
    redis.call('HSET', doc, 'vector', ARGV[a], 'tenant', ARGV[a + 1], 'user', ARGV[a + 2],
      'session', ARGV[a + 3], 'role', ARGV[a + 4], 'created', ARGV[a + 5],
      'partition', ARGV[a + 6], 'offset', ARGV[a + 7], 'doc', ARGV[a + 8])
    written = written + 1
  end
  a = a + 9
end
for d = 1, n_del do
  local doc = KEYS[2 + 2 * n_up + d]
  if owned_by_another(doc, ARGV[a], ARGV[a + 1]) then
    foreign = foreign + 1
  else
    deleted = deleted + redis.call('DEL', doc)
  end
  a = a + 2
end
for _ = 1, n_marks do
  local stored = tonumber(redis.call('HGET', KEYS[2], ARGV[a]) or '-1')
  if tonumber(ARGV[a + 1]) > stored then redis.call('HSET', KEYS[2], ARGV[a], ARGV[a + 1]) end
  a = a + 2
end
return {written, skipped, deleted, foreign}
"""


# KEYS: meta. ARGV: field, value, ... Writes the metadata of a new index unless another
# creator was first (whose model `ensure` then checks).
_CREATE_META = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one `apply` did: turns written, turns skipped (their user was erased),
    documents deleted, and writes refused because the document belongs to another user
    (an upsert or a deletion naming another owner's session and message id)."""

    written: int = 0
    skipped: int = 0
    deleted: int = 0
    foreign: int = 0


@dataclass(frozen=True, slots=True)
class IndexState:
    """What Redis holds of one generation's recall index."""

    generation: str
    exists: bool  # the search index is defined
    meta: Mapping[str, str]  # its metadata hash (empty: none)
    marks: Mapping[int, int] = field(default_factory=dict)  # partition -> last offset

    @property
    def model(self) -> EmbeddingModel | None:
        """The model the index was built with (None: no metadata)."""
        if "model" not in self.meta:
            return None
        return EmbeddingModel(self.meta["model"], int(self.meta["dimension"]))

    @property
    def problem(self) -> str | None:
        """Why the index is lost (None: it is whole, or was never built)."""
        epoch = self.meta.get("epoch")
        if epoch is not None and epoch.startswith(LOST):
            return f"it was marked lost ({epoch[len(LOST) :]})"
        if self.exists and epoch is None:
            return "its metadata (embedding model, epoch) is gone from Redis"
        if self.meta and not self.exists:
            return "its search index is gone from Redis (a restart, a flush, or FT.DROPINDEX)"
        return None

    def assess(self, committed: Mapping[int, int]) -> StartVerdict:
        """What an indexer whose consumer group committed `committed` (partition -> next
        offset) finds: "fresh", "intact", or `Lost`: the read-model's rule
        (`chatlog.projections.epochs.assess_start`) applied to the index."""
        built = self.exists or bool(self.meta)
        if self.problem is not None:
            return assess_start(
                generation=self.generation,
                epoch=lost_epoch(self.problem),
                marks=self.marks,
                committed=committed,
            )
        return assess_start(
            generation=self.generation if built else None,
            epoch=self.meta.get("epoch"),
            marks=self.marks,
            committed=committed,
        )


def _schema(keys: KeySpace, model: EmbeddingModel, algorithm: Algorithm) -> IndexSchema:
    if algorithm not in ALGORITHMS:
        raise InvalidInput(f"vector algorithm {algorithm!r} must be one of {ALGORITHMS}")
    return IndexSchema.from_dict(
        {
            "index": {
                "name": keys.recall_index,
                "prefix": keys.recall_documents,
                "storage_type": "hash",
            },
            "fields": [
                {"name": "tenant", "type": "tag"},
                {"name": "user", "type": "tag"},
                {"name": "session", "type": "tag"},
                {"name": "role", "type": "tag"},
                {"name": "created", "type": "numeric"},
                {
                    "name": "vector",
                    "type": "vector",
                    "attrs": {
                        "algorithm": algorithm.lower(),
                        "dims": model.dimension,
                        "distance_metric": "cosine",
                        "datatype": "float32",
                    },
                },
            ],
        }
    )


def _owner_filter(tenant: str, user_id: str, session_id: str | None) -> FilterExpression:
    found = (Tag("tenant") == tenant) & (Tag("user") == user_id)
    return found & (Tag("session") == session_id) if session_id is not None else found


class _Knn:
    """One KNN search as Redis commands, and its reply as hits: shared by the sync and
    the async reader so both ask and parse alike."""

    def __init__(self, keys: KeySpace, model: EmbeddingModel) -> None:
        self.keys = keys
        self.model = model

    def command(
        self, vector: Sequence[float], *, tenant: str, user_id: str, session_id: str | None, k: int
    ) -> list[Any]:
        check_k(k)
        query = VectorQuery(
            vector=vector_bytes(vector, self.model),
            vector_field_name="vector",
            filter_expression=_owner_filter(tenant, user_id, session_id),
            return_fields=list(_RETURNED),
            num_results=k,
            dtype="float32",
        )
        params = [item for name, value in query.params.items() for item in (name, value)]
        return [
            "FT.SEARCH",
            self.keys.recall_index,
            *query.get_args(),
            "PARAMS",
            len(params),
            *params,
        ]

    def hits(self, meta: Any, reply: Any) -> list[RecallHit]:
        """The hits of a search's reply, once the metadata read beside it says the index
        may be used (the pipeline's replies, errors in place: a query the index refuses,
        such as a vector of another size, is answered by what the metadata says first,
        another model or a lost index, and only then raised)."""
        if isinstance(meta, Exception):
            raise meta
        refused = isinstance(reply, redis.ResponseError)
        if refused and _is_missing_index(reply):
            reply = None
        state = IndexState(
            self.keys.generation, exists=reply is not None, meta=text_map(dict(meta))
        )
        _check(state, self.model)
        if refused:
            raise reply
        assert reply is not None  # _check refused an index that does not exist
        hits = []
        for doc in _documents(reply):
            hits.append(
                RecallHit(
                    tenant=text(doc["tenant"]),
                    user_id=text(doc["user"]),
                    session_id=text(doc["session"]),
                    partition=int(doc["partition"]),
                    message=decode_message(doc["doc"]),
                    score=1.0 - float(doc["vector_distance"]),
                )
            )
        return hits


def _documents(reply: Any) -> list[dict[str, Any]]:
    """The returned fields of each document of an FT.SEARCH reply, in either protocol:
    RESP3 (redis-py 8's default) a map, RESP2 the total then key, [field, value, ...]."""
    if isinstance(reply, dict):
        reply = {text(k): v for k, v in reply.items()}
        documents = ({text(k): v for k, v in doc.items()} for doc in reply["results"])
        return [{text(k): v for k, v in doc["extra_attributes"].items()} for doc in documents]
    return [
        {text(fields[i]): fields[i + 1] for i in range(0, len(fields), 2)} for fields in reply[2::2]
    ]


def _check(state: IndexState, model: EmbeddingModel) -> None:
    """Raise what a reader or writer of `state` with `model` must not get past."""
    if state.problem is not None:
        raise RecallIndexLost(
            f"the recall index of generation {state.generation} was lost: {state.problem}; "
            f"a replay rebuilds it from the log (`chatlog replay`)",
            generation=state.generation,
        )
    built_with = state.model
    if built_with is None:
        raise RecallIndexLost(
            f"Redis holds no recall index for generation {state.generation}: no embedder has "
            f"built it yet (is `chatlog run embedder` running?), or Redis lost it (`chatlog "
            f"replay` rebuilds it)",
            generation=state.generation,
        )
    mismatch = model_mismatch(state.generation, built_with, model)
    if mismatch is not None:
        raise mismatch


def _command(client: redis.Redis | Any, *args: Any) -> Any:
    """`execute_command` (untyped in redis-py) on a client or a pipeline: the search
    module's commands (FT._LIST, FT.SEARCH, FT.DROPINDEX) have no typed method."""
    return client.execute_command(*args)


def _is_missing_index(exc: redis.ResponseError) -> bool:
    message = str(exc).lower()
    return "no such index" in message or "unknown index name" in message


class RedisVectorIndex:
    """One generation's recall index: create it, write turns, delete them, search it."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str,
        generation: str,
        model: EmbeddingModel,
        algorithm: Algorithm = DEFAULT_ALGORITHM,
    ) -> None:
        self.client = client
        self.keys = KeySpace(prefix, generation)
        self.model = model
        self.algorithm = algorithm
        self._index = SearchIndex(_schema(self.keys, model, algorithm), redis_client=client)
        self._apply = client.register_script(_APPLY)
        self._create_meta = client.register_script(_CREATE_META)
        self._knn = _Knn(self.keys, model)
        self._epoch: str | None = None

    @property
    def name(self) -> str:
        """The search index's name in Redis."""
        return self.keys.recall_index

    def state(self) -> IndexState:
        """What Redis holds of this index now: definition, metadata, progress marks."""
        with redis_errors(RECALL_URL_SETTING):
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(self.keys.recall_meta)
            pipe.hgetall(self.keys.recall_progress)
            _command(pipe, "FT._LIST")
            meta, marks, names = pipe.execute()
        return IndexState(
            self.keys.generation,
            exists=self.name in {text(n) for n in names},
            meta=text_map(meta),
            marks={int(p): int(o) for p, o in text_map(marks).items()},
        )

    def ensure(self) -> IndexState:
        """Create the index and its metadata if Redis holds neither; check them if it
        holds both. `EmbeddingModelMismatch` when it was built with another model,
        `RecallIndexLost` when Redis holds one without the other."""
        state = self.state()
        if not state.exists and not state.meta:
            meta: dict[str, str | int] = {
                "model": self.model.name,
                "dimension": self.model.dimension,
                "algorithm": self.algorithm,
                "epoch": uuid.uuid4().hex,
                "created_ms": _now_ms(),
            }
            with redis_errors(RECALL_URL_SETTING):
                self._index.create()  # kept as it is if a concurrent creator was first
                self._create_meta(
                    keys=[self.keys.recall_meta],
                    args=[item for pair in meta.items() for item in pair],
                )
            state = self.state()
        _check(state, self.model)
        self._epoch = state.meta["epoch"]
        return state

    def mark_lost(self, reason: str) -> None:
        """Mark the index lost (if its metadata is there), so that no writer adds to it
        and readers refuse it until it is rebuilt."""
        with redis_errors(RECALL_URL_SETTING):
            if self.client.hexists(self.keys.recall_meta, "epoch"):
                self.client.hset(self.keys.recall_meta, "epoch", lost_epoch(reason))

    def drop(self) -> None:
        """Delete the index, its documents, metadata and progress (before a rebuild)."""
        with redis_errors(RECALL_URL_SETTING):
            try:
                _command(self.client, "FT.DROPINDEX", self.name, "DD")
            except redis.ResponseError as exc:
                if not _is_missing_index(exc):
                    raise
            self.client.delete(self.keys.recall_meta, self.keys.recall_progress)
            # Documents the index no longer covered (it was dropped without them).
            batch = list(self.client.scan_iter(match=f"{self.keys.recall_documents}*"))
            for start in range(0, len(batch), _DELETE_BATCH):
                self.client.unlink(*batch[start : start + _DELETE_BATCH])
        self._epoch = None

    def apply(
        self,
        upserts: Sequence[IndexedTurn] = (),
        deletions: Sequence[TurnRef] = (),
        marks: Mapping[int, int] | None = None,
    ) -> ApplyResult:
        """Write `upserts`, delete `deletions` and record `marks` (partition -> last
        offset indexed), in one atomic call. A turn whose user was erased is skipped; an
        upsert or a deletion of a document another user owns is refused (`foreign`).
        `RecallIndexLost` if the index was lost since `ensure`."""
        if self._epoch is None:
            self.ensure()
        assert self._epoch is not None  # ensure() sets it or raises
        marks = marks or {}
        keys = [self.keys.recall_meta, self.keys.recall_progress]
        args: list[Any] = [self._epoch, len(upserts), len(deletions), len(marks)]
        for turn in upserts:
            keys += [
                self.keys.recall_document(turn.session_id, turn.message.message_id),
                self.keys.recall_erased(turn.tenant, turn.user_id),
            ]
            args += [
                vector_bytes(turn.vector, self.model),
                turn.tenant,
                turn.user_id,
                turn.session_id,
                turn.message.role,
                turn.message.occurred_at_ms,
                turn.partition,
                turn.message.offset,
                encode_message(turn.message),
            ]
        for ref in deletions:
            keys.append(self.keys.recall_document(ref.session_id, ref.message_id))
            args += [ref.tenant, ref.user_id]
        for partition, offset in sorted(marks.items()):
            args += [partition, offset]
        with redis_errors(RECALL_URL_SETTING):
            reply = self._apply(keys=keys, args=args)
        if reply == -1:
            self._epoch = None
            raise RecallIndexLost(
                f"the recall index of generation {self.keys.generation} was lost while it "
                f"was being written (its epoch changed); a replay rebuilds it",
                generation=self.keys.generation,
            )
        written, skipped, removed, foreign = (int(n) for n in reply)
        return ApplyResult(written, skipped, removed, foreign)

    def upsert(self, turn: IndexedTurn) -> bool:
        """Write one turn (again: it replaces its owner's turn of the same session and
        message id); False if its user was erased or another user owns that document."""
        return self.apply([turn]).written == 1

    def delete(self, turn: TurnRef) -> bool:
        """Delete one turn's vector (a redaction); False if it was not indexed, or is
        another user's."""
        return self.apply(deletions=[turn]).deleted == 1

    def search(
        self,
        vector: Sequence[float],
        *,
        tenant: str,
        user_id: str,
        session_id: str | None = None,
        k: int = 5,
    ) -> list[RecallHit]:
        """The `k` turns of `user_id` in `tenant` (in `session_id` only, if given) whose
        vectors are nearest to `vector`, nearest first; their messages still sealed."""
        command = self._knn.command(
            vector, tenant=tenant, user_id=user_id, session_id=session_id, k=k
        )
        with redis_errors(RECALL_URL_SETTING):
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(self.keys.recall_meta)
            _command(pipe, *command)
            meta, reply = pipe.execute(raise_on_error=False)
            return self._knn.hits(meta, reply)

    def info(self) -> dict[str, Any]:
        """FT.INFO of the index (documents, memory), for the operator and the benchmark."""
        with redis_errors(RECALL_URL_SETTING):
            info: dict[str, Any] = self._index.info()
        return info


class AsyncRedisVectorSearch:
    """The async reader of one generation's recall index: search only."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str,
        generation: str,
        model: EmbeddingModel,
    ) -> None:
        self.client = client
        self.keys = KeySpace(prefix, generation)
        self._knn = _Knn(self.keys, model)
        self.model = model

    async def search(
        self,
        vector: Sequence[float],
        *,
        tenant: str,
        user_id: str,
        session_id: str | None = None,
        k: int = 5,
    ) -> list[RecallHit]:
        """As `RedisVectorIndex.search`, without blocking the event loop."""
        command = self._knn.command(
            vector, tenant=tenant, user_id=user_id, session_id=session_id, k=k
        )
        with redis_errors(RECALL_URL_SETTING):
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(self.keys.recall_meta)
            _command(pipe, *command)
            meta, reply = await pipe.execute(raise_on_error=False)
            return self._knn.hits(meta, reply)


def has_query_engine(client: redis.Redis) -> bool:
    """Whether this Redis has the query engine the recall index needs (Redis Stack, or
    Redis 8); a plain Redis answers its commands "unknown command"."""
    with redis_errors(RECALL_URL_SETTING):
        try:
            _command(client, "FT._LIST")
        except redis.ResponseError as exc:
            if "unknown command" in str(exc).lower():
                return False
            raise
    return True


def recall_generations(client: redis.Redis, *, prefix: str) -> list[str]:
    """The generations that have a recall index on this server, under `prefix`."""
    head, tail = f"{prefix}:", ":recall"
    with redis_errors(RECALL_URL_SETTING):
        names = [text(n) for n in _command(client, "FT._LIST")]
    return sorted(
        n[len(head) : -len(tail)]
        for n in names
        if n.startswith(head) and n.endswith(tail) and ":" not in n[len(head) : -len(tail)]
    )


def erase_user(client: redis.Redis, *, prefix: str, tenant: str, user_id: str) -> int:
    """Delete every vector of the user in every generation; the number deleted.

    The user's erasure mark is set first, so a write already under way (a turn decrypted
    before the erasure) cannot bring a vector back once this returns. Idempotent.
    """
    keys = KeySpace(prefix)
    with redis_errors(RECALL_URL_SETTING):
        client.set(keys.recall_erased(tenant, user_id), _now_ms(), nx=True)
    return _delete_matching(client, prefix, _owner_filter(tenant, user_id, None))


def erase_session(
    client: redis.Redis, *, prefix: str, tenant: str, user_id: str, session_id: str
) -> int:
    """Delete every vector of one session in every generation; the number deleted."""
    return _delete_matching(client, prefix, _owner_filter(tenant, user_id, session_id))


def _delete_matching(client: redis.Redis, prefix: str, where: FilterExpression) -> int:
    """UNLINK every document `where` selects, in every generation's index, a page at a time
    (a page deleted leaves the index at once, so the next search finds the rest)."""
    removed = 0
    query = Query(str(where)).no_content().paging(0, _DELETE_BATCH).dialect(2)
    for generation in recall_generations(client, prefix=prefix):
        name = KeySpace(prefix, generation).recall_index
        while True:
            with redis_errors(RECALL_URL_SETTING):
                found = client.ft(name).search(query)
                documents = [doc.id for doc in found.docs]
                if not documents:
                    break
                removed += int(client.unlink(*documents))
            if len(documents) < _DELETE_BATCH:
                break
    return removed


class RedisRecallErasure:
    """A user's erasure, as far as the recall index goes (`UserEraser`'s `vectors`): every
    vector of theirs in every generation (`erase_user`). A Redis without the query engine
    holds no index, so there is nothing to erase there (recall was never on)."""

    def __init__(self, client: redis.Redis, *, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def erase(self, scope: KeyScope) -> int:
        """Delete the user's vectors and set their erasure mark; the number deleted."""
        if not has_query_engine(self.client):
            return 0
        return erase_user(
            self.client, prefix=self.prefix, tenant=scope.tenant, user_id=scope.user_id
        )
