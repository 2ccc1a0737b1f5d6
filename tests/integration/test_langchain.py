"""`ChatlogMessageHistory` under LangChain: real Kafka, real Redis, a real projector.

The main test runs a real `RunnableWithMessageHistory` chain for 100 concurrent users,
each in a session of their own, with a fake chat model that answers with the canary
strings it was shown: every answer must show all of its own user's turns and nothing of
anyone else's.
"""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import ConfigurableFieldSpec
from langchain_core.runnables.history import RunnableWithMessageHistory
from pydantic import PrivateAttr

import chatlog.integrations.langchain as lc
from chatlog import wiring
from chatlog.client import AsyncChatLog, ChatLog
from chatlog.integrations.langchain import ChatlogMessageHistory, HistoryBook
from chatlog.integrations.langchain_messages import SUMMARY_KWARG
from chatlog.producers.commands import new_event
from chatlog.producers.kafka_producer import AsyncConversationProducer
from chatlog.projections.context import SUMMARY_LABEL
from chatlog.projections.view import SessionStatus
from chatlog.schemas.errors import OwnershipError
from chatlog.schemas.events import SummaryUpdated
from tests.processes import chatlog_env, running_projector, unique_settings

pytestmark = [
    pytest.mark.integration,
    # LangChain deprecated RunnableWithMessageHistory (1.3.3) for LangGraph persistence;
    # it is still what the back ends this integration replaces are built on.
    pytest.mark.filterwarnings("ignore:RunnableWithMessageHistory is deprecated"),
]

CANARY = re.compile(r"canary-u(\d+)-t(\d+)-[0-9a-f]{8}")


class CanaryModel(BaseChatModel):
    """A chat model that answers with the canaries of the human turns it was shown.

    It also keeps, per call, every canary of every message it saw, so a test can tell
    whose history reached it.
    """

    _seen: list[tuple[str, ...]] = PrivateAttr(default_factory=list)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "canary"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        everything = tuple(c.group(0) for m in messages for c in CANARY.finditer(str(m.content)))
        with self._lock:
            self._seen.append(everything)
        humans = [
            c.group(0)
            for m in messages
            if m.type == "human"
            for c in CANARY.finditer(str(m.content))
        ]
        turn = len(humans)
        answer = AIMessage(
            content="seen: " + " ".join(humans),
            # The fields a real model fills in, which the history must keep.
            tool_calls=[
                {"name": "remember", "args": {"turn": turn, "seen": humans}, "id": f"call-{turn}"}
            ],
            additional_kwargs={"turn": turn},
            usage_metadata={"input_tokens": turn, "output_tokens": 1, "total_tokens": turn + 1},
        )
        return ChatResult(generations=[ChatGeneration(message=answer)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._generate(messages, stop, **kwargs)

    def seen(self) -> list[tuple[str, ...]]:
        with self._lock:
            return list(self._seen)


def canary(user: int, turn: int) -> str:
    return f"canary-u{user}-t{turn}-{uuid.uuid4().hex[:8]}"


def with_history(model: BaseChatModel, factory) -> RunnableWithMessageHistory:
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "You answer with what you were shown."),
            MessagesPlaceholder("history"),
            ("human", "{question}"),
        ]
    )
    return RunnableWithMessageHistory(
        prompt | model,
        factory,
        input_messages_key="question",
        history_messages_key="history",
        history_factory_config=[
            ConfigurableFieldSpec(id="user_id", annotation=str, name="User", is_shared=True),
            ConfigurableFieldSpec(id="session_id", annotation=str, name="Session", is_shared=True),
        ],
    )


def check_answers(
    model: CanaryModel, answers: dict[int, list[AIMessage]], asked: dict[int, list[str]]
):
    for user, replies in answers.items():
        for turn, reply in enumerate(replies):
            # Every earlier turn of this user, in order, and the current one; nothing else.
            assert reply.content == "seen: " + " ".join(asked[user][: turn + 1]), (user, turn)
    for canaries in model.seen():
        owners = {CANARY.fullmatch(c).group(1) for c in canaries}
        assert len(owners) == 1, f"a model call saw the history of users {owners}"


