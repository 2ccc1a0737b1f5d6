"""`ChatLog` and `AsyncChatLog`: the three calls a chat back end makes.

    log = ChatLog.from_env()
    position = log.append("session-42", user_id="alice", role="user", content="Hi!")
    context = log.context("session-42", user_id="alice", after=position)
    messages = context.to_openai(system="You are helpful.", max_tokens=3000)

`append` publishes an event and returns its position; `context` reads the projection,
waiting for that position when given one (read-your-writes); `sessions` lists a user's
sessions, with the title `start_session` gave them. A session belongs to one user of one
tenant (``tenant=``, "default" unless given, on every call). Every read names them, and
a session of another user or tenant is not found, exactly as a missing one; an append
into it is refused (`OwnershipError`) before anything is published.

With ``CHATLOG_RECALL=true`` (and `chatlog run embedder` filling the index), `recall`
finds a user's earlier turns by meaning, across their sessions, and `context(...,
recall=query)` adds them to the prompt as a quoted data block (docs/recall.md):

    turns = log.recall("alice", "which order was late?", k=5)
    context = log.context("session-42", user_id="alice", recall="which order was late?")

`context(..., as_of=...)` answers what the bot saw at a past point, folded from the log
itself (`KafkaHistory`), so it needs neither the projector nor Redis:

    then = log.context("session-42", user_id="alice", as_of=datetime(2025, 6, 1, tzinfo=UTC))

`redact` takes one message out of every context: blanked where it stands, and the
rolling summary that may hold it withheld until the summarizer has rebuilt it from the
log without it (`Context.summary_withheld` says so meanwhile):

    position = log.redact("session-42", message_id, user_id="alice", reason="card number")

`close_session` closes a session (it stays readable; a new message opens it again), and
`erase_session` erases one session from the read-model (reads answer not found):

    log.close_session("session-42", user_id="alice")

`erase_user` erases a person: their keys are destroyed, so what the log holds of them
can never be read again, and their sessions leave Redis (`chatlog.processors.erasure`):

    erasure = log.erase_user("alice")

`export_user` hands a person their data: every session of theirs, read from the log,
decrypted, redactions applied, as one JSON-ready document (docs/privacy.md, "Export").

With an audit trail (`from_env` builds one; `principal` names who acts, and `erase_user`,
`export_user` and `erase_session` take one for the call), `start_session`, `redact`,
`erase_session`, `erase_user` and `export_user` are recorded in it; `append` is not, so it costs
nothing more. An operation of the application's own records itself with one call:

    log.audit.record(AuditAction.OPERATOR_READ, user_id="alice", session_id="s-1")
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, Unpack

from chatlog import wiring
from chatlog.processors.audit import AuditTrail
from chatlog.processors.erasure import Erasure, UserEraser
from chatlog.processors.kafka_export import KafkaExporter
from chatlog.processors.kafka_history import AsOfPoint, KafkaHistory
from chatlog.producers.commands import MessageFields, new_event
from chatlog.producers.kafka_producer import AsyncConversationProducer, ConversationProducer
from chatlog.projections.context import Context
from chatlog.projections.recall import MAX_K, RecalledTurn, check_k, recall_query
from chatlog.projections.redis_claims import AsyncRedisSessionClaims, RedisSessionClaims
from chatlog.projections.redis_reader import AsyncRedisReader, RedisReader
from chatlog.projections.store import SessionEntry
from chatlog.projections.tasks import Task, TaskInfo
from chatlog.schemas.audit import AuditAction
from chatlog.schemas.errors import (
    ChatlogError,
    ConfigError,
    Erased,
    InvalidInput,
    NotAudited,
    SessionNotFound,
    Unavailable,
)
from chatlog.schemas.events import (
    ConversationEvent,
    MessageRedacted,
    Payload,
    ProducerInfo,
    Role,
    SessionClosed,
    SessionStarted,
    TaskCancelled,
    TaskEvent,
    TaskFailed,
    TaskFinished,
    TaskProgressed,
    TaskStarted,
    UserErased,
)
from chatlog.schemas.ids import new_id, validate_id
from chatlog.schemas.position import Position
from chatlog.schemas.sealing import KeyScope
from chatlog.settings import Settings
from chatlog.task_commands import json_text, listed, must_publish, now_ms, task_id_of

if TYPE_CHECKING:
    from chatlog.processors.redis_recall_reader import AsyncRedisRecall, RedisRecall

__all__ = ["AsyncChatLog", "ChatLog"]

_log = logging.getLogger("chatlog.client")

_ERASED_SESSION = "the session's erasure"  # what a `NotAudited` says was stored


def _eraser_of(eraser: UserEraser | None) -> UserEraser:
    if eraser is None:
        raise ConfigError(
            "this client cannot erase users: build it with eraser=wiring.eraser(settings, "
            "producer), or with from_env()",
            setting="eraser",
        )
    return eraser


def _exporter_of(exporter: KafkaExporter | None) -> KafkaExporter:
    if exporter is None:
        raise ConfigError(
            "this client cannot export users: build it with exporter=wiring.exporter(settings), "
            "or with from_env()",
            setting="exporter",
        )
    return exporter


def _export(
    exporter: KafkaExporter | None, audit: AuditTrail | None, user_id: str, tenant: str
) -> dict[str, Any]:
    return _exporter_of(exporter).export(user_id, tenant=tenant, audit=audit)


def _audit_started(audit: AuditTrail | None, event: ConversationEvent, position: Position) -> None:
    if audit is not None:
        with _not_audited("the session's start", position):
            audit.record(
                AuditAction.SESSION_CREATED,
                tenant=event.tenant,
                user_id=event.user_id,
                session_id=event.session_id,
            )


@contextlib.contextmanager
def _not_audited(what: str, position: Position) -> Iterator[None]:
    """An audit record of something already stored that fails is `NotAudited`: the
    caller must not read it as "not stored" (and retry it as something new)."""
    try:
        yield
    except ChatlogError as exc:
        raise NotAudited(
            f"{what} is stored at {position}, but its audit record could not be written "
            f"({exc.message}); run the call again once the audit trail is writable: it "
            f"repeats harmlessly and is recorded",
            position=str(position),
        ) from exc


def _audit_redaction(
    audit: AuditTrail | None,
    event: ConversationEvent,
    message_id: str,
    *,
    position: Position | None = None,
    error: ChatlogError | None = None,
) -> None:
    """Record a redaction, or its refusal (another user's session, say) or failure."""
    _audit_write(
        audit,
        AuditAction.MESSAGE_REDACTED,
        "the redaction",
        event,
        details={"message_id": message_id},
        position=position,
        error=error,
    )


def _audit_write(
    audit: AuditTrail | None,
    action: AuditAction,
    what: str,
    event: ConversationEvent,
    *,
    details: dict[str, object] | None = None,
    position: Position | None = None,
    error: ChatlogError | None = None,
) -> None:
    """Record an audited write of `event` (`what` it is, stored at `position`), or its
    refusal (another user's session, say) or failure."""
    if audit is None:
        return
    details = dict(details or {})
    target = {"tenant": event.tenant, "user_id": event.user_id, "session_id": event.session_id}
    if error is not None:
        audit.failed(action, error, details=details, **target)
    else:
        assert position is not None
        details["position"] = str(position)
        with _not_audited(what, position):
            audit.record(action, details=details, **target)


def _as(audit: AuditTrail | None, principal: str | None) -> AuditTrail | None:
    """`audit` acting for `principal` (None: the client's own)."""
    return None if audit is None else audit.as_principal(principal)


def _recaller_of(recaller: RedisRecall | AsyncRedisRecall | None) -> Any:
    if recaller is None:
        raise ConfigError(
            "semantic recall is off: set CHATLOG_RECALL=true (with CHATLOG_RECALL_REDIS_URL "
            "naming a Redis with the query engine) and run `chatlog run embedder` to fill "
            "the recall index; or build the client with recall=wiring.recall(settings, reader)",
            setting="CHATLOG_RECALL",
        )
    return recaller


def _recaller_for(recaller: RedisRecall | AsyncRedisRecall | None, query: str, k: int) -> Any:
    """The recaller that answers `query` for `k` turns; refuses, before anything is read,
    a request it could not honour."""
    recaller = _recaller_of(recaller)
    recall_query(query)
    check_k(k)
    return recaller


def _recall_asked(
    query: str | None, k: int, recaller: RedisRecall | AsyncRedisRecall | None, as_of: object
) -> Any:
    """The recaller when a context read recalls too, else None; refuses a request it
    could not honour before anything is read."""
    if query is None:
        return None
    if as_of is not None:
        raise InvalidInput(
            "pass recall or as_of, not both: recall searches the index as it is now, as_of "
            "reads the log as it was at a past point"
        )
    return _recaller_for(recaller, query, k)


def _recall_depth(k: int, context: Context) -> int:
    """How many turns to ask the index for, so that `k` remain once those the context
    holds are left out (the latest message, just appended, is the nearest of all)."""
    return min(MAX_K, k + len(context.messages))


def _recall_failed(context: Context, exc: Unavailable) -> Context:
    # A prompt without recalled turns still works; the chat turn must not fail for it.
    _log.warning("recall gave nothing for session %s: %s", context.session_id, exc.message)
    return context.recall_failed(exc.message)


def _history_for(history: KafkaHistory | None, after: Position | None) -> KafkaHistory:
    """Where an `as_of` read goes; refuses the combinations it cannot honour."""
    if after is not None:
        # `after` waits for the read-model to reach a position; `as_of` reads the log as
        # it was, without the read-model: together they ask for two different answers.
        raise InvalidInput(
            f"pass after or as_of, not both: after={after} waits for the projection to "
            f"reach a position, as_of reads the log as it was at a point"
        )
    if history is None:
        raise ConfigError(
            "this client has no history to read as_of from: build it with "
            "history=KafkaHistory(...), or with from_env()",
            setting="history",
        )
    return history


class ChatLog:
    """Publish messages and read contexts (blocking)."""

    def __init__(
        self,
        *,
        producer: ConversationProducer,
        reader: RedisReader,
        read_timeout_s: float = 5.0,
        history: KafkaHistory | None = None,
        eraser: UserEraser | None = None,
        exporter: KafkaExporter | None = None,
        audit: AuditTrail | None = None,
        principal: str | None = None,
        claims: RedisSessionClaims | None = None,
        task_stall_s: float = 300.0,
        recall: RedisRecall | None = None,
    ) -> None:
        self.producer = producer
        self.reader = reader
        # Semantic recall (None: CHATLOG_RECALL is off, and `recall` says so).
        self.recaller = recall
        self.read_timeout_s = read_timeout_s
        self.history = history
        self.eraser = eraser
        self.exporter = exporter
        # Who acts: the caller's principal (the gateway will pass the one it authenticated).
        self.audit = audit.as_principal(principal) if audit is not None else None
        # Without claims, an append into another user's session is refused only by the
        # projector, after it is in the log.
        self.claims = claims
        # A running task without a heartbeat for this long reads as stalled.
        self.task_stall_ms = int(task_stall_s * 1000)
        # Each session's last task event this client published: the next task command
        # reads the session after it (read-your-writes). Bounded: see `_remember`.
        self._task_positions: dict[tuple[str, str], Position] = {}

    @classmethod
    def from_env(cls, **overrides: Any) -> ChatLog:
        """Built from `CHATLOG_*` settings (`overrides` win)."""
        return cls.from_settings(Settings.from_env(**overrides))

    @classmethod
    def from_settings(
        cls, settings: Settings, *, principal: str | None = None, flush_on_sigterm: bool = True
    ) -> ChatLog:
        """Built from `settings` with every part: history, eraser, exporter, audit trail
        (acting as `principal`, else the settings' principal)."""
        producer = wiring.producer(settings, flush_on_sigterm=flush_on_sigterm)
        reader = wiring.reader(settings)
        return cls(
            producer=producer,
            reader=reader,
            read_timeout_s=settings.read_timeout_s,
            history=wiring.kafka_history(settings),
            eraser=wiring.eraser(settings, producer, reader.client),
            exporter=wiring.exporter(settings, reader.client),
            audit=wiring.audit_trail(settings),
            principal=principal,
            claims=wiring.claims(settings, reader.client),
            task_stall_s=settings.task_stall_s,
            recall=wiring.recall(settings, reader),
        )

    def append(
        self,
        session_id: str,
        *,
        user_id: str,
        role: Role | str,
        content: str,
        **fields: Unpack[MessageFields],
    ) -> Position:
        """Append one message (of `user_id` of ``tenant=``, "default" unless given);
        returns its position once the broker has it.

        `OwnershipError`, nothing published, if the session is another user's or
        another tenant's."""
        if self.claims is not None:
            self.claims.claim(KeyScope(fields.get("tenant", "default"), user_id), session_id)
        return self.producer.append(
            session_id, user_id=user_id, role=role, content=content, **fields
        )

    def start_session(
        self,
        session_id: str,
        *,
        user_id: str,
        title: str | None = None,
        tenant: str = "default",
    ) -> Position:
        """Start the session, or retitle it (None keeps the title); returns its position.

        Optional: `append` starts a session too, with no title (and no audit record).
        """
        event = _session_event(
            session_id, user_id, SessionStarted(title=title), self.producer.info, tenant
        )
        if self.claims is not None:
            self.claims.claim(KeyScope.of(event), session_id)
        position = self.producer.publish(event)
        _audit_started(self.audit, event, position)
        return position

    def context(
        self,
        session_id: str,
        *,
        user_id: str,
        tenant: str = "default",
        after: Position | None = None,
        as_of: AsOfPoint | None = None,
        timeout: float | None = None,
        reveal: bool = False,
        recall: str | None = None,
        recall_k: int = 5,
    ) -> Context:
        """The session's summary and recent messages; waits for `after` if given.

        The session of `user_id` of `tenant`: anyone else's raises `SessionNotFound`,
        exactly as a session that does not exist.

        With `recall` (a query: the user's latest message, say), up to `recall_k` earlier
        turns of the user's, from any of their sessions, nearest to it in meaning and not
        already in the context (`Context.recalled`; `to_openai` quotes them as data). If
        the embedder or the index does not answer, the context comes without them and
        `Context.recall_error` says why: the prompt still works.

        With `as_of` (an aware datetime, epoch milliseconds, or a `Position` meaning
        right after that event), the context as it was then, folded from the log: no
        projector or read-model is asked (Redis serves only the owner's keys). `after`
        and `as_of` exclude each other.

        With `reveal`, personal data the producer tokenized (``CHATLOG_PII_MODE=tokenize``)
        comes back in place of its ``[EMAIL#1]`` placeholders, opened with the owner's
        key: for the owner's own views (a receipt, a form to fill), never for a prompt.
        Once the owner is erased nothing reveals it.
        """
        recaller = _recall_asked(recall, recall_k, self.recaller, as_of)
        if as_of is not None:
            history = _history_for(self.history, after)
            return history.context(
                session_id,
                user_id=user_id,
                tenant=tenant,
                as_of=as_of,
                timeout=timeout,
                reveal=reveal,
            )
        context = self.reader.context(
            session_id,
            user_id=user_id,
            tenant=tenant,
            after=after,
            timeout=self.read_timeout_s if timeout is None else timeout,
            reveal=reveal,
        )
        if recaller is None:
            return context
        try:
            turns = recaller.recall(
                user_id, recall, tenant=tenant, k=_recall_depth(recall_k, context)
            )
        except Unavailable as exc:
            return _recall_failed(context, exc)
        return context.with_recalled(turns, k=recall_k)

    def recall(
        self,
        user_id: str,
        query: str,
        *,
        k: int = 5,
        session_id: str | None = None,
        tenant: str = "default",
    ) -> list[RecalledTurn]:
        """The `k` earlier turns of `user_id` of `tenant` nearest in meaning to `query`,
        most relevant first: from all their sessions, or from `session_id` only.

        Never another user's or tenant's. A `session_id` that is not theirs (or is no
        longer in the read-model) raises `SessionNotFound`, as a read of it does; an
        erased user, `Erased`. `InvalidInput` for an empty query or one over 2,000
        characters, or `k` outside 1 to 100; `ConfigError` if recall is off
        (``CHATLOG_RECALL``); `RecallIndexLost` if the index is gone (`chatlog replay`
        rebuilds it); `EmbeddingModelMismatch` if it was built with another model. A
        search, not a read-your-writes read: a turn appended a moment ago is found once
        the embedder has indexed it (docs/recall.md).
        """
        recaller = _recaller_for(self.recaller, query, k)
        if session_id is not None:
            # The read rule, as a read of the session applies it (the read-model only: a
            # refusal must not cost a scan of the log).
            self.reader.context(session_id, user_id=user_id, tenant=tenant)
        turns: list[RecalledTurn] = recaller.recall(
            user_id, query, tenant=tenant, k=k, session_id=session_id
        )
        return turns

    def sessions(
        self, user_id: str, *, tenant: str = "default", limit: int = 50
    ) -> list[SessionEntry]:
        """The sessions of `user_id` of `tenant`, most recently active first."""
        return self.reader.sessions(user_id, tenant=tenant, limit=limit)

    def redact(
        self,
        session_id: str,
        message_id: str,
        *,
        user_id: str,
        tenant: str = "default",
        reason: str | None = None,
    ) -> Position:
        """Redact a message of the user's session; returns the redaction's position.

        Reads as for `context` first, so another's session, an erased or an unknown one
        raise `SessionNotFound` (a session gone from Redis is looked up in the log), and
        nothing is published. From the position on, the message reads as ``[redacted]``
        and a summary that may hold it is withheld until the summarizer has rebuilt it
        without it (`Context.summary_withheld`).
        """
        event = _redaction(
            session_id,
            message_id,
            user_id=user_id,
            tenant=tenant,
            reason=reason,
            producer=self.producer.info,
        )
        try:
            self._check_owned(session_id, user_id, tenant)
            position = self.producer.publish(event)
        except ChatlogError as exc:
            _audit_redaction(self.audit, event, message_id, error=exc)
            raise
        _audit_redaction(self.audit, event, message_id, position=position)
        return position

    def close_session(
        self,
        session_id: str,
        *,
        user_id: str,
        reason: str | None = None,
        tenant: str = "default",
    ) -> Position:
        """Close the user's session (`SessionClosed`); returns the close's position.

        Refused as `redact` is (another user's session, an erased or unknown one), with
        nothing published. A closed session stays readable until it expires; a message
        appended later opens it again.
        """
        event = _session_event(
            session_id, user_id, SessionClosed(reason=reason), self.producer.info, tenant
        )
        self._check_owned(session_id, user_id, tenant)
        return self.producer.publish(event)

    def erase_session(
        self,
        session_id: str,
        *,
        user_id: str,
        reason: str | None = None,
        tenant: str = "default",
        principal: str | None = None,
    ) -> Position:
        """Erase one session of the user (`UserErased`); returns the erasure's position.

        Refused as `redact` is, with nothing published. From the position on the
        read-model holds only a tombstone and every read answers `SessionNotFound`; the
        log keeps the events, and reads of the past honour the erasure. To make a
        person's words unreadable for good, erase the user (`erase_user`). Audited, as
        `principal` (None: the client's own).
        """
        event = _session_event(
            session_id, user_id, UserErased(reason=reason), self.producer.info, tenant
        )
        audit = _as(self.audit, principal)
        try:
            self._check_owned(session_id, user_id, tenant)
            position = self.producer.publish(event)
        except ChatlogError as exc:
            _audit_write(audit, AuditAction.SESSION_ERASED, _ERASED_SESSION, event, error=exc)
            raise
        _audit_write(audit, AuditAction.SESSION_ERASED, _ERASED_SESSION, event, position=position)
        if self.claims is not None:
            # Its id stays claimed (never given to another), but no longer counts
            # against the user's CHATLOG_MAX_SESSIONS_PER_USER.
            self.claims.release(KeyScope(tenant, user_id), session_id)
        return position

    def _check_owned(self, session_id: str, user_id: str, tenant: str) -> None:
        """Raise as a read would unless the session is the user's of `tenant`:
        `SessionNotFound` for another's, an erased or an unknown one, alike (a session
        gone from Redis is looked up in the log)."""
        try:
            self.reader.context(
                session_id, user_id=user_id, tenant=tenant, timeout=self.read_timeout_s
            )
        except Erased:
            raise  # the owner's keys are gone: the log must not be asked either
        except SessionNotFound:
            if self.history is None:
                raise
            # Expired from Redis: the log knows the owner. Raises as a read would.
            self.history.context(
                session_id, user_id=user_id, tenant=tenant, as_of=datetime.now(UTC)
            )

    def erase_user(
        self, user_id: str, *, tenant: str = "default", principal: str | None = None
    ) -> Erasure:
        """Erase the user: destroy their keys and remove their sessions from Redis.

        Returns once the keys' tombstones are acknowledged and no generation of the
        read-model holds a session of theirs. Harmless when repeated
        (`already_erased`); `UnknownUser` if chatlog has nothing of them. Audited, as
        `principal` (None: the client's own).
        """
        eraser = _eraser_of(self.eraser)
        return eraser.erase(user_id, tenant=tenant, audit=_as(self.audit, principal))

    def export_user(
        self, user_id: str, *, tenant: str = "default", principal: str | None = None
    ) -> dict[str, Any]:
        """Every session of the user, read from the log, as a JSON-ready document.

        Decrypted, redactions applied, current summaries included (the format is in
        docs/privacy.md, "Export"). Reads the whole events topic: an admin operation.
        `Erased` for an erased user, `UnknownUser` if the log holds no session of theirs.
        Audited, as `principal` (None: the client's own).
        """
        return _export(self.exporter, _as(self.audit, principal), user_id, tenant)

    # -- long-running tasks (`chatlog.projections.tasks`) ----------------------------------

    def start_task(
        self,
        session_id: str,
        *,
        user_id: str,
        kind: str,
        input: Any = None,
        tenant: str = "default",
        task_id: str | None = None,
    ) -> str:
        """Start a long-running task in the user's session; returns its id (`task_id`, or
        a new one). `input` (JSON-serializable) is sealed under the user's key.

        The session is claimed as `append` claims it (`OwnershipError` for another's).
        Starting a `task_id` the session has, with the same `kind`, is a retry: nothing is
        published again; with another kind, `InvalidTransition`."""
        task_id = task_id_of(task_id, new_id())
        payload = TaskStarted(task_id=task_id, kind=kind, input=json_text("input", input))
        event = _session_event(session_id, user_id, payload, self.producer.info, tenant)
        if self.claims is not None:
            self.claims.claim(KeyScope.of(event), session_id)
        try:
            tasks = self._tasks_of(session_id, user_id, tenant, task_id, wait=False)
        except SessionNotFound:
            tasks = ()  # a new session: the task starts it
        if must_publish(tasks, payload):
            self._remember(event, self.producer.publish(event))
        return task_id

    def progress(
        self,
        task_id: str,
        *,
        session_id: str,
        user_id: str,
        tenant: str = "default",
        progress: float | None = None,
        note: str | None = None,
    ) -> Position | None:
        """A heartbeat of the running task, with how far it is (`progress`, 0 to 1) and a
        `note` (sealed); returns its position. `InvalidTransition` once it has ended."""
        payload = TaskProgressed(task_id=task_id, progress=progress, note=note)
        return self._task_command(session_id, user_id, tenant, payload)

    def finish(
        self,
        task_id: str,
        *,
        session_id: str,
        user_id: str,
        tenant: str = "default",
        result: Any = None,
    ) -> Position | None:
        """The task succeeded with `result` (JSON-serializable, sealed); its position, or
        None for a repeat. `InvalidTransition` if it failed or was cancelled."""
        payload = TaskFinished(task_id=task_id, result=json_text("result", result))
        return self._task_command(session_id, user_id, tenant, payload)

    def fail(
        self, task_id: str, *, session_id: str, user_id: str, error: str, tenant: str = "default"
    ) -> Position | None:
        """The task failed (`error`, sealed); as `finish`."""
        payload = TaskFailed(task_id=task_id, error=error)
        return self._task_command(session_id, user_id, tenant, payload)

    def cancel(
        self,
        task_id: str,
        *,
        session_id: str,
        user_id: str,
        reason: str | None = None,
        tenant: str = "default",
    ) -> Position | None:
        """Cancel the task (`reason`, sealed); as `finish`."""
        payload = TaskCancelled(task_id=task_id, reason=reason)
        return self._task_command(session_id, user_id, tenant, payload)

    def tasks(
        self,
        user_id: str,
        *,
        session_id: str | None = None,
        tenant: str = "default",
        limit: int = 50,
    ) -> list[TaskInfo]:
        """The user's tasks (of `session_id` only, if given; else of their `limit` most
        recently active sessions), newest first, with their status now: a running task
        without a heartbeat for `CHATLOG_TASK_STALL_S` reads as `stalled`. Another's
        session raises `SessionNotFound`, as a read does."""
        if session_id is not None:
            by_session = [(session_id, self._tasks_of(session_id, user_id, tenant, None))]
        else:
            entries = self.sessions(user_id, tenant=tenant, limit=limit)
            by_session = [(entry.session_id, entry.tasks) for entry in entries]
        return listed(by_session, now_ms=now_ms(), stall_ms=self.task_stall_ms)

    def _task_command(
        self, session_id: str, user_id: str, tenant: str, payload: TaskEvent
    ) -> Position | None:
        event = _session_event(session_id, user_id, payload, self.producer.info, tenant)
        tasks = self._tasks_of(session_id, user_id, tenant, payload.task_id)
        if not must_publish(tasks, payload):
            return None
        position = self.producer.publish(event)
        self._remember(event, position)
        return position

    def _tasks_of(
        self, session_id: str, user_id: str, tenant: str, task_id: str | None, *, wait: bool = True
    ) -> tuple[Task, ...]:
        """The session's tasks as the read-model has them, after this client's last task
        event there; with `wait`, up to the read timeout for `task_id` to appear (started
        by another process, not yet projected)."""
        after = self._task_positions.get((tenant, session_id))
        deadline = time.monotonic() + self.read_timeout_s
        delay = _TASK_POLL_S
        while True:
            tasks = self.context(session_id, user_id=user_id, tenant=tenant, after=after).tasks
            if not wait or task_id is None or any(t.task_id == task_id for t in tasks):
                return tasks
            if time.monotonic() + delay > deadline:
                return tasks  # the transition check names the missing task
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _remember(self, event: ConversationEvent, position: Position) -> None:
        remember_position(self._task_positions, event, position)

    def close(self) -> None:
        """Flush pending events and release connections."""
        try:
            self.producer.close()
        finally:
            self.reader.client.close()
            if self.audit is not None:
                self.audit.close()
            if self.recaller is not None:
                self.recaller.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncChatLog:
    """Publish messages and read contexts (asyncio)."""

    def __init__(
        self,
        *,
        producer: AsyncConversationProducer,
        reader: AsyncRedisReader,
        read_timeout_s: float = 5.0,
        history: KafkaHistory | None = None,
        eraser: UserEraser | None = None,
        exporter: KafkaExporter | None = None,
        audit: AuditTrail | None = None,
        principal: str | None = None,
        claims: AsyncRedisSessionClaims | None = None,
        task_stall_s: float = 300.0,
        recall: AsyncRedisRecall | None = None,
    ) -> None:
        self.producer = producer
        self.reader = reader
        # Semantic recall (None: CHATLOG_RECALL is off, and `recall` says so).
        self.recaller = recall
        self.read_timeout_s = read_timeout_s
        self.history = history
        self.eraser = eraser
        self.exporter = exporter
        # Who acts: the caller's principal (the gateway will pass the one it authenticated).
        self.audit = audit.as_principal(principal) if audit is not None else None
        # Without claims, an append into another user's session is refused only by the
        # projector, after it is in the log.
        self.claims = claims
        # A running task without a heartbeat for this long reads as stalled.
        self.task_stall_ms = int(task_stall_s * 1000)
        # Each session's last task event this client published: the next task command
        # reads the session after it (read-your-writes). Bounded: see `_remember`.
        self._task_positions: dict[tuple[str, str], Position] = {}

    @classmethod
    def from_env(cls, **overrides: Any) -> AsyncChatLog:
        """Built from `CHATLOG_*` settings (`overrides` win)."""
        return cls.from_settings(Settings.from_env(**overrides))

    @classmethod
    def from_settings(
        cls, settings: Settings, *, principal: str | None = None, flush_on_sigterm: bool = True
    ) -> AsyncChatLog:
        """Built from `settings` with every part, as `ChatLog.from_settings`."""
        producer = wiring.producer(settings, flush_on_sigterm=flush_on_sigterm)
        reader = wiring.async_reader(settings)
        return cls(
            producer=AsyncConversationProducer(producer),
            reader=reader,
            read_timeout_s=settings.read_timeout_s,
            history=wiring.kafka_history(settings),
            eraser=wiring.eraser(settings, producer),
            exporter=wiring.exporter(settings),
            audit=wiring.audit_trail(settings),
            principal=principal,
            claims=wiring.async_claims(settings, reader.client),
            task_stall_s=settings.task_stall_s,
            recall=wiring.async_recall(settings, reader),
        )

    async def append(
        self,
        session_id: str,
        *,
        user_id: str,
        role: Role | str,
        content: str,
        **fields: Unpack[MessageFields],
    ) -> Position:
        """Append one message (of `user_id` of ``tenant=``, "default" unless given);
        returns its position once the broker has it.

        `OwnershipError`, nothing published, if the session is another user's or
        another tenant's."""
        if self.claims is not None:
            scope = KeyScope(fields.get("tenant", "default"), user_id)
            await self.claims.claim(scope, session_id)
        return await self.producer.append(
            session_id, user_id=user_id, role=role, content=content, **fields
        )

    async def start_session(
        self,
        session_id: str,
        *,
        user_id: str,
        title: str | None = None,
        tenant: str = "default",
    ) -> Position:
        """Start the session, or retitle it (None keeps the title); returns its position.

        Optional: `append` starts a session too, with no title (and no audit record).
        """
        event = _session_event(
            session_id, user_id, SessionStarted(title=title), self.producer.sync.info, tenant
        )
        if self.claims is not None:
            await self.claims.claim(KeyScope.of(event), session_id)
        position = await self.producer.publish(event)
        await asyncio.to_thread(_audit_started, self.audit, event, position)
        return position

    async def context(
        self,
        session_id: str,
        *,
        user_id: str,
        tenant: str = "default",
        after: Position | None = None,
        as_of: AsOfPoint | None = None,
        timeout: float | None = None,
        reveal: bool = False,
        recall: str | None = None,
        recall_k: int = 5,
    ) -> Context:
        """The session's summary and recent messages; waits for `after` if given.

        `as_of` reads the context as it was at a past point, as `ChatLog.context` does;
        the blocking read of the log runs in a worker thread. `tenant`, `reveal`,
        `recall` and `recall_k` as in `ChatLog.context`.
        """
        recaller = _recall_asked(recall, recall_k, self.recaller, as_of)
        if as_of is not None:
            history = _history_for(self.history, after)
            return await asyncio.to_thread(
                history.context,
                session_id,
                user_id=user_id,
                tenant=tenant,
                as_of=as_of,
                timeout=timeout,
                reveal=reveal,
            )
        context = await self.reader.context(
            session_id,
            user_id=user_id,
            tenant=tenant,
            after=after,
            timeout=self.read_timeout_s if timeout is None else timeout,
            reveal=reveal,
        )
        if recaller is None:
            return context
        try:
            turns = await recaller.recall(
                user_id, recall, tenant=tenant, k=_recall_depth(recall_k, context)
            )
        except Unavailable as exc:
            return _recall_failed(context, exc)
        return context.with_recalled(turns, k=recall_k)

    async def recall(
        self,
        user_id: str,
        query: str,
        *,
        k: int = 5,
        session_id: str | None = None,
        tenant: str = "default",
    ) -> list[RecalledTurn]:
        """`ChatLog.recall`, awaited (an in-process model embeds in a worker thread)."""
        recaller = _recaller_for(self.recaller, query, k)
        if session_id is not None:
            await self.reader.context(session_id, user_id=user_id, tenant=tenant)
        turns: list[RecalledTurn] = await recaller.recall(
            user_id, query, tenant=tenant, k=k, session_id=session_id
        )
        return turns

    async def sessions(
        self, user_id: str, *, tenant: str = "default", limit: int = 50
    ) -> list[SessionEntry]:
        """The sessions of `user_id` of `tenant`, most recently active first."""
        return await self.reader.sessions(user_id, tenant=tenant, limit=limit)

    async def redact(
        self,
        session_id: str,
        message_id: str,
        *,
        user_id: str,
        tenant: str = "default",
        reason: str | None = None,
    ) -> Position:
        """`ChatLog.redact`; a look-up in the log runs in a worker thread."""
        event = _redaction(
            session_id,
            message_id,
            user_id=user_id,
            tenant=tenant,
            reason=reason,
            producer=self.producer.sync.info,
        )
        try:
            await self._check_owned(session_id, user_id, tenant)
            position = await self.producer.publish(event)
        except ChatlogError as exc:
            await asyncio.to_thread(_audit_redaction, self.audit, event, message_id, error=exc)
            raise
        await asyncio.to_thread(_audit_redaction, self.audit, event, message_id, position=position)
        return position

    async def close_session(
        self,
        session_id: str,
        *,
        user_id: str,
        reason: str | None = None,
        tenant: str = "default",
    ) -> Position:
        """`ChatLog.close_session`; a look-up in the log runs in a worker thread."""
        event = _session_event(
            session_id, user_id, SessionClosed(reason=reason), self.producer.sync.info, tenant
        )
        await self._check_owned(session_id, user_id, tenant)
        return await self.producer.publish(event)

    async def erase_session(
        self,
        session_id: str,
        *,
        user_id: str,
        reason: str | None = None,
        tenant: str = "default",
        principal: str | None = None,
    ) -> Position:
        """`ChatLog.erase_session`; the look-up in the log and the audit record run in a
        worker thread."""
        event = _session_event(
            session_id, user_id, UserErased(reason=reason), self.producer.sync.info, tenant
        )
        audit = _as(self.audit, principal)
        action, what = AuditAction.SESSION_ERASED, _ERASED_SESSION
        try:
            await self._check_owned(session_id, user_id, tenant)
            position = await self.producer.publish(event)
        except ChatlogError as exc:
            await asyncio.to_thread(_audit_write, audit, action, what, event, error=exc)
            raise
        await asyncio.to_thread(_audit_write, audit, action, what, event, position=position)
        if self.claims is not None:
            await self.claims.release(KeyScope(tenant, user_id), session_id)  # see ChatLog's
        return position

    async def _check_owned(self, session_id: str, user_id: str, tenant: str) -> None:
        """`ChatLog._check_owned`, awaited; a look-up in the log runs in a worker thread."""
        try:
            await self.reader.context(
                session_id, user_id=user_id, tenant=tenant, timeout=self.read_timeout_s
            )
        except Erased:
            raise  # the owner's keys are gone: the log must not be asked either
        except SessionNotFound:
            if self.history is None:
                raise
            await asyncio.to_thread(
                self.history.context,
                session_id,
                user_id=user_id,
                tenant=tenant,
                as_of=datetime.now(UTC),
            )

    async def erase_user(
        self, user_id: str, *, tenant: str = "default", principal: str | None = None
    ) -> Erasure:
        """`ChatLog.erase_user`; the blocking calls run in a worker thread."""
        eraser = _eraser_of(self.eraser)
        audit = _as(self.audit, principal)
        return await asyncio.to_thread(eraser.erase, user_id, tenant=tenant, audit=audit)

    async def export_user(
        self, user_id: str, *, tenant: str = "default", principal: str | None = None
    ) -> dict[str, Any]:
        """`ChatLog.export_user`; the scan runs in a worker thread."""
        audit = _as(self.audit, principal)
        return await asyncio.to_thread(_export, self.exporter, audit, user_id, tenant)

    # -- long-running tasks: as `ChatLog`'s, awaited --------------------------------------

    async def start_task(
        self,
        session_id: str,
        *,
        user_id: str,
        kind: str,
        input: Any = None,
        tenant: str = "default",
        task_id: str | None = None,
    ) -> str:
        """`ChatLog.start_task`."""
        task_id = task_id_of(task_id, new_id())
        payload = TaskStarted(task_id=task_id, kind=kind, input=json_text("input", input))
        event = _session_event(session_id, user_id, payload, self.producer.sync.info, tenant)
        if self.claims is not None:
            await self.claims.claim(KeyScope.of(event), session_id)
        try:
            tasks = await self._tasks_of(session_id, user_id, tenant, task_id, wait=False)
        except SessionNotFound:
            tasks = ()
        if must_publish(tasks, payload):
            self._remember(event, await self.producer.publish(event))
        return task_id

    async def progress(
        self,
        task_id: str,
        *,
        session_id: str,
        user_id: str,
        tenant: str = "default",
        progress: float | None = None,
        note: str | None = None,
    ) -> Position | None:
        """`ChatLog.progress`."""
        payload = TaskProgressed(task_id=task_id, progress=progress, note=note)
        return await self._task_command(session_id, user_id, tenant, payload)

    async def finish(
        self,
        task_id: str,
        *,
        session_id: str,
        user_id: str,
        tenant: str = "default",
        result: Any = None,
    ) -> Position | None:
        """`ChatLog.finish`."""
        payload = TaskFinished(task_id=task_id, result=json_text("result", result))
        return await self._task_command(session_id, user_id, tenant, payload)

    async def fail(
        self, task_id: str, *, session_id: str, user_id: str, error: str, tenant: str = "default"
    ) -> Position | None:
        """`ChatLog.fail`."""
        payload = TaskFailed(task_id=task_id, error=error)
        return await self._task_command(session_id, user_id, tenant, payload)

    async def cancel(
        self,
        task_id: str,
        *,
        session_id: str,
        user_id: str,
        reason: str | None = None,
        tenant: str = "default",
    ) -> Position | None:
        """`ChatLog.cancel`."""
        payload = TaskCancelled(task_id=task_id, reason=reason)
        return await self._task_command(session_id, user_id, tenant, payload)

    async def tasks(
        self,
        user_id: str,
        *,
        session_id: str | None = None,
        tenant: str = "default",
        limit: int = 50,
    ) -> list[TaskInfo]:
        """`ChatLog.tasks`."""
        if session_id is not None:
            tasks = await self._tasks_of(session_id, user_id, tenant, None)
            by_session = [(session_id, tasks)]
        else:
            entries = await self.sessions(user_id, tenant=tenant, limit=limit)
            by_session = [(entry.session_id, entry.tasks) for entry in entries]
        return listed(by_session, now_ms=now_ms(), stall_ms=self.task_stall_ms)

    async def _task_command(
        self, session_id: str, user_id: str, tenant: str, payload: TaskEvent
    ) -> Position | None:
        event = _session_event(session_id, user_id, payload, self.producer.sync.info, tenant)
        tasks = await self._tasks_of(session_id, user_id, tenant, payload.task_id)
        if not must_publish(tasks, payload):
            return None
        position = await self.producer.publish(event)
        self._remember(event, position)
        return position

    async def _tasks_of(
        self, session_id: str, user_id: str, tenant: str, task_id: str | None, *, wait: bool = True
    ) -> tuple[Task, ...]:
        """`ChatLog._tasks_of`, awaited."""
        after = self._task_positions.get((tenant, session_id))
        deadline = time.monotonic() + self.read_timeout_s
        delay = _TASK_POLL_S
        while True:
            context = await self.context(session_id, user_id=user_id, tenant=tenant, after=after)
            tasks = context.tasks
            if not wait or task_id is None or any(t.task_id == task_id for t in tasks):
                return tasks
            if time.monotonic() + delay > deadline:
                return tasks
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _remember(self, event: ConversationEvent, position: Position) -> None:
        remember_position(self._task_positions, event, position)

    async def aclose(self) -> None:
        """Flush pending events and release connections."""
        try:
            await self.producer.aclose()
        finally:
            await self.reader.client.aclose()
            if self.audit is not None:
                await asyncio.to_thread(self.audit.close)
            if self.recaller is not None:
                await self.recaller.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


_TASK_POLL_S = 0.02
_TASK_POSITIONS_KEPT = 10_000


def remember_position(
    positions: dict[tuple[str, str], Position], event: ConversationEvent, position: Position
) -> None:
    """Keep `position` as the session's last task event; the oldest go past a bound (a
    forgotten one only means the next command waits for the task to appear)."""
    key = (event.tenant, event.session_id)
    positions.pop(key, None)
    positions[key] = position
    if len(positions) > _TASK_POSITIONS_KEPT:
        del positions[next(iter(positions))]


def _session_event(
    session_id: str, user_id: str, payload: Payload, producer: ProducerInfo, tenant: str
) -> ConversationEvent:
    return new_event(session_id, user_id=user_id, payload=payload, tenant=tenant, producer=producer)


def _redaction(
    session_id: str,
    message_id: str,
    *,
    user_id: str,
    tenant: str,
    reason: str | None,
    producer: ProducerInfo,
) -> ConversationEvent:
    # Built first, so a bad id is refused before anything is read.
    validate_id(message_id, field="message_id")
    return new_event(
        session_id,
        user_id=user_id,
        payload=MessageRedacted(message_id=message_id, reason=reason),
        tenant=tenant,
        producer=producer,
    )
