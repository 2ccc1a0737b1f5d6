"""Personal data redacted before storage: not in a Kafka record, a Redis value, a dead
letter or an LLM request, whatever the field; tokenized data revealed only to its owner,
and never again once the owner is erased.

Unlike `test_sealed_at_rest.py`, which proves that what is stored is sealed, these tests
open what is stored, with the owners' keys, and find placeholders: the original never
left the producer (or, tokenized, left it only sealed under its owner's key).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid

import pytest
import redis

from chatlog import wiring
from chatlog.client import AsyncChatLog, ChatLog
from chatlog.producers.commands import append_message
from chatlog.producers.kafka_producer import AsyncConversationProducer, ConversationProducer
from chatlog.projections.opening import ERASED
from chatlog.schemas.errors import ConfigError, Erased, InvalidInput, SessionNotFound
from chatlog.schemas.events import ConversationEvent, MessageAppended, SummaryUpdated
from chatlog.schemas.position import Position
from chatlog.schemas.redaction import MAC_PURPOSE, Mode, RedactionPolicy
from chatlog.schemas.sealing import KeyScope
from tests.llm_stub import LlmStub
from tests.processes import (
    chatlog_env,
    full_chatlog,
    log_events,
    running_processor,
    running_projector,
    unique_settings,
    wait_for_group,
    wait_until,
)

pytestmark = pytest.mark.integration

CARD = "4111 1111 1111 1111"
CARD_DIGITS = "5500000000000004"
EMAIL = "paula.rossi@example.com"
API_KEY = "sk-proj-Zq8vN2xL5tR1wY7uK3mB9cD4"
ORIGINALS = (CARD, CARD_DIGITS, EMAIL, API_KEY)
SESSION, USER = "s-pii", "paula"


def _leaks(data: bytes | str) -> list[str]:
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    return [original for original in ORIGINALS if original in text]


def _redis_values(client: redis.Redis, prefix: str) -> bytes:
    """Every value Redis holds under `prefix`, raw, whatever the key's type."""
    values = []
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            values.append(client.get(key) or b"")
        elif kind == "hash":
            values.extend(k + b"=" + v for k, v in client.hgetall(key).items())
        elif kind == "list":
            values.extend(client.lrange(key, 0, -1))
        elif kind == "zset":
            values.extend(client.zrange(key, 0, -1))
    assert values, f"nothing under {prefix}: the search would prove nothing"
    return b"\n".join(values)


def _publish_the_conversation(chat: ChatLog) -> list[Position]:
    """Seven messages; a summary may follow the fourth (window 2, threshold 2)."""
    chat.start_session(SESSION, user_id=USER, title=f"Refund to {EMAIL}")
    positions = [
        chat.append(SESSION, user_id=USER, role="user", content=f"My card is {CARD}, mail {EMAIL}")
    ]
    arguments = json.dumps({"card": int(CARD_DIGITS), "email": EMAIL})
    positions.append(
        chat.append(
            SESSION,
            user_id=USER,
            role="assistant",
            content="",
            tool_calls=[{"id": "call_1", "name": "refund", "arguments": arguments}],
        )
    )
    for content, role, fields in [
        ("refunded", "tool", {"tool_call_id": "call_1"}),
        # All of it personal: it still appends, as its placeholder.
        (API_KEY, "user", {"metadata": {"contact": EMAIL}}),
        ("Anything else?", "assistant", {}),
        ("No, thanks.", "user", {}),
    ]:
        positions.append(chat.append(SESSION, user_id=USER, role=role, content=content, **fields))
    return positions