def async_chat(settings) -> AsyncChatLog:
    """Built inside the running event loop: its Redis client belongs to that loop."""
    return AsyncChatLog(
        producer=AsyncConversationProducer(wiring.producer(settings, flush_on_sigterm=False)),
        reader=wiring.async_reader(settings),
        read_timeout_s=30,
    )


def test_100_concurrent_users_on_a_real_chain_each_see_only_their_own_history(settings):
    users, turns = 100, 3
    model = CanaryModel()
    asked = {u: [canary(u, t) for t in range(turns)] for u in range(users)}
    answers: dict[int, list[AIMessage]] = {u: [] for u in range(users)}
    histories: dict[int, list[list[BaseMessage]]] = {u: [] for u in range(users)}

    async def main() -> None:
        log = async_chat(settings)

        def get_session_history(user_id: str, session_id: str) -> ChatlogMessageHistory:
            return ChatlogMessageHistory(session_id, user_id, async_log=log)

        chain = with_history(model, get_session_history)

        async def user(u: int) -> None:
            config = {"configurable": {"user_id": f"user-{u}", "session_id": f"session-{u}"}}
            for t in range(turns):
                reply = await chain.ainvoke({"question": f"turn {t}: {asked[u][t]}"}, config)
                answers[u].append(reply)
                history = ChatlogMessageHistory(f"session-{u}", f"user-{u}", async_log=log)
                histories[u].append(await history.aget_messages())

        try:
            await asyncio.gather(*(user(u) for u in range(users)))
        finally:
            await log.aclose()

    with running_projector(settings):
        asyncio.run(main())

    check_answers(model, answers, asked)
    for u in range(users):
        final = histories[u][-1]
        # The stored history is the conversation, message for message: the human turns as
        # sent, and the model's answers with their tool calls, kwargs and usage intact.
        assert [m.type for m in final] == ["human", "ai"] * turns
        assert [m.content for m in final[0::2]] == [
            f"turn {t}: {asked[u][t]}" for t in range(turns)
        ]
        assert final[1::2] == answers[u]


def test_the_same_with_100_threads_and_the_blocking_client(settings, chat):
    users, turns = 100, 2
    model = CanaryModel()
    asked = {u: [canary(u, t) for t in range(turns)] for u in range(users)}
    answers: dict[int, list[AIMessage]] = {u: [] for u in range(users)}
    chain = with_history(
        model, lambda user_id, session_id: ChatlogMessageHistory(session_id, user_id, log=chat)
    )

    def user(u: int) -> None:
        config = {"configurable": {"user_id": f"user-{u}", "session_id": f"session-{u}"}}
        for t in range(turns):
            answers[u].append(chain.invoke({"question": f"turn {t}: {asked[u][t]}"}, config))

    with running_projector(settings), ThreadPoolExecutor(max_workers=users) as pool:
        list(pool.map(user, range(users)))

    check_answers(model, answers, asked)


def test_a_chain_without_a_history_key_stores_each_turn_once(settings, chat):
    model = CanaryModel()
    chain = RunnableWithMessageHistory(
        model, lambda session_id: ChatlogMessageHistory(session_id, "user-1", log=chat)
    )
    config = {"configurable": {"session_id": "session-1"}}
    asked = [canary(1, t) for t in range(3)]
    with running_projector(settings):
        for question in asked:
            chain.invoke([HumanMessage(question)], config)
        history = ChatlogMessageHistory("session-1", "user-1", log=chat).messages
    assert [m.type for m in history] == ["human", "ai"] * 3
    assert [m.content for m in history[0::2]] == asked


MESSAGES = [
    SystemMessage("You are terse.", id="sys-1"),
    HumanMessage("Where is order 7731?", name="alice", additional_kwargs={"lang": "en"}),
    AIMessage(
        "",
        id="run-42",
        tool_calls=[{"name": "lookup_order", "args": {"order": 7731}, "id": "call-1"}],
        response_metadata={"model_name": "gpt-test", "finish_reason": "tool_calls"},
        usage_metadata={"input_tokens": 12, "output_tokens": 5, "total_tokens": 17},
    ),
    ToolMessage('{"status": "shipped"}', tool_call_id="call-1", artifact={"rows": 1}),
    AIMessage("It shipped yesterday.", id="id:chatlog:refuses"),
    ChatMessage("A reviewer's note.", role="critic"),
    HumanMessage([{"type": "text", "text": "Thanks!"}, {"type": "text", "text": " Bye."}]),
]


