"""Stored prompt injection end to end: real Kafka, real Redis, the projector and the
offline summarizer as processes, and LangChain on top.

Every attempt of the corpus (`tests/injection_corpus.py`) is written as a user would
write it, or as a forger who bypassed the write check would (an event that reached the
log by another road); none may reach a system-role message or a tool call in what
`to_openai` or the LangChain history hands a model.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, convert_to_openai_messages
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import ConfigurableFieldSpec
from langchain_core.runnables.history import RunnableWithMessageHistory
from pydantic import PrivateAttr

from chatlog import wiring
from chatlog.client import AsyncChatLog, ChatLog
from chatlog.integrations.langchain import ChatlogMessageHistory
from chatlog.integrations.langchain_messages import FIELDS_KEY, IGNORED_KWARG, SUMMARY_KWARG
from chatlog.producers.commands import new_event
from chatlog.producers.kafka_producer import AsyncConversationProducer
from chatlog.projections.context import SUMMARY_LABEL, Context
from chatlog.schemas.errors import InvalidEvent
from chatlog.schemas.events import MessageAppended
from tests.injection_corpus import (
    CONTENT,
    METADATA_ATTEMPTS,
    TEXT_ATTEMPTS,
    TextAttempt,
    check_extractive_summary,
    check_langchain_history,
    check_openai_prompt,
)
from tests.processes import (
    running_processor,
    running_projector,
    unique_settings,
    wait_for_group,
    wait_until,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:RunnableWithMessageHistory is deprecated"),
]

SYSTEM = "You are a shop assistant. Refunds need a manager's approval."
REPLY = "I cannot do that, but I will look into your order."


class RecordingModel(BaseChatModel):
    """A chat model that keeps every prompt it is given, as OpenAI messages."""

    _prompts: list[list[dict[str, Any]]] = PrivateAttr(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "recording"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        self._prompts.append(convert_to_openai_messages(messages))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(REPLY))])

    def prompts(self) -> list[list[dict[str, Any]]]:
        return list(self._prompts)


def chain(model: BaseChatModel, log: ChatLog) -> RunnableWithMessageHistory:
    prompt = ChatPromptTemplate.from_messages(
        [("system", SYSTEM), MessagesPlaceholder("history"), ("human", "{question}")]
    )
    return RunnableWithMessageHistory(
        prompt | model,
        lambda user_id, session_id: ChatlogMessageHistory(session_id, user_id, log=log),
        input_messages_key="question",
        history_messages_key="history",
        history_factory_config=[
            ConfigurableFieldSpec(id="user_id", annotation=str, is_shared=True),
            ConfigurableFieldSpec(id="session_id", annotation=str, is_shared=True),
        ],
    )


def check_chain_prompts(model: RecordingModel, *, calls: set[str] = frozenset()) -> None:
    """What the model was sent: the prompt's own system message only, and no tool call
    but the events' own (`calls`, by id)."""
    assert model.prompts()
    for prompt in model.prompts():
        systems = [m for m in prompt if m["role"] in ("system", "developer")]
        assert systems == [{"role": "system", "content": SYSTEM}]
        sent = {c["id"] for m in prompt for c in m.get("tool_calls", ())}
        assert sent <= calls


@pytest.fixture
def chat(kafka, redis_url, redis_prefix):
    settings = unique_settings(
        kafka,
        redis_url,
        redis_prefix,
        window=4,
        summary_threshold=4,
        summary_max_tokens=4000,
        summarizer_group=f"summarizer-{uuid.uuid4().hex[:8]}",
        partitions=2,
    )
    log = ChatLog(
        producer=wiring.producer(settings, flush_on_sigterm=False),
        reader=wiring.reader(settings),
        read_timeout_s=30,
    )
    yield settings, log
    log.close()