def test_tokenized_data_is_nowhere_but_sealed_and_only_its_owner_reveals_it(
    kafka, redis_url, redis_prefix, tmp_path
):
    with LlmStub() as stub:
        settings = unique_settings(
            kafka,
            redis_url,
            redis_prefix,
            pii_mode="tokenize",
            window=2,
            summary_threshold=2,
            summarizer_group=f"summarizer-{uuid.uuid4().hex[:8]}",
            llm_base_url=stub.base_url,
            llm_model="stub-model",
            partitions=3,
        )
        chat = full_chatlog(settings)
        with (
            running_projector(settings),
            running_processor("summarizer", settings, log=tmp_path / "summarizer.log"),
        ):
            wait_for_group(kafka, settings.summarizer_group)
            positions = _publish_the_conversation(chat)
            last = positions[-1]
            # Someone else writing into the session: the projector dead-letters it.
            with wiring.producer(settings, flush_on_sigterm=False) as mallory:
                mallory.append(SESSION, user_id="mallory", role="user", content=f"card {CARD}")
            chat.context(SESSION, user_id=USER, after=last)
            wait_until(
                lambda: (
                    any(
                        isinstance(e.payload, SummaryUpdated)
                        for _, e in log_events(kafka, settings)
                    )
                    and bool(kafka.consume_all(settings.dlq_topic))
                ),
                timeout=60,
                what="a summary of the evicted turns and the dead letter",
            )
        requests = list(stub.requests)

    # The LLM saw placeholders, never an original.
    assert requests
    assert _leaks(json.dumps(requests)) == []
    assert "[CARD#1]" in json.dumps(requests)

    # Raw records of the events and dead-letter topics, and every value in Redis.
    raw = [m.value() for m in kafka.consume_all(settings.topic)]
    dead = [m.value() for m in kafka.consume_all(settings.dlq_topic)]
    assert [_leaks(v) for v in raw + dead if _leaks(v)] == []
    assert _leaks(_redis_values(wiring.redis_client(settings), settings.redis_prefix)) == []

    # Opened with the owners' keys: placeholders, and a record of each redaction.
    events = [e for _, e in log_events(kafka, settings)]
    assert _leaks(" ".join(e.payload.model_dump_json() for e in events)) == []
    first = next(e for e in events if isinstance(e.payload, MessageAppended))
    assert first.payload.content == "My card is [CARD#1], mail [EMAIL#1]"
    # MACed under the owner's own data key (the one that sealed the event), not a key
    # every user shares: a card typed by two users links neither.
    owner_key = chat.producer.keyring.for_writing(KeyScope.of(first))
    assert [(r.field, r.kind, r.mac_key_id, r.mac) for r in first.redactions] == [
        ("content", "CARD", owner_key.key_id, owner_key.mac(MAC_PURPOSE, CARD.encode()).digest),
        (
            "content",
            "EMAIL",
            owner_key.key_id,
            owner_key.mac(MAC_PURPOSE, EMAIL.encode()).digest,
        ),
    ]
    assert wiring.key_provider(settings).mac(MAC_PURPOSE, CARD.encode()).digest != (
        first.redactions[0].mac
    )
    codec, opener = wiring.codec(settings), wiring.opener(settings)
    [letter] = opener.open_batch([codec.decode(dead[0])])
    assert isinstance(letter, ConversationEvent)
    assert letter.user_id == "mallory"
    assert letter.payload.content == "card [CARD#1]"

    # The owner reads placeholders, and the originals when asking to reveal them.
    hidden = chat.context(SESSION, user_id=USER)
    shown = chat.context(SESSION, user_id=USER, reveal=True)
    assert hidden.title == "Refund to [EMAIL#1]"
    assert shown.title == f"Refund to {EMAIL}"
    assert [m.content for m in hidden.window] == ["Anything else?", "No, thanks."]
    assert _leaks(str(hidden.to_openai())) == []
    # As of the fourth message: no summary can have covered a turn yet.
    fourth = positions[3]
    as_of = chat.context(SESSION, user_id=USER, as_of=fourth, reveal=True)
    assert [m.content for m in as_of.messages][:2] == [f"My card is {CARD}, mail {EMAIL}", ""]
    assert json.loads(as_of.messages[1].tool_calls[0].arguments) == {
        "card": CARD_DIGITS,
        "email": EMAIL,
    }
    assert as_of.messages[3].content == API_KEY
    assert as_of.messages[3].metadata == {"contact": EMAIL}
    assert _leaks(str(chat.context(SESSION, user_id=USER, as_of=fourth).messages)) == []
    # The read is the owner's: another user reveals nothing, with or without asking.
    with pytest.raises(SessionNotFound, match=f"^no session {SESSION} of user mallory"):
        chat.context(SESSION, user_id="mallory", reveal=True)

    async def read_async() -> str | None:
        reader = AsyncChatLog(
            producer=AsyncConversationProducer(chat.producer),
            reader=wiring.async_reader(settings),
        )
        try:
            return (await reader.context(SESSION, user_id=USER, reveal=True)).title
        finally:
            await reader.reader.client.aclose()

    assert asyncio.run(read_async()) == f"Refund to {EMAIL}"

    # The owner's export is their own data: the tokenized originals are back in it.
    [exported] = chat.export_user(USER)["sessions"]
    assert exported["title"] == f"Refund to {EMAIL}"
    assert exported["messages"][0]["content"] == f"My card is {CARD}, mail {EMAIL}"

    # Erased: the key that sealed the originals is gone, and nothing reveals them.
    chat.erase_user(USER)
    with pytest.raises(Erased):
        chat.context(SESSION, user_id=USER, reveal=True)
    with pytest.raises(Erased):
        chat.context(SESSION, user_id=USER, as_of=fourth, reveal=True)
    owned = [e for e in (codec.decode(v) for v in raw) if e.user_id == USER]
    assert all(o is ERASED for o in opener.open_batch(owned))
    chat.close()


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("off", f"{EMAIL} {CARD} {API_KEY}"),
        ("redact", "[EMAIL] [CARD] [SECRET]"),
        ("mask", "[EMAIL p•••@example.com] [CARD ••••1111] [SECRET]"),
    ],
)
def test_each_mode_is_what_the_log_holds(kafka, redis_url, redis_prefix, mode, expected):
    settings = unique_settings(kafka, redis_url, redis_prefix, pii_mode=mode)
    with wiring.producer(settings, flush_on_sigterm=False) as producer:
        # Content that is all personal data still appends, as its placeholders.
        producer.append(SESSION, user_id=USER, role="user", content=f"{EMAIL} {CARD} {API_KEY}")
    [(_, event)] = log_events(kafka, settings)
    assert isinstance(event.payload, MessageAppended)
    assert event.payload.content == expected
    assert [r.kind for r in event.redactions] == (
        [] if mode == "off" else ["EMAIL", "CARD", "SECRET"]
    )
    assert event.tokens == {}