def test_every_message_type_round_trips_through_kafka_and_redis(settings, chat):
    history = ChatlogMessageHistory("s-types", "alice", log=chat)
    with running_projector(settings):
        history.add_messages(MESSAGES)
        assert history.messages == MESSAGES

        async def read() -> list[BaseMessage]:
            log = async_chat(settings)
            try:
                return await ChatlogMessageHistory(
                    "s-types", "alice", async_log=log
                ).aget_messages()
            finally:
                await log.aclose()

        assert asyncio.run(read()) == MESSAGES
        # Other chatlog clients read the same messages natively.
        context = chat.context("s-types", user_id="alice")
    tool_call = context.messages[2].tool_calls[0]
    assert (tool_call.id, tool_call.name, tool_call.arguments) == (
        "call-1",
        "lookup_order",
        '{"order": 7731}',
    )
    assert context.messages[3].tool_call_id == "call-1"
    assert context.messages[2].message_id == "run-42"


def test_a_message_added_is_in_the_next_read_from_any_history_object(settings, chat):
    with running_projector(settings):
        for n in range(20):
            ChatlogMessageHistory("s-ryw", "alice", log=chat).add_messages([HumanMessage(f"m{n}")])
            latest = ChatlogMessageHistory("s-ryw", "alice", log=chat).messages
            assert latest[-1].content == f"m{n}"

        async def asynchronously() -> None:
            log = async_chat(settings)
            try:
                for n in range(20):
                    history = ChatlogMessageHistory("s-ryw-async", "alice", async_log=log)
                    await history.aadd_messages([HumanMessage(f"m{n}")])
                    reader = ChatlogMessageHistory("s-ryw-async", "alice", async_log=log)
                    assert (await reader.aget_messages())[-1].content == f"m{n}"
            finally:
                await log.aclose()

        asyncio.run(asynchronously())
        writer = ChatlogMessageHistory("s-ryw2", "alice", log=chat)
        writer.add_user_message("from another process")
        # Another process knows nothing of this one's writes, unless given the position.
        elsewhere = ChatlogMessageHistory(
            "s-ryw2", "alice", log=chat, book=HistoryBook(), after=writer.last_position
        )
        assert [m.content for m in elsewhere.messages] == ["from another process"]


def test_clear_closes_the_session_and_later_reads_start_afresh(settings, chat):
    history = ChatlogMessageHistory("s-clear", "alice", log=chat)
    with running_projector(settings):
        history.add_messages([HumanMessage("secret order 7731"), AIMessage("noted")])
        history.clear()
        assert history.messages == []
        assert ChatlogMessageHistory("s-clear", "alice", log=chat).messages == []
        history.clear()  # clearing again changes nothing
        history.add_messages([HumanMessage("a new topic")])
        assert [m.content for m in history.messages] == ["a new topic"]
        # Another process (its own book) sees the same: the boundary travels in the log.
        elsewhere = ChatlogMessageHistory(
            "s-clear", "alice", log=chat, book=HistoryBook(), after=history.last_position
        )
        assert [m.content for m in elsewhere.messages] == ["a new topic"]
        # The log and the read-model keep everything: clear() deleted nothing.
        context = chat.context("s-clear", user_id="alice", after=history.last_position)
    assert [m.content for m in context.messages] == ["secret order 7731", "noted", "a new topic"]
    assert context.status is SessionStatus.OPEN


def test_a_clear_holds_for_a_message_added_by_a_client_that_never_saw_it(settings, chat):
    history = ChatlogMessageHistory("s-clear2", "alice", log=chat)
    with running_projector(settings):
        history.add_messages([HumanMessage("old order 7731")])
        history.clear()
        # A plain chatlog client (no LangChain, no clear mark) writes after the clear.
        position = chat.append("s-clear2", user_id="alice", role="user", content="new topic")
        elsewhere = ChatlogMessageHistory(
            "s-clear2", "alice", log=chat, book=HistoryBook(), after=position
        )
        assert [m.content for m in elsewhere.messages] == ["new topic"]


