"""`OpenAIEmbedder` behind `ResilientEmbedder`, with the real openai client, against the
local stub server's ``/v1/embeddings``: batches, retries, timeouts, the circuit breaker,
the checks of the answer, and secrets kept out of errors."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from chatlog import wiring
from chatlog.processors.embeddings import ResilientEmbedder
from chatlog.processors.openai_embeddings import OpenAIEmbedder
from chatlog.processors.resilience import BreakerState, CircuitBreaker, RetryPolicy
from chatlog.schemas.errors import (
    ConfigError,
    EmbedderUnavailable,
    EmbeddingError,
    EmbeddingTimeout,
    RetryableEmbeddingError,
)
from chatlog.settings import Settings
from tests.llm_stub import LlmStub, empty, malformed, ok, slow, status, stub_vector

pytestmark = pytest.mark.integration

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=1.0)
TEXTS = ["My order #A7-1042 never came", "I use a Pixel 7 Pro", "Call me after 6 pm"]


@pytest.fixture
def stub() -> Iterator[LlmStub]:
    with LlmStub(embedding_dimension=8) as server:
        yield server


def embedder(
    stub: LlmStub,
    *,
    dimension: int = 8,
    batch_size: int = 64,
    timeout: float = 2.0,
    retry: RetryPolicy = FAST_RETRY,
    breaker: CircuitBreaker | None = None,
    api_key: str = "test-key",
    base_url: str | None = None,
    send_dimension: bool = False,
) -> ResilientEmbedder:
    model = OpenAIEmbedder(
        base_url=base_url or stub.base_url,
        api_key=api_key,
        model="stub-embed",
        dimension=dimension,
        timeout=timeout,
        send_dimension=send_dimension,
    )
    return ResilientEmbedder(model, batch_size=batch_size, retry=retry, breaker=breaker)


def test_one_vector_per_text_in_order_with_the_tokens_counted(stub):
    embeds = embedder(stub)
    try:
        vectors = embeds.embed(TEXTS)
    finally:
        embeds.close()
    # The stub lists its answer last first: the order is the answer's `index`.
    assert vectors == [stub_vector(text, 8) for text in TEXTS]
    body = stub.requests[0]
    assert body["model"] == "stub-embed"
    assert body["input"] == TEXTS
    assert body["encoding_format"] == "float"
    assert "dimensions" not in body
    assert stub.headers[0]["authorization"] == "Bearer test-key"
    assert embeds.stats.tokens == sum(len(t) for t in TEXTS) // 4
    assert (embeds.stats.batches, embeds.stats.texts) == (1, 3)


def test_texts_go_in_batches_of_at_most_batch_size(stub):
    texts = [f"turn {n}: the router blinks orange again" for n in range(150)]
    embeds = embedder(stub, batch_size=64)
    try:
        vectors = embeds.embed(texts)
    finally:
        embeds.close()
    assert [len(r["input"]) for r in stub.requests] == [64, 64, 22]
    assert vectors == [stub_vector(t, 8) for t in texts]


def test_the_async_path_batches_and_answers_the_same(stub):
    texts = [f"turn {n}" for n in range(5)]

    async def run() -> list[list[float]]:
        embeds = embedder(stub, batch_size=2)
        try:
            return await embeds.aembed(texts)
        finally:
            await embeds.aclose()

    assert asyncio.run(run()) == [stub_vector(t, 8) for t in texts]
    assert [len(r["input"]) for r in stub.requests] == [2, 2, 1]


def test_the_dimension_is_sent_only_when_asked_for(stub):
    embeds = embedder(stub, dimension=16, send_dimension=True)
    try:
        vectors = embeds.embed(["hello"])
    finally:
        embeds.close()
    assert stub.requests[0]["dimensions"] == 16
    assert len(vectors[0]) == 16


def test_a_500_then_a_429_are_retried_and_only_the_failed_batch_is_repeated(stub):
    stub.script(ok(), status(500), status(429, retry_after=0.05), ok())
    embeds = embedder(stub, batch_size=2)
    try:
        vectors = embeds.embed(TEXTS)
    finally:
        embeds.close()
    assert len(vectors) == 3
    assert [r["input"] for r in stub.requests] == [TEXTS[:2], TEXTS[2:], TEXTS[2:], TEXTS[2:]]
    assert embeds.breaker.state(0) is BreakerState.CLOSED


def test_a_slow_endpoint_times_out_and_the_retry_gets_the_answer(stub):
    stub.script(slow(5.0), ok())
    embeds = embedder(stub, timeout=0.3)
    try:
        vectors = embeds.embed(TEXTS[:1])
    finally:
        embeds.close()
    assert len(vectors) == 1
    assert len(stub.requests) == 2


def test_a_timeout_on_every_attempt_is_an_embedding_timeout(stub):
    stub.script(slow(5.0), slow(5.0))
    embeds = embedder(stub, timeout=0.2, retry=RetryPolicy(max_attempts=2, base_delay=0.01))
    try:
        with pytest.raises(EmbeddingTimeout, match=r"did not answer within 0\.2 s"):
            embeds.embed(TEXTS[:1])
    finally:
        embeds.close()
    assert embeds.stats.failed == 1


def test_a_vector_of_another_size_than_the_setting_is_a_config_error(stub):
    embeds = embedder(stub, dimension=16)  # the stub answers 8 numbers
    try:
        with pytest.raises(ConfigError, match="CHATLOG_EMBEDDING_DIMENSION is 16") as caught:
            embeds.embed(TEXTS)
    finally:
        embeds.close()
    assert "set it to 8" in str(caught.value)
    assert caught.value.context["setting"] == "CHATLOG_EMBEDDING_DIMENSION"
    assert len(stub.requests) == 1  # no retry: the answer will not change


def test_a_400_is_final_and_not_retried(stub):
    stub.script(status(400))
    embeds = embedder(stub)
    try:
        with pytest.raises(EmbeddingError, match="refused the request with 400") as caught:
            embeds.embed(TEXTS)
    finally:
        embeds.close()
    assert caught.value.context["status_code"] == 400
    assert len(stub.requests) == 1
    assert embeds.breaker.state(0) is BreakerState.CLOSED  # the endpoint did answer


@pytest.mark.parametrize(
    ("behaviour", "match"),
    [(empty(), "answered 0 vectors for 3 texts"), (malformed(), "not an embedding list")],
)
def test_an_answer_that_is_not_the_vectors_is_final(stub, behaviour, match):
    stub.script(behaviour)
    embeds = embedder(stub)
    try:
        with pytest.raises(EmbeddingError, match=match):
            embeds.embed(TEXTS)
    finally:
        embeds.close()
    assert len(stub.requests) == 1


def test_the_breaker_opens_and_then_the_endpoint_is_not_called(stub):
    stub.default = status(500)
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=60)
    embeds = embedder(stub, breaker=breaker)
    try:
        with pytest.raises(EmbedderUnavailable, match="failed 2 times in a row") as first:
            embeds.embed(TEXTS)
        assert isinstance(first.value.__cause__, RetryableEmbeddingError)
        assert len(stub.requests) == 2
        with pytest.raises(EmbedderUnavailable, match="not calling it for another"):
            embeds.embed(TEXTS)
    finally:
        embeds.close()
    assert len(stub.requests) == 2  # refused at once
    assert (embeds.stats.failed, embeds.stats.refused) == (0, 2)


def test_an_unreachable_endpoint_is_retryable(stub):
    with LlmStub() as gone:
        url = gone.base_url
    embeds = embedder(stub, base_url=url, retry=RetryPolicy(max_attempts=1))
    try:
        with pytest.raises(RetryableEmbeddingError, match="could not reach the embeddings"):
            embeds.embed(TEXTS)
    finally:
        embeds.close()


def everything_about(error: BaseException) -> str:
    """What a person or a log could see of `error`, its causes' tracebacks included."""
    parts = [str(error), repr(error), *traceback.format_exception(error)]
    return "\n".join([*parts, repr(getattr(error, "context", None))])


