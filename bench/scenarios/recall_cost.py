"""Recall cost (`recall_cost`): what semantic recall costs to index, to keep and to ask.

Everything runs on the recall index's Redis (``CHATLOG_RECALL_REDIS_URL``, the local
stack's Redis Stack) with the key directory on the read-model's, sealed as deployed: the
turns are the recall evaluation set's (`bench.recall_eval`), each made into the event a
chat back end appends (`append_message`), sealed under its owner's data key as the
producer seals it and encoded as a Kafka record (no Kafka: the data keys go straight to
the key directory, the keys topic is not what is measured).

1. **Indexing throughput** (turns/s), each repetition into a fresh index:

   * embedding alone: `wiring.embedder` (the offline model) over the texts, in batches of
     ``CHATLOG_EMBEDDING_BATCH_SIZE``;
   * the whole indexing path: `RecallIndexing.plan` (decode, open with the key
     directory's keys, embed) then `RedisVectorIndex.apply` (one Lua call), records in
     batches of 500: what ``chatlog run embedder`` sustains, minus Kafka. Beside it,
     **redisvl as its documentation uses it**: the same model embeds the plain texts and
     `SearchIndex.load` writes hashes (the vector, the same tags, the text in clear) into
     an index of the same schema;
   * the write alone: `apply` of the planned turns beside `SearchIndex.load` of exactly
     the same hashes; a bare HSET pipeline of them in the details.

2. **Index bytes per 1,000 turns**: FT.INFO's vector index and its other structures
   (tags, document table, key table), plus `MEMORY USAGE ... SAMPLES 0` of 200 sampled
   documents (vector, tags, position and the sealed message); for the offline model's 256
   numbers (its real vectors), beside redisvl's hashes with the text in clear, and for a
   1536-number model (text-embedding-3-small's size) with **synthetic** unit vectors on
   the same turns: a vector's size does not depend on its values.

3. **Recall latency** p50/p99 at 10,000 and 100,000 indexed turns (quick: 2,000) of one
   tenant: turns spread evenly over 1,000 users (quick: 100) in 3 sessions each, filled
   through the indexing path with synthetic unit vectors (an embedding of 100k turns
   would take longer than the run), each size in one index grown from the previous.
   A recall is timed whole, through the public API: ``ChatLog.recall(user_id, query,
   k=5)`` of a user drawn at random (the query, the evaluation set's questions in turn,
   checked and embedded by the offline model; the KNN of the user's 5 nearest turns in
   the live generation's index, tenant and user as tag filters, the metadata in the same
   round trip; the user's keys and each hit session's status from the read-model in one
   round trip; the hits opened with the owner's keys), and ``await
   AsyncChatLog.recall(...)`` the same (its query embedded in a worker thread). Beside
   them, on the same index and the same queries, interleaved: redisvl's
   ``SearchIndex.query(VectorQuery)`` with the same filter, after the same query
   embedding (it opens nothing), and, a detail row, the KNN alone
   (`RedisVectorIndex.search` of a vector embedded beforehand).

Every index and key it makes is dropped at the end, also after a failure.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import zlib
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import redis
from redisvl.index import SearchIndex
from redisvl.query import VectorQuery
from redisvl.query.filter import Tag
from redisvl.redis.utils import array_to_buffer

from bench.infra import BenchStack
from bench.measure import percentile
from bench.plan import Plan
from bench.recall_eval import EvalSet, build
from bench.report import Report, Table, say
from bench.scenarios.recall_quality import offline_settings
from chatlog import wiring
from chatlog.client import AsyncChatLog, ChatLog
from chatlog.processors.embeddings import Embedder
from chatlog.processors.projection import Record
from chatlog.processors.recall_indexing import IndexWork, RecallIndexing
from chatlog.producers.commands import append_message
from chatlog.projections.encoding import encode_message
from chatlog.projections.opening import EventOpener
from chatlog.projections.recall import EmbeddingModel, IndexedTurn, RecalledTurn, vector_bytes
from chatlog.projections.redis_keys import RedisKeyDirectory
from chatlog.projections.redis_vectors import DEFAULT_ALGORITHM, RedisVectorIndex
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.key_records import ErasureRecord, KeyRecord
from chatlog.schemas.keyring import Keyring
from chatlog.schemas.sealing import KeyScope, seal_event
from chatlog.settings import Settings

__all__ = ["recall_cost"]

SCENARIO = "recall_cost"
_TENANT = "default"  # append_message's: the one tenant of the index
_RECORDS_PER_BATCH = 500  # records per plan + apply: one consumer poll's worth
_PARTITIONS = 6
_SAMPLED_DOCUMENTS = 200
_K = 5
_SESSIONS_PER_USER = 3
_WIDE = 1536  # text-embedding-3-small's size


class _NoKeyLog:
    """The keys topic left out: a data key goes to the key directory only (`Keyring`
    writes it through), which is all the opener and the reader look at."""

    def publish_key(self, record: KeyRecord) -> None:
        """Nothing to publish: the directory has it."""

    def publish_erasure(self, record: ErasureRecord) -> None:
        """No erasure in this scenario."""

    def publish_tombstone(self, scope: KeyScope, key_id: str) -> None:
        """No erasure in this scenario."""


class _SyntheticEmbedder:
    """Seeded random unit vectors, one per text: for the fills whose vectors' values do
    not matter (sizes, latency), at numpy's speed."""

    def __init__(self, dimension: int, seed: int = 17) -> None:
        self.model = f"synthetic-{dimension}"
        self.dimension = dimension
        self._rng = np.random.default_rng(seed)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = self._rng.standard_normal((len(texts), self.dimension), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors.tolist()  # type: ignore[no-any-return]

    async def aembed(self, texts: Sequence[str]) -> list[list[float]]:
        return self.embed(texts)


@dataclass
class _Keys:
    """The run's key directory (read-model Redis) and what opens and seals with it."""

    settings: Settings
    directory: RedisKeyDirectory
    writer: Keyring
    codec: EventCodec

    @classmethod
    def of(cls, settings: Settings, client: redis.Redis) -> _Keys:
        directory = wiring.key_directory(settings, client)
        writer = Keyring(wiring.key_provider(settings), log=_NoKeyLog(), directory=directory)
        return cls(settings, directory, writer, wiring.codec(settings))

    def records(self, turns: Iterator[tuple[str, str, str, str]]) -> list[Record]:
        """Each (user, session, role, text) as the sealed record the log would hold, in
        the order a consumer reads them (partition by partition)."""
        found: list[Record] = []
        offsets = [0] * _PARTITIONS
        for user, session, role, text in turns:
            event = append_message(session, user_id=user, role=role, content=text)
            event = seal_event(event, self.writer.for_writing(KeyScope.of(event)))
            partition = zlib.crc32(session.encode()) % _PARTITIONS
            found.append(
                Record(
                    "bench",
                    partition,
                    offsets[partition],
                    session.encode(),
                    self.codec.encode(event),
                )
            )
            offsets[partition] += 1
        found.sort(key=lambda r: (r.partition, r.offset))
        return found

    def indexing(self, embedder: Embedder) -> RecallIndexing:
        """The embedder's core, opening with this directory (no keys-topic catch-up)."""
        reading = Keyring(self.writer.provider, directory=self.directory)
        return RecallIndexing(
            embedder, codec=self.codec, opener=EventOpener(reading, self.directory)
        )


def _fill(
    index: RedisVectorIndex, indexing: RecallIndexing, records: Sequence[Record]
) -> list[IndexedTurn]:
    """Records through the indexing path into `index`, a batch at a time; what was written."""
    written: list[IndexedTurn] = []
    for start in range(0, len(records), _RECORDS_PER_BATCH):
        work: IndexWork = indexing.plan(records[start : start + _RECORDS_PER_BATCH])
        index.apply(work.upserts, work.deletions, work.marks)
        written += work.upserts
    return written


class _Recall:
    """The recall index's Redis, and what the scenario made on it (dropped at the end)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.indexes: list[RedisVectorIndex] = []
        self.peers: list[SearchIndex] = []

    def index(self, generation: str, model: EmbeddingModel) -> RedisVectorIndex:
        index = RedisVectorIndex(
            self.client, prefix=self.prefix, generation=generation, model=model
        )
        index.ensure()
        self.indexes.append(index)
        return index

    def peer(self, name: str, like: RedisVectorIndex) -> SearchIndex:
        """redisvl's own index with the schema of `like` (read back from Redis, as
        redisvl's `from_existing` reads it), under its own name and prefix: for its
        hashes with the text in clear."""
        schema = SearchIndex.from_existing(like.name, redis_client=self.client).schema
        schema.index.name = f"{self.prefix}:{name}"
        schema.index.prefix = f"{self.prefix}:{name}:doc"
        peer = SearchIndex(schema, redis_client=self.client)
        peer.create(overwrite=True, drop=True)
        self.peers.append(peer)
        return peer

    def drop(self, index: RedisVectorIndex | SearchIndex) -> None:
        if isinstance(index, RedisVectorIndex):
            index.drop()
            self.indexes.remove(index)
        else:
            index.delete(drop=True)
            self.peers.remove(index)

    def close(self) -> None:
        for index in [*self.indexes, *self.peers]:
            with suppress(redis.RedisError):
                self.drop(index)


@contextmanager
def _on_recall_redis(stack: BenchStack, prefix: str) -> Iterator[_Recall]:
    client = wiring.redis_client(stack.base, url=stack.base.recall_redis)
    recall = _Recall(client, prefix)
    try:
        yield recall
    finally:
        recall.close()
        stack.forget_keys(prefix, client=client)
        client.close()


def _search_module(client: redis.Redis) -> str | None:
    """Why the recall index cannot run on `client`'s Redis (None: it can)."""
    try:
        loaded = {str(m[b"name"], "utf-8").lower() for m in client.module_list()}
    except redis.RedisError as exc:
        return f"cannot list its modules ({exc})"
    return None if "search" in loaded else "it has no search module (Redis Stack or Redis 8 has)"


def _server(client: redis.Redis) -> str:
    """The recall Redis's version and its search module's (the header's is the
    read-model's)."""
    version = str(client.info("server").get("redis_version", "?"))
    modules = {str(m[b"name"], "utf-8"): m[b"ver"] for m in client.module_list()}
    search = int(modules.get("search", 0))
    return (
        f"Redis {version}, search module {search // 10000}.{search // 100 % 100}."
        f"{search % 100}; {DEFAULT_ALGORITHM}, cosine, float32"
    )


def recall_cost(stack: BenchStack, plan: Plan, report: Report) -> None:
    """The recall_cost scenario: see the module docstring."""
    # Its topics too: `ChatLog.from_settings` checks that the keys topic exists (nothing
    # is published to them).
    settings = stack.scenario(SCENARIO)
    # The read-model's prefix: `ChatLog.recall` looks for the live generation's index under
    # it (the key directory is on the read-model's Redis, the indexes on the recall one).
    with _on_recall_redis(stack, settings.redis_prefix) as recall:
        problem = _search_module(recall.client)
        if problem is not None:
            report.notes.append(f"recall_cost: not run: the recall Redis {problem}")
            say(f"recall_cost: not run: {problem}")
            return
        report.notes.append(f"recall_cost: the recall index on {_server(recall.client)}")
        evalset = build(plan.recall_users)
        keys = _Keys.of(settings, stack.redis)
        embedder = wiring.embedder(offline_settings(settings))
        try:
            turns, sizes = _throughput(plan, report, recall, keys, evalset, embedder)
            table = _sizes(report, recall, turns, sizes, embedder.dimension)
            _latency(plan, report, recall, keys, evalset, embedder, table, settings)
        finally:
            embedder.close()


# ---------------------------------------------------------------------- 1. throughput


def _eval_turns(evalset: EvalSet) -> Iterator[tuple[str, str, str, str]]:
    return ((t.user_id, t.session_id, t.role, t.content) for t in evalset.turns)


def _throughput(
    plan: Plan,
    report: Report,
    recall: _Recall,
    keys: _Keys,
    evalset: EvalSet,
    embedder: Embedder,
) -> tuple[list[IndexedTurn], tuple[_Bytes, _Bytes]]:
    """The throughput rows; returns the turns the last repetition indexed, and the bytes
    per 1,000 turns of its index and of redisvl's."""
    texts = [t.content for t in evalset.turns]
    records = keys.records(_eval_turns(evalset))
    model = EmbeddingModel(embedder.model, embedder.dimension)
    indexing = keys.indexing(embedder)
    embed = report.metric(
        SCENARIO, "embed only, offline model, batches of the configured size (turns/s)",
        "events/s", ">= 500",
    )  # fmt: skip
    whole = report.measure(SCENARIO, "indexing path", "events/s")
    peer_whole = report.measure(SCENARIO, "redisvl embed + load", "events/s")
    write = report.measure(SCENARIO, "apply", "events/s")
    peer_write = report.measure(SCENARIO, "redisvl load", "events/s")
    bare = report.metric(
        SCENARIO, "write only: bare HSET pipeline of the same hashes (turns/s)", "events/s"
    )
    embedder.embed(texts[:256])  # warm-up: the model loaded, its caches filled
    warm = recall.index("warm", model)
    _fill(warm, indexing, records[:_RECORDS_PER_BATCH])
    recall.drop(warm)
    turns: list[IndexedTurn] = []
    sizes = (_NO_BYTES, _NO_BYTES)
    for n in range(1, plan.repeat + 1):
        started = time.perf_counter()
        embedder.embed(texts)
        embed.add(len(texts) / (time.perf_counter() - started))

        index = recall.index(f"w{n}", model)
        started = time.perf_counter()
        turns = _fill(index, indexing, records)
        whole.add(len(turns) / (time.perf_counter() - started))

        peer = recall.peer(f"peer-w{n}", index)
        started = time.perf_counter()
        vectors = embedder.embed(texts)
        peer.load(_clear_hashes(evalset, vectors), keys=_peer_keys(peer, evalset))
        peer_whole.add(len(texts) / (time.perf_counter() - started))
        if n == plan.repeat:
            sizes = (
                _measure_bytes(recall.client, index.info(), index.keys.recall_documents, "doc"),
                _measure_bytes(recall.client, peer.info(), peer.prefix, "text"),
            )
        recall.drop(peer)

        # The write alone: the planned turns again, into fresh indexes.
        again = recall.index(f"a{n}", model)
        started = time.perf_counter()
        for start in range(0, len(turns), _RECORDS_PER_BATCH):
            again.apply(turns[start : start + _RECORDS_PER_BATCH])
        write.add(len(turns) / (time.perf_counter() - started))
        hashes = [_hash(turn, model) for turn in turns]
        peer = recall.peer(f"peer-a{n}", again)
        names = [f"{peer.prefix}:{turn.session_id}:{turn.message.message_id}" for turn in turns]
        started = time.perf_counter()
        peer.load(hashes, keys=names)
        peer_write.add(len(turns) / (time.perf_counter() - started))
        recall.drop(peer)
        peer = recall.peer(f"peer-h{n}", again)
        started = time.perf_counter()
        _hset_pipeline(recall.client, names, hashes)
        bare.add(len(turns) / (time.perf_counter() - started))
        recall.drop(peer)
        recall.drop(again)
        recall.drop(index)
        say(
            f"recall_cost r{n}: embed {embed.values[-1]:,.0f}/s, indexing path "
            f"{whole.values[-1]:,.0f}/s (redisvl embed + load {peer_whole.values[-1]:,.0f}/s), "
            f"apply {write.values[-1]:,.0f}/s (redisvl load {peer_write.values[-1]:,.0f}/s, "
            f"HSET pipeline {bare.values[-1]:,.0f}/s)"
        )
    report.compare(
        SCENARIO,
        "indexing path, sealed: RecallIndexing.plan + RedisVectorIndex.apply, offline model "
        "(turns/s)",
        whole,
        "redisvl: the same model, then SearchIndex.load, text in clear",
        peer_whole,
    )
    report.compare(
        SCENARIO,
        "index write only: RedisVectorIndex.apply (turns/s)",
        write,
        "redisvl SearchIndex.load of the same hashes",
        peer_write,
    )
    report.notes.append(
        f"recall_cost throughput: the {len(texts):,} turns of the recall evaluation set "
        f"(build({plan.recall_users})), sealed; records in batches of {_RECORDS_PER_BATCH}, "
        f"embedded in batches of {keys.settings.embedding_batch_size} "
        f"(CHATLOG_EMBEDDING_BATCH_SIZE); each repetition into a fresh index. The indexing "
        f"path decodes, opens (one key-directory round trip a batch), embeds, and writes "
        f"in one Lua call that checks the index's epoch and each user's erasure mark"
    )
    return turns, sizes


def _hash(turn: IndexedTurn, model: EmbeddingModel) -> dict[str, Any]:
    """The fields `apply` writes for `turn`, as one dict (the peers write the same)."""
    return {
        "vector": vector_bytes(turn.vector, model),
        "tenant": turn.tenant,
        "user": turn.user_id,
        "session": turn.session_id,
        "role": turn.message.role,
        "created": turn.message.occurred_at_ms,
        "partition": turn.partition,
        "offset": turn.message.offset,
        "doc": encode_message(turn.message),
    }


def _clear_hashes(evalset: EvalSet, vectors: Sequence[Sequence[float]]) -> list[dict[str, Any]]:
    """What a redisvl user stores: the vector, the same tags, the text in clear."""
    return [
        {
            "vector": array_to_buffer(list(vector), "float32"),
            "tenant": _TENANT,
            "user": turn.user_id,
            "session": turn.session_id,
            "role": turn.role,
            "created": int(time.time() * 1000),
            "text": turn.content,
        }
        for turn, vector in zip(evalset.turns, vectors, strict=True)
    ]


def _peer_keys(peer: SearchIndex, evalset: EvalSet) -> list[str]:
    return [f"{peer.prefix}:{t.session_id}:{t.message_id}" for t in evalset.turns]


def _hset_pipeline(
    client: redis.Redis, names: Sequence[str], hashes: Sequence[dict[str, Any]]
) -> None:
    for start in range(0, len(names), _RECORDS_PER_BATCH):
        pipe = client.pipeline(transaction=False)
        for name, fields in zip(
            names[start : start + _RECORDS_PER_BATCH],
            hashes[start : start + _RECORDS_PER_BATCH],
            strict=True,
        ):
            pipe.hset(name, mapping=fields)  # type: ignore[arg-type]
        pipe.execute()


# --------------------------------------------------------------------------- 2. sizes


@dataclass(frozen=True, slots=True)
class _Bytes:
    """An index's memory per 1,000 turns, in KB."""

    vectors: float
    structures: float
    documents: float
    message: float  # of the documents: the stored message (sealed) or text

    @property
    def total(self) -> float:
        """Vectors, structures and documents."""
        return self.vectors + self.structures + self.documents


_NO_BYTES = _Bytes(0.0, 0.0, 0.0, 0.0)


def _measure_bytes(client: redis.Redis, info: dict[str, Any], prefix: str, field: str) -> _Bytes:
    turns = int(info["num_docs"])
    sampled = []
    stored = []
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        sampled.append(int(client.memory_usage(key, samples=0) or 0))
        stored.append(int(client.hstrlen(key, field)))
        if len(sampled) >= _SAMPLED_DOCUMENTS:
            break
    per_thousand = 1000 / 1024

    def mb(name: str) -> float:
        return float(info.get(name, 0.0)) * 1024 * 1024 / turns * per_thousand

    return _Bytes(
        vectors=mb("vector_index_sz_mb"),
        structures=mb("total_index_memory_sz_mb"),
        documents=statistics.mean(sampled) * per_thousand,
        message=statistics.mean(stored) * per_thousand,
    )


def _sizes(
    report: Report,
    recall: _Recall,
    turns: list[IndexedTurn],
    measured: tuple[_Bytes, _Bytes],
    dimension: int,
) -> Table:
    """Bytes per 1,000 turns: the last throughput index (the offline model's vectors),
    redisvl's clear hashes of the same texts and model, and the same turns again with
    synthetic vectors of 1536 numbers."""
    ours, theirs = measured
    wide_index = recall.index("wide", EmbeddingModel("synthetic-1536", _WIDE))
    synthetic = _SyntheticEmbedder(_WIDE)
    for start in range(0, len(turns), _RECORDS_PER_BATCH):
        chunk = turns[start : start + _RECORDS_PER_BATCH]
        vectors = synthetic.embed([t.message.message_id for t in chunk])
        wide_index.apply([replace(t, vector=v) for t, v in zip(chunk, vectors, strict=True)])
    wide = _measure_bytes(recall.client, wide_index.info(), wide_index.keys.recall_documents, "doc")
    recall.drop(wide_index)
    table = Table(
        title="recall index: memory per 1,000 turns (KB; FT.INFO and MEMORY USAGE)",
        columns=[
            "index", "vector index", "index structures", "documents",
            "of which the message", "total",
        ],
    )  # fmt: skip
    rows = (
        (f"chatlog, offline model ({dimension} numbers, its vectors), sealed", ours),
        (f"redisvl SearchIndex.load, the same model ({dimension}), text in clear", theirs),
        (f"chatlog, {_WIDE} numbers (synthetic vectors), sealed", wide),
    )
    for name, sizes in rows:
        table.rows.append([name, *_kb_cells(sizes)])
    table.notes += [
        f"The first three rows hold the {len(turns):,} turns of the recall evaluation set; "
        "the last, the latency rows' index as it grew. Vector index: FT.INFO "
        "vector_index_sz_mb; index structures: total_index_memory_sz_mb (tags, numeric, "
        "document and key tables); documents: MEMORY USAGE (SAMPLES 0) of "
        f"{_SAMPLED_DOCUMENTS} sampled hashes, the mean (the vector again, tags, position, "
        "message). All per 1,000 turns. A FLAT index allocates its vectors in blocks of "
        "1,024, so a small index shows more per turn than a large one.",
        "chatlog stores the message sealed (`encode_message` of the read-model's message: "
        "ciphertext, key id, ids, time); redisvl's hashes keep the text in clear. The "
        f"{_WIDE}-number row (text-embedding-3-small's size) has random unit vectors: a "
        "vector's bytes do not depend on its values.",
    ]
    report.tables.append(table)  # the latency's indexes add their rows
    mine = report.measure(SCENARIO, "bytes", "KB")
    mine.add(ours.total)
    peer_metric = report.measure(SCENARIO, "peer bytes", "KB")
    peer_metric.add(theirs.total)
    report.compare(
        SCENARIO,
        f"index memory per 1,000 turns, {dimension} numbers, sealed",
        mine,
        "redisvl SearchIndex.load, the same vectors, text in clear",
        peer_metric,
        better="lower",
    )
    wide_metric = report.metric(
        SCENARIO, f"index memory per 1,000 turns, {_WIDE} numbers (synthetic vectors)", "KB"
    )
    wide_metric.add(wide.total)
    return table


def _kb_cells(sizes: _Bytes) -> list[str]:
    return [
        f"{value:,.0f}"
        for value in (sizes.vectors, sizes.structures, sizes.documents, sizes.message, sizes.total)
    ]


# ------------------------------------------------------------------------- 3. latency


# One recall through the API: (milliseconds, the turns found).
_Timed = tuple[float, list[RecalledTurn]]


@contextmanager
def _recall_api(
    settings: Settings,
) -> Iterator[tuple[ChatLog, AsyncChatLog, Callable[[Coroutine[Any, Any, _Timed]], _Timed]]]:
    """`ChatLog` and `AsyncChatLog` as an application builds them (`from_settings`),
    with recall on and the offline model, and what runs a coroutine on the async one's
    event loop; closed after."""
    settings = offline_settings(settings).model_copy(update={"recall": True})
    loop = asyncio.new_event_loop()
    log = ChatLog.from_settings(settings, flush_on_sigterm=False)
    alog = AsyncChatLog.from_settings(settings, flush_on_sigterm=False)
    try:
        yield log, alog, loop.run_until_complete
    finally:
        log.close()
        loop.run_until_complete(alog.aclose())
        loop.close()


def _timed_sync(log: ChatLog) -> Callable[[str, str], _Timed]:
    def call(user_id: str, query: str) -> _Timed:
        began = time.perf_counter()
        found = log.recall(user_id, query, k=_K)
        return (time.perf_counter() - began) * 1000, found

    return call


def _timed_async(
    alog: AsyncChatLog, run: Callable[[Coroutine[Any, Any, _Timed]], _Timed]
) -> Callable[[str, str], _Timed]:
    """The await alone is timed, inside the loop `run` drives."""

    async def timed(user_id: str, query: str) -> _Timed:
        began = time.perf_counter()
        found = await alog.recall(user_id, query, k=_K)
        return (time.perf_counter() - began) * 1000, found

    return lambda user_id, query: run(timed(user_id, query))


def _peer_query(
    embedder: Embedder, index: RedisVectorIndex, client: redis.Redis
) -> Callable[[str, str], tuple[float, list[dict[str, Any]]]]:
    """redisvl's query of the same index, the same filter, after the same embedding."""
    peer = SearchIndex.from_existing(index.name, redis_client=client)

    def query(user_id: str, text: str) -> tuple[float, list[dict[str, Any]]]:
        began = time.perf_counter()
        [vector] = embedder.embed([text])
        found = (Tag("tenant") == _TENANT) & (Tag("user") == user_id)
        hits: list[dict[str, Any]] = peer.query(
            VectorQuery(
                vector=list(vector),
                vector_field_name="vector",
                filter_expression=found,
                return_fields=["tenant", "user", "session", "partition", "doc"],
                num_results=_K,
                dtype="float32",
            )
        )
        return (time.perf_counter() - began) * 1000, hits

    return query


def _synthetic_turns(
    start: int, stop: int, users: int, texts: Sequence[str]
) -> Iterator[tuple[str, str, str, str]]:
    """Turn n belongs to user n mod `users` (evenly spread), in one of their 3 sessions;
    its text is one of the evaluation set's, in turn."""
    for n in range(start, stop):
        user = f"u{n % users}"
        session = f"{user}-s{(n // users) % _SESSIONS_PER_USER}"
        yield user, session, "user" if n % 2 == 0 else "assistant", texts[n % len(texts)]


def _latency(
    plan: Plan,
    report: Report,
    recall: _Recall,
    keys: _Keys,
    evalset: EvalSet,
    embedder: Embedder,
    sizes: Table,
    settings: Settings,
) -> None:
    with _recall_api(settings) as (log, alog, run):
        # The index `ChatLog.recall` searches: the live generation's of the read-model.
        model = EmbeddingModel(embedder.model, embedder.dimension)
        index = recall.index(log.reader.keys().generation, model)
        apis = (
            _timed_sync(log),
            _timed_async(alog, run),
            _peer_query(embedder, index, recall.client),
        )
        filled = 0
        for size in plan.recall_latency_turns:
            _grow(index, keys, evalset, (filled, size), plan.recall_latency_users, recall, sizes)
            filled = size
            _time_recalls(plan, report, evalset, index, embedder, apis, size)
    report.notes.append(
        f"recall_cost latency: one tenant, {plan.recall_latency_users:,} users, turns spread "
        f"evenly (turn n to user n mod {plan.recall_latency_users:,}, 3 sessions each), "
        f"synthetic unit vectors written through the indexing path; "
        f"{plan.recall_latency_queries:,} recalls per size and repetition, each of a user "
        f"drawn at random, the k={_K} nearest; the queries are the evaluation set's "
        f"questions, embedded by the offline model inside the timing (every side). "
        f"ChatLog.recall and AsyncChatLog.recall are built by from_settings (recall on) and "
        f"open the hits (one read-model round trip for the user's keys and the sessions' "
        f"status, then unsealing); redisvl's query returns them sealed. The three "
        f"interleaved, in turn first; one client each, one thread, wall time around the "
        f"call (around the await for the async one)"
    )


def _grow(
    index: RedisVectorIndex,
    keys: _Keys,
    evalset: EvalSet,
    turns: tuple[int, int],
    users: int,
    recall: _Recall,
    sizes: Table,
) -> None:
    """Turns `filled` to `size` into `index` (synthetic vectors); its bytes as a row of
    `sizes`."""
    started = time.perf_counter()
    filled, size = turns
    texts = [t.content for t in evalset.turns]
    records = keys.records(_synthetic_turns(filled, size, users, texts))
    _fill(index, keys.indexing(_SyntheticEmbedder(index.model.dimension)), records)
    say(f"recall_cost: {size:,} turns indexed ({time.perf_counter() - started:.0f} s)")
    grown = _measure_bytes(recall.client, index.info(), index.keys.recall_documents, "doc")
    sizes.rows.append(
        [
            f"chatlog, {index.model.dimension} numbers (synthetic vectors), sealed, at "
            f"{size:,} turns of {users:,} users",
            *_kb_cells(grown),
        ]
    )


def _time_recalls(
    plan: Plan,
    report: Report,
    evalset: EvalSet,
    index: RedisVectorIndex,
    embedder: Embedder,
    apis: tuple[Callable[[str, str], tuple[float, Sequence[Any]]], ...],
    size: int,
) -> None:
    """p50 and p99 of each of `apis` (ChatLog, AsyncChatLog, redisvl), interleaved, and of
    the KNN alone, at `size` turns."""
    users = plan.recall_latency_users
    queries = [q.query for q in evalset.questions]
    rng = random.Random(17 + size)
    label = f"{size:,} turns, {users:,} users"
    names = ("ChatLog.recall", "AsyncChatLog.recall", "redisvl")
    p50s, p99s = (
        [report.measure(SCENARIO, f"{name} {q} {label}", "ms") for name in names]
        for q in ("p50", "p99")
    )
    for q, row in (("p50", p50s), ("p99", p99s)):
        row[1] = report.metric(
            SCENARIO, f"recall {q} at {label}: await AsyncChatLog.recall (embed + KNN + open)", "ms"
        )
    knn50, knn99 = (
        report.metric(
            SCENARIO, f"recall {q} at {label}: the KNN alone (RedisVectorIndex.search)", "ms"
        )
        for q in ("p50", "p99")
    )
    for _ in range(plan.repeat):
        timings: list[list[float]] = [[] for _ in apis]
        knn: list[float] = []
        for n in range(plan.recall_latency_queries):
            user, query = f"u{rng.randrange(users)}", queries[n % len(queries)]
            for i in range(len(apis)):
                turn = (n + i) % len(apis)  # each first in turn
                took, found = apis[turn](user, query)
                timings[turn].append(took)
                if len(found) != _K:
                    raise AssertionError(f"{names[turn]} of {user} found {len(found)} turns")
            vector = embedder.embed([query])[0]
            began = time.perf_counter()
            index.search(vector, tenant=_TENANT, user_id=user, k=_K)
            knn.append((time.perf_counter() - began) * 1000)
        for samples, at50, at99 in zip(timings, p50s, p99s, strict=True):
            at50.add(percentile(samples, 50))
            at99.add(percentile(samples, 99))
        knn50.add(percentile(knn, 50))
        knn99.add(percentile(knn, 99))
    peer_name = "redisvl SearchIndex.query(VectorQuery), same index, filter and embedding"
    for q, row in (("p50", p50s), ("p99", p99s)):
        report.compare(
            SCENARIO,
            f"recall {q}, {label}: ChatLog.recall (embed + KNN + open)",
            row[0],
            peer_name,
            row[2],
            better="lower",
        )
    say(
        f"recall_cost {label}: ChatLog.recall p50 {p50s[0].median:.2f} ms p99 "
        f"{p99s[0].median:.2f} ms, AsyncChatLog.recall {p50s[1].median:.2f} / "
        f"{p99s[1].median:.2f} ms (redisvl {p50s[2].median:.2f} / {p99s[2].median:.2f} ms)"
    )
