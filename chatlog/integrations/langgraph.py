"""`ChatlogCheckpointSaver`: LangGraph's checkpointer on the conversation log.

    from langgraph.graph import StateGraph
    saver = ChatlogCheckpointSaver(ChatLog.from_env(), user_id="alice")
    graph = builder.compile(checkpointer=saver)
    graph.invoke(inputs, {"configurable": {"thread_id": "support-42"}})

What is a thread here? A chatlog session: the thread id is the session id, so a graph's
state lives in the same ordered, replayable, erasable log as its chat. Every `put` is a
`CheckpointSaved` event and every `put_writes` a `CheckpointWritesSaved` event on the
session's log, published (and acknowledged) before the call returns; the projector keeps
each namespace's newest checkpoint and its pending writes in Redis
(`chatlog.projections.redis_checkpoints`), and the position of every checkpoint in the
log. So:

* `get_tuple` of the newest checkpoint reads Redis; it first waits, bounded by
  `read_timeout`, until the projector has applied this process's last write to the thread
  (read-your-writes, `PositionBook`, as `ChatLog.context(after=...)` waits);
* `get_tuple` of an older checkpoint and `list` read the log, from that checkpoint's (or
  the thread's first checkpoint's) offset, which Redis indexes: time travel needs no
  second copy of the history;
* `delete_thread` is the session's erasure (`ChatLog.erase_session`): the read-model drops
  the thread, reads answer "none", and the log keeps its events; erasing the user
  destroys the key that sealed them.

Ownership, tenancy and sealing are the session's. The thread belongs to the user (and
tenant) that wrote to it first: ``user_id`` (and ``tenant``) of the saver, or of the
call's ``config["configurable"]`` where the application sets them per call from the
user it authenticated. A write to another user's thread is refused before anything is
published (`OwnershipError`); a read of it answers as for a thread that does not exist
(None, an empty list), so nobody learns that it exists. The serialized checkpoint, its
metadata and each write's value are sealed under the owner's key like message content
(never redacted: a placeholder would corrupt serialized state). One checkpoint is one
Kafka record: its serialized state is bounded by `MAX_CHECKPOINT_BYTES`, checked before
anything is published (`InvalidEvent`).

The asyncio methods run the blocking ones in a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from chatlog.schemas.errors import MissingExtra

try:
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.base import (
        WRITES_IDX_MAP,
        BaseCheckpointSaver,
        ChannelVersions,
        Checkpoint,
        CheckpointMetadata,
        CheckpointTuple,
        get_checkpoint_id,
        get_serializable_checkpoint_metadata,
    )
    from langgraph.checkpoint.serde.base import SerializerProtocol
except ImportError as missing:
    raise MissingExtra.needs("langgraph", "ChatlogCheckpointSaver", missing) from missing

from chatlog.client import ChatLog
from chatlog.integrations.positions import PositionBook, SessionKey
from chatlog.processors.kafka_history import KafkaHistory
from chatlog.producers.commands import new_event
from chatlog.projections.checkpoints import ThreadCheckpoint, pending_writes, thread_history
from chatlog.projections.context import Context
from chatlog.projections.opening import ERASED
from chatlog.projections.redis_checkpoints import RedisCheckpoints
from chatlog.schemas.errors import ConfigError, InvalidInput, SessionNotFound, Undecryptable
from chatlog.schemas.events import (
    CheckpointSaved,
    CheckpointWrite,
    CheckpointWritesSaved,
    ConversationEvent,
    Payload,
)
from chatlog.schemas.ids import validate_id
from chatlog.schemas.position import Position
from chatlog.schemas.sealing import KeyScope

__all__ = ["ChatlogCheckpointSaver"]

DELETE_REASON = "deleted through LangGraph (ChatlogCheckpointSaver.delete_thread)"

_Events = list[tuple[ConversationEvent, Position]]  # `list` is a method name in the class

# Positions of this process's writes per thread, shared by every saver of the process:
# LangGraph may build a new saver per request, and a read must still wait for the write.
_BOOK = PositionBook()


@dataclass(frozen=True, slots=True)
class _Thread:
    """A thread (a session) and who it is read or written for."""

    session_id: str
    owner: KeyScope

    @property
    def key(self) -> SessionKey:
        return ("langgraph", self.owner.tenant, self.owner.user_id, self.session_id)


class ChatlogCheckpointSaver(BaseCheckpointSaver[int]):
    """A LangGraph checkpointer whose checkpoints are events on the conversation log.

    `log` is a `ChatLog` with its history (`ChatLog.from_env()` has it). `user_id` and
    `tenant` name the owner of the threads this saver serves, unless a call's
    ``config["configurable"]`` names them. `read_timeout` bounds the wait for the
    projector (default: the client's). `serde` is LangGraph's serializer (its default,
    JsonPlusSerializer, unless given).
    """

    def __init__(
        self,
        log: ChatLog,
        *,
        user_id: str | None = None,
        tenant: str = "default",
        serde: SerializerProtocol | None = None,
        read_timeout: float | None = None,
        book: PositionBook | None = None,
    ) -> None:
        super().__init__(serde=serde)
        if log.history is None:
            raise ConfigError(
                "ChatlogCheckpointSaver reads older checkpoints from the log: build the "
                "ChatLog with history=wiring.kafka_history(settings), or with from_env()",
                setting="history",
            )
        self.log = log
        self.history: KafkaHistory = log.history
        self.user_id = None if user_id is None else validate_id(user_id, field="user_id")
        self.tenant = validate_id(tenant, field="tenant")
        self.read_timeout = log.read_timeout_s if read_timeout is None else read_timeout
        self.checkpoints = RedisCheckpoints(log.reader.client, log.reader.keys)
        self.book = _BOOK if book is None else book

    # -- writing ----------------------------------------------------------------------

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Publish the checkpoint as a `CheckpointSaved` event; its config once stored.

        The whole checkpoint is stored (not only `new_versions`' channels): a checkpoint
        read back needs no other. `InvalidEvent` over `MAX_CHECKPOINT_BYTES`,
        `OwnershipError` for another user's thread; nothing is published then."""
        thread = self._thread(config)
        namespace = _namespace(config)
        checkpoint_type, state = self.serde.dumps_typed(checkpoint)
        metadata_type, meta = self.serde.dumps_typed(
            get_serializable_checkpoint_metadata(config, metadata)
        )
        payload = CheckpointSaved(
            checkpoint_ns=namespace,
            checkpoint_id=checkpoint["id"],
            parent_checkpoint_id=get_checkpoint_id(config),
            checkpoint_type=checkpoint_type,
            checkpoint=_text(state),
            metadata_type=metadata_type,
            metadata=_text(meta),
        )
        self._publish(thread, payload)
        return _config(thread, namespace, checkpoint["id"])

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Publish a task's writes against the config's checkpoint (`CheckpointWritesSaved`).

        A write repeated with the same task and index is kept once (the first), as
        LangGraph's savers do; an error or interrupt write replaces the last one."""
        thread = self._thread(config)
        checkpoint_id = get_checkpoint_id(config)
        if checkpoint_id is None:
            raise InvalidInput(
                "put_writes needs the checkpoint the writes belong to: "
                "config['configurable']['checkpoint_id'] (the config put returned)"
            )
        stored = []
        for index, (channel, value) in enumerate(writes):
            value_type, data = self.serde.dumps_typed(value)
            stored.append(
                CheckpointWrite(
                    channel=channel,
                    idx=WRITES_IDX_MAP.get(channel, index),
                    value_type=value_type,
                    value=_text(data),
                )
            )
        payload = CheckpointWritesSaved(
            checkpoint_ns=_namespace(config),
            checkpoint_id=checkpoint_id,
            task_id=task_id,
            task_path=task_path,
            writes=tuple(stored),
        )
        self._publish(thread, payload)

    def delete_thread(self, thread_id: str) -> None:
        """Erase the thread's session (`ChatLog.erase_session`, audited); no error for a
        thread that does not exist or is not the saver's user's."""
        thread = self._thread({"configurable": {"thread_id": thread_id}})
        if self._visible(thread) is None:
            return
        try:
            position = self.log.erase_session(
                thread.session_id,
                user_id=thread.owner.user_id,
                tenant=thread.owner.tenant,
                reason=DELETE_REASON,
            )
        except SessionNotFound:
            return
        self.book.note(thread.key, position)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint of the source thread, with its writes, to the target
        thread (both the saver's user's), in the source's order: read from the log,
        published again to the target's log (sealed for it). Nothing to copy from a thread
        that does not exist or is not the user's."""
        source = self._thread({"configurable": {"thread_id": source_thread_id}})
        target = self._thread({"configurable": {"thread_id": target_thread_id}})
        history = self._history(source)
        payloads: list[Payload] = []
        for item in sorted(history.values(), key=lambda c: c.position.offset):
            payloads += [item.saved, *item.writes]
        events = [self._event(target, payload) for payload in payloads]
        if not events:
            return
        if self.log.claims is not None:
            self.log.claims.claim(target.owner, target.session_id)
        positions = self.log.producer.publish_many(events)
        self.book.note(target.key, positions[-1])

    def _event(self, thread: _Thread, payload: Payload) -> ConversationEvent:
        return new_event(
            thread.session_id,
            user_id=thread.owner.user_id,
            payload=payload,
            tenant=thread.owner.tenant,
            producer=self.log.producer.info,
        )

    def _publish(self, thread: _Thread, payload: Payload) -> None:
        # Built (and so checked against the caps) before the claim: a refused checkpoint
        # claims nothing either.
        event = self._event(thread, payload)
        if self.log.claims is not None:
            self.log.claims.claim(thread.owner, thread.session_id)
        self.book.note(thread.key, self.log.producer.publish(event))

    # -- reading ----------------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The config's checkpoint (the namespace's newest without a checkpoint_id), with
        its pending writes; None if the thread has none, or is another user's."""
        thread = self._thread(config)
        namespace = _namespace(config)
        wanted = get_checkpoint_id(config)
        context = self._visible(thread)
        if context is None:
            return None
        if wanted is None or wanted == self.checkpoints.latest_id(thread.session_id, namespace):
            latest = self.checkpoints.latest(thread.session_id, namespace)
            if latest is None:
                return None
            opened = self._open([latest.saved, *latest.writes])
            saved = opened[0].payload if opened else None
            if isinstance(saved, CheckpointSaved) and wanted in (None, saved.checkpoint_id):
                writes = [e.payload for e in opened[1:]]
                return self._tuple(thread, saved, _writes_of(writes))
            # A newer checkpoint landed between the two reads: read it from the log.
        offset = self.checkpoints.offset_of(thread.session_id, namespace, wanted or "")
        if offset is None:
            return None
        history = thread_history(self._log_events(thread, context, offset))
        found = history.get((namespace, wanted or ""))
        return None if found is None else self._tuple(thread, found.saved, found.writes)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """The thread's checkpoints, newest first, read from the log: those of the
        config's namespace (every namespace if it names none), whose metadata has each
        `filter` item, older than `before`'s, at most `limit`."""
        if config is None:
            raise InvalidInput(
                "list needs a config naming the thread: {'configurable': {'thread_id': ...}}; "
                "chatlog lists one thread's checkpoints, not every thread's"
            )
        thread = self._thread(config)
        return self._list(thread, config, filter or {}, before, limit)

    def _list(
        self,
        thread: _Thread,
        config: RunnableConfig,
        wanted: dict[str, Any],
        before: RunnableConfig | None,
        limit: int | None,
    ) -> Iterator[CheckpointTuple]:
        history = self._history(thread)
        namespace = config.get("configurable", {}).get("checkpoint_ns")
        only = get_checkpoint_id(config)
        until = None if before is None else get_checkpoint_id(before)
        listed = 0
        for item in sorted(history.values(), key=lambda c: c.saved.checkpoint_id, reverse=True):
            saved = item.saved
            if namespace is not None and saved.checkpoint_ns != namespace:
                continue
            if (only is not None and saved.checkpoint_id != only) or (
                until is not None and saved.checkpoint_id >= until
            ):
                continue
            found = self._tuple(thread, saved, item.writes)
            if any(found.metadata.get(k) != v for k, v in wanted.items()):
                continue
            if limit is not None and listed >= limit:
                return
            listed += 1
            yield found

    def _history(self, thread: _Thread) -> dict[tuple[str, str], ThreadCheckpoint]:
        """Every checkpoint of the thread, read from the log from its first one (none for
        a thread that is missing, erased or another's)."""
        context = self._visible(thread)
        first = None if context is None else self.checkpoints.first_offset(thread.session_id)
        if context is None or first is None:
            return {}
        return thread_history(self._log_events(thread, context, first))

    def _visible(self, thread: _Thread) -> Context | None:
        """The thread's session once the projector has applied this process's last write
        to it (bounded by `read_timeout`); None if it is missing, erased or another's."""
        try:
            return self.log.reader.context(
                thread.session_id,
                user_id=thread.owner.user_id,
                tenant=thread.owner.tenant,
                after=self.book.get(thread.key),
                timeout=self.read_timeout,
            )
        except SessionNotFound:
            return None

    def _log_events(self, thread: _Thread, context: Context, start: int) -> _Events:
        """The owner's events of the thread from `start` on, read from the log and opened."""
        events, _ = self.history.session_events(
            thread.session_id, partition=context.position.partition, start=start
        )
        return [(e, at) for e, at in events if KeyScope.of(e) == thread.owner]

    def _open(self, stored: Iterable[bytes]) -> Sequence[ConversationEvent]:
        """Events stored in Redis as logged (sealed), decoded and opened."""
        events = [self.history.codec.decode(value) for value in stored]
        if self.history.opener is None:
            if any(event.sealed is not None for event in events):
                raise ConfigError(
                    "this ChatLog's history has no keys to open sealed checkpoints: build "
                    "it with wiring.kafka_history(settings), or with ChatLog.from_env()",
                    setting="history",
                )
            return events
        opened = []
        for event in self.history.opener.open_batch(events):
            if event is ERASED:
                return []
            if isinstance(event, Undecryptable):
                raise event
            assert isinstance(event, ConversationEvent)
            opened.append(event)
        return opened

    def _tuple(
        self, thread: _Thread, saved: CheckpointSaved, writes: Iterable[CheckpointWritesSaved]
    ) -> CheckpointTuple:
        namespace = saved.checkpoint_ns
        parent = saved.parent_checkpoint_id
        return CheckpointTuple(
            config=_config(thread, namespace, saved.checkpoint_id),
            checkpoint=self.serde.loads_typed((saved.checkpoint_type, _bytes(saved.checkpoint))),
            metadata=self.serde.loads_typed((saved.metadata_type, _bytes(saved.metadata))),
            parent_config=None if parent is None else _config(thread, namespace, parent),
            pending_writes=[
                (w.task_id, w.channel, self.serde.loads_typed((w.value_type, _bytes(w.value))))
                for w in pending_writes(writes)
            ],
        )

    def _thread(self, config: RunnableConfig) -> _Thread:
        configurable = config.get("configurable") or {}
        thread_id = configurable.get("thread_id")
        if thread_id is None:
            raise InvalidInput(
                "the config names no thread: pass {'configurable': {'thread_id': ...}}; "
                "the thread id is the chatlog session id"
            )
        user_id = configurable.get("user_id") or self.user_id
        if user_id is None:
            raise ConfigError(
                "name the user the thread belongs to: ChatlogCheckpointSaver(log, "
                "user_id=...), or config['configurable']['user_id'] per call",
                setting="user_id",
            )
        tenant = configurable.get("tenant") or self.tenant
        if self.user_id is not None and (user_id, tenant) != (self.user_id, self.tenant):
            # A saver made for one user acts for that user only: a config (which a graph's
            # caller may shape) never turns it into another's.
            raise InvalidInput(
                "this saver acts for the user it was made with; the config names another "
                "user or tenant: make a saver without user_id to pass them per call"
            )
        return _Thread(
            validate_id(str(thread_id), field="thread_id"),
            KeyScope(validate_id(tenant, field="tenant"), validate_id(user_id, field="user_id")),
        )

    # -- asyncio: the blocking calls in a worker thread -------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """`get_tuple`, in a worker thread."""
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """`list`, read in a worker thread."""
        found = await asyncio.to_thread(
            lambda: list(self.list(config, filter=filter, before=before, limit=limit))
        )
        for item in found:
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """`put`, in a worker thread."""
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """`put_writes`, in a worker thread."""
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        """`delete_thread`, in a worker thread."""
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """`copy_thread`, in a worker thread."""
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)


def _namespace(config: RunnableConfig) -> str:
    return str(config.get("configurable", {}).get("checkpoint_ns") or "")


def _config(thread: _Thread, namespace: str, checkpoint_id: str) -> RunnableConfig:
    return {
        "configurable": {
            "thread_id": thread.session_id,
            "checkpoint_ns": namespace,
            "checkpoint_id": checkpoint_id,
        }
    }


def _writes_of(payloads: Iterable[Payload]) -> list[CheckpointWritesSaved]:
    return [p for p in payloads if isinstance(p, CheckpointWritesSaved)]


def _text(data: bytes) -> str:
    # Sealing works on text; base64 keeps any serializer's bytes intact (4/3 the size).
    return base64.b64encode(data).decode("ascii")


def _bytes(text: str) -> bytes:
    return base64.b64decode(text)