def test_tokenize_without_sealing_is_refused_and_publishes_nothing(kafka, redis_url, redis_prefix):
    settings = unique_settings(kafka, redis_url, redis_prefix)
    with ConversationProducer(bootstrap_servers=kafka.bootstrap, topic=settings.topic) as bare:
        with pytest.raises(
            ConfigError, match="CHATLOG_PII_MODE=tokenize keeps each original sealed"
        ):
            bare.redact_with(RedactionPolicy(mode=Mode.TOKENIZE))
        with pytest.raises(ConfigError, match="CHATLOG_PII_MODE=redact records a keyed HMAC"):
            bare.redact_with(RedactionPolicy(mode=Mode.REDACT))
        bare.redact_with(RedactionPolicy(mode=Mode.OFF))
        # An event that carries originals can never go out clear.
        event = append_message(SESSION, user_id=USER, role="user", content="[EMAIL#1]")
        with pytest.raises(InvalidInput, match="tokenized originals but is not sealed"):
            bare.publish(event.model_copy(update={"tokens": {"EMAIL#1": EMAIL}}))
    assert kafka.consume_all(settings.topic) == []


@pytest.mark.parametrize(
    ("variable", "value"),
    [("CHATLOG_PII_MODE", "scrub"), ("CHATLOG_PII_PATTERNS", "ORDER=#BW-(\\d")],
)
def test_the_cli_refuses_bad_pii_settings_in_one_line_naming_them(
    kafka, redis_url, redis_prefix, variable, value
):
    settings = unique_settings(kafka, redis_url, redis_prefix)
    env = chatlog_env(settings) | {variable: value}
    done = subprocess.run(
        [sys.executable, "-m", "chatlog.cli", "publish", SESSION, "--user", USER, "--role",
         "user", "--content", EMAIL],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert variable in lines[0]
    assert kafka.consume_all(settings.topic) == []