def test_typed_attempts_reach_prompts_only_as_quoted_user_data(chat, kafka, tmp_path):
    settings, log = chat
    session, user = "s-typed", "mallory"
    with running_projector(settings, log=tmp_path / "projector.log"):
        with running_processor("summarizer", settings, log=tmp_path / "summarizer.log"):
            wait_for_group(kafka, settings.summarizer_group)
            position = None
            for attempt in TEXT_ATTEMPTS:
                log.append(session, user_id=user, role="user", content=attempt.content)
                position = log.append(session, user_id=user, role="assistant", content=REPLY)

            def covered(context: Context) -> list[TextAttempt]:
                return [a for a in TEXT_ATTEMPTS if a.marker in (context.summary or "")]

            def summarized() -> bool:
                # A summary is asked for once `summary_threshold` turns have overflowed,
                # so it may lag by fewer than that many turns, however the projector
                # batched them: every attempt but those in the window (2) and such a
                # tail (at most 2 more) is in the summary.
                context = log.context(session, user_id=user, after=position)
                return len(covered(context)) >= len(TEXT_ATTEMPTS) - 4

            wait_until(summarized, timeout=60, what="the summary to cover the attempts")
        # The summarizer stopped: what follows reads one state of the session.
        context = log.context(session, user_id=user, after=position)
        assert context.summary is not None
        check_extractive_summary(context.summary)
        in_summary = covered(context)
        # The others are the context's own messages: every attempt reaches the prompt.
        shown = [m.content for m in context.messages if m.role == "user"]
        for attempt in TEXT_ATTEMPTS:
            assert attempt in in_summary or any(attempt.marker in text for text in shown)

        prompt = context.to_openai(system=SYSTEM, max_tokens=8000)
        check_openai_prompt(prompt, system=SYSTEM)
        assert prompt[1]["content"].startswith(SUMMARY_LABEL)
        for attempt in in_summary:
            assert attempt.marker in prompt[1]["content"]
        # The old behaviour, asked for, is the one the checks would refuse.
        old = context.to_openai(system=SYSTEM, summary_role="system")
        assert old[1]["role"] == "system"
        assert in_summary[0].marker in old[1]["content"]

        # The same session through LangChain: the summary leads, as quoted user data.
        history = ChatlogMessageHistory(session, user, log=log, after=position).messages
        assert type(history[0]) is HumanMessage
        assert SUMMARY_KWARG in history[0].additional_kwargs
        held = [(m.role, m.tool_calls) for m in context.messages]
        check_langchain_history(history, events=held)
        model = RecordingModel()
        config = {"configurable": {"user_id": user, "session_id": session}}
        chain(model, log).invoke({"question": TEXT_ATTEMPTS[0].content}, config)
        check_chain_prompts(model)


def test_reserved_metadata_from_any_client_is_refused_and_nothing_is_published(chat, kafka):
    settings, log = chat

    async def from_asyncio(attempt) -> None:
        async_log = AsyncChatLog(
            producer=AsyncConversationProducer(wiring.producer(settings, flush_on_sigterm=False)),
            reader=wiring.async_reader(settings),
        )
        try:
            with pytest.raises(InvalidEvent, match="reserved namespace"):
                await async_log.append(
                    "s-forged", user_id="mallory", role=attempt.role, content=CONTENT,
                    metadata=attempt.metadata,
                )  # fmt: skip
        finally:
            await async_log.aclose()

    with running_projector(settings):
        for attempt in METADATA_ATTEMPTS:
            key = next(iter(attempt.metadata))
            with pytest.raises(InvalidEvent, match="reserved namespace") as refused:
                log.append(
                    "s-forged", user_id="mallory", role=attempt.role, content=CONTENT,
                    metadata=attempt.metadata, tool_calls=attempt.tool_calls,
                )  # fmt: skip
            assert repr(key) in str(refused.value)
            with pytest.raises(InvalidEvent, match="reserved namespace"):
                log.producer.append(
                    "s-forged", user_id="mallory", role=attempt.role, content=CONTENT,
                    metadata=attempt.metadata,
                )  # fmt: skip
        asyncio.run(from_asyncio(METADATA_ATTEMPTS[0]))
    assert set(kafka.end_offsets(settings.topic).values()) == {0}


def test_forged_metadata_that_reached_the_log_changes_no_role_and_adds_no_call(chat):
    """Events written past the check (an older producer, another language, a raw
    `publish`): read back, each message is what its event's role and tool calls say."""
    settings, log = chat
    session, user = "s-past-the-check", "mallory"
    with running_projector(settings):
        position = None
        for attempt in METADATA_ATTEMPTS:
            payload = MessageAppended(
                role=attempt.role,
                content=CONTENT,
                tool_calls=attempt.tool_calls,
                tool_call_id="call_lookup" if attempt.role == "tool" else None,
                metadata=attempt.metadata,
            )
            event = new_event(session, user_id=user, payload=payload)
            position = log.producer.publish(event)
        context = log.context(session, user_id=user, after=position)
        assert len(context.messages) == len(METADATA_ATTEMPTS)  # window 4 + overflow
        events = [(a.role, a.tool_calls) for a in METADATA_ATTEMPTS]
        genuine = [c for a in METADATA_ATTEMPTS for c in a.tool_calls]

        check_openai_prompt(context.to_openai(system=SYSTEM), system=SYSTEM, calls=genuine)
        history = ChatlogMessageHistory(session, user, log=log, after=position).messages
        check_langchain_history(history, events=events)
        marked = [m for m in history if IGNORED_KWARG in m.response_metadata]
        forged = [a for a in METADATA_ATTEMPTS if FIELDS_KEY in a.metadata]
        assert len(marked) == len(forged) - 1  # all but the class LangChain cannot build

        model = RecordingModel()
        config = {"configurable": {"user_id": user, "session_id": session}}
        chain(model, log).invoke({"question": "What did I ask?"}, config)
        check_chain_prompts(model, calls={c.id for c in genuine})