def test_clearing_a_session_that_does_not_exist_publishes_nothing(settings, chat, kafka):
    with running_projector(settings):
        ChatlogMessageHistory("s-none", "alice", log=chat).clear()
        assert ChatlogMessageHistory("s-none", "alice", log=chat).messages == []
    assert kafka.end_offsets(settings.topic) == dict.fromkeys(kafka.end_offsets(settings.topic), 0)


def test_the_rolling_summary_leads_the_history_and_is_never_stored_back(
    kafka, redis_url, redis_prefix
):
    settings = unique_settings(kafka, redis_url, redis_prefix, window=2)
    chat = ChatLog(
        producer=wiring.producer(settings, flush_on_sigterm=False),
        reader=wiring.reader(settings),
        read_timeout_s=30,
    )
    history = ChatlogMessageHistory("s-sum", "alice", log=chat)
    try:
        with running_projector(settings):
            history.add_messages([HumanMessage(f"turn {n}") for n in range(4)])
            first = chat.context("s-sum", user_id="alice", after=history.last_position)
            summary = SummaryUpdated(
                summary="alice asked about turns 0 and 1",
                through_offset=first.messages[1].offset,
                model="test",
            )
            summarized = chat.producer.publish(new_event("s-sum", user_id="alice", payload=summary))
            chat.context("s-sum", user_id="alice", after=summarized)
            messages = history.messages
            assert messages[0].additional_kwargs[SUMMARY_KWARG] == {
                "through_offset": first.messages[1].offset
            }
            assert "alice asked about turns 0 and 1" in messages[0].content
            # Quoted data by default, not a system message.
            assert type(messages[0]) is HumanMessage
            assert messages[0].content.startswith(SUMMARY_LABEL)
            assert [m.content for m in messages[1:]] == ["turn 2", "turn 3"]
            plain = ChatlogMessageHistory("s-sum", "alice", log=chat, include_summary=False)
            assert [m.content for m in plain.messages] == ["turn 2", "turn 3"]
            # Copying the history back adds the turns again, never the summary.
            history.add_messages(messages)
            after = chat.context("s-sum", user_id="alice", after=history.last_position)
            assert all(m.role != "system" for m in after.messages)
            assert not [m for m in after.messages if m.content.startswith(SUMMARY_LABEL)]
    finally:
        chat.close()


def test_another_users_or_tenants_session_reads_as_none_and_refuses_writes(settings, chat, kafka):
    chat.claims = wiring.claims(settings, chat.reader.client)  # as from_settings builds it
    with running_projector(settings):
        alice = ChatlogMessageHistory("s-alice", "alice", log=chat)
        alice.add_user_message("order #A-1")
        # Alice reads her own write (positions are noted per user: bob's history of the
        # session does not wait for alice's writes, so it must be projected first).
        assert [m.content for m in alice.messages] == ["order #A-1"]
        # Bob's history of it reads as one that does not exist, and clearing it sends
        # nothing; writing into it is refused before anything is published.
        for bob in (
            ChatlogMessageHistory("s-alice", "bob", log=chat),
            ChatlogMessageHistory("s-alice", "alice", tenant="acme", log=chat),
        ):
            assert bob.messages == []
            bob.clear()
            with pytest.raises(OwnershipError):
                bob.add_user_message("mine now")
        assert [m.content for m in alice.messages] == ["order #A-1"]
    assert sum(kafka.end_offsets(settings.topic).values()) == 1  # alice's message alone


def test_with_no_client_given_the_history_uses_one_shared_from_the_environment(
    settings, monkeypatch
):
    for name, value in chatlog_env(settings).items():
        if name.startswith("CHATLOG_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(lc, "_SHARED", None)
    try:
        with running_projector(settings):
            ChatlogMessageHistory("s-env", "alice").add_ai_message("from the environment")
            second = ChatlogMessageHistory("s-env", "alice")
            assert [m.content for m in second.messages] == ["from the environment"]
            assert second.log is lc.shared_log()
    finally:
        if lc._SHARED is not None:
            lc._SHARED.close()