def test_an_api_key_the_server_quotes_back_is_in_no_error(stub):
    key = "sk-embed-5ecret-7f3a9"
    stub.script(status(401, quote_key=True), status(503, quote_key=True))
    embeds = embedder(stub, api_key=key, retry=RetryPolicy(max_attempts=1))
    raised = []
    try:
        for expected in (EmbeddingError, RetryableEmbeddingError):
            with pytest.raises(expected) as caught:
                embeds.embed(TEXTS)
            raised.append(caught.value)
    finally:
        embeds.close()
    assert stub.headers[0]["authorization"] == f"Bearer {key}"  # sent, and quoted back
    for error in raised:
        seen = everything_about(error)
        assert "incorrect API key Bearer ***" in seen  # the server's words, the key masked
        assert key not in seen


def test_a_password_in_the_base_url_is_in_no_log_line(stub, caplog):
    password = "pr0xy-pa55"
    address = urlsplit(stub.base_url).netloc
    embeds = embedder(stub, base_url=f"http://proxy:{password}@{address}/v1")
    try:
        with caplog.at_level("INFO"):
            embeds.embed(TEXTS)
    finally:
        embeds.close()
    requests = [r.getMessage() for r in caplog.records if r.msg.startswith("HTTP Request:")]
    assert len(requests) == 1  # httpx's line of the call, kept, its URL masked
    assert f"http://proxy:***@{address}/v1/embeddings" in requests[0]
    assert password not in caplog.text


def test_wiring_builds_the_endpoint_embedder_from_the_settings(stub, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = Settings.from_env(
        {
            "CHATLOG_EMBEDDING_PROVIDER": "openai",
            "CHATLOG_EMBEDDING_BASE_URL": stub.base_url,
            "CHATLOG_EMBEDDING_API_KEY": "settings-key",
            "CHATLOG_EMBEDDING_MODEL": "stub-embed",
            "CHATLOG_EMBEDDING_DIMENSION": "8",
            "CHATLOG_EMBEDDING_BATCH_SIZE": "2",
            "CHATLOG_EMBEDDING_MAX_CHARS": "10",
        }
    )
    embeds = wiring.embedder(settings)
    try:
        vectors = embeds.embed(TEXTS)
    finally:
        embeds.close()
    assert (embeds.model, embeds.dimension) == ("stub-embed", 8)
    assert [r["input"] for r in stub.requests] == [
        [TEXTS[0][:10], TEXTS[1][:10]],
        [TEXTS[2][:10]],
    ]
    assert vectors[2] == stub_vector(TEXTS[2][:10], 8)
    assert stub.headers[0]["authorization"] == "Bearer settings-key"
