"""`ResilientEmbedder` and `Resilience` with a scripted model and a fake clock, and the
embedding settings: batches, cuts, retries, the breaker and the checks, with no network."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import pytest

from chatlog import wiring
from chatlog.processors.embeddings import (
    OFFLINE_MODEL,
    EmbeddingBatch,
    EmbeddingSpec,
    ResilientEmbedder,
    embedding_spec,
)
from chatlog.processors.resilience import BreakerState, CircuitBreaker, RetryPolicy
from chatlog.schemas.errors import (
    ConfigError,
    EmbedderUnavailable,
    EmbeddingError,
    EmbeddingTimeout,
    InvalidInput,
    RetryableEmbeddingError,
)
from chatlog.settings import Settings
from tests.fake_time import FakeTime

Outcome = BaseException | EmbeddingBatch | None


class ScriptedModel:
    """An `EmbeddingModel` that raises or returns the scripted outcomes in order; None
    (and an empty script) answers `vector(text)` for each text."""

    model = "scripted"

    def __init__(self, *outcomes: Outcome, dimension: int = 3) -> None:
        self.outcomes = list(outcomes)
        self.dimension = dimension
        self.batches: list[list[str]] = []
        self.closed = 0

    def vector(self, text: str) -> list[float]:
        return [float(len(text)), 1.0, 0.5][: self.dimension] + [0.0] * (self.dimension - 3)

    def embed_batch(self, texts: Sequence[str]) -> EmbeddingBatch:
        self.batches.append(list(texts))
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is None:
            return EmbeddingBatch([self.vector(t) for t in texts], tokens=len(texts) * 2)
        return outcome

    async def aembed_batch(self, texts: Sequence[str]) -> EmbeddingBatch:
        return self.embed_batch(texts)

    def close(self) -> None:
        self.closed += 1

    async def aclose(self) -> None:
        self.closed += 1


def resilient(model: ScriptedModel, time: FakeTime, **options) -> ResilientEmbedder:
    return ResilientEmbedder(model, clock=time.clock, sleep=time.sleep, block=time.block, **options)


@pytest.fixture(params=["thread", "asyncio"])
def embed(request):
    """`embed` or `aembed` of an embedder: both paths must behave the same."""

    def call(embedder: ResilientEmbedder, texts: Sequence[str]) -> list[list[float]]:
        if request.param == "thread":
            return embedder.embed(texts)
        return asyncio.run(embedder.aembed(texts))

    return call


def busy(retry_after: float | None = None) -> RetryableEmbeddingError:
    return RetryableEmbeddingError("endpoint answered 503", retry_after=retry_after)


def test_texts_go_in_batches_and_come_back_in_order(embed):
    model = ScriptedModel()
    embedder = resilient(model, FakeTime(), batch_size=2)
    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    assert embed(embedder, texts) == [model.vector(t) for t in texts]
    assert model.batches == [["a", "bb"], ["ccc", "dddd"], ["eeeee"]]
    stats = embedder.stats
    assert (stats.batches, stats.texts, stats.tokens, stats.failed) == (3, 5, 10, 0)
    assert len(stats.seconds) == 3


def test_no_texts_is_no_call(embed):
    model = ScriptedModel()
    assert embed(resilient(model, FakeTime()), []) == []
    assert model.batches == []


def test_a_long_text_is_cut_to_max_chars(embed):
    model = ScriptedModel()
    embed(resilient(model, FakeTime(), max_chars=5), ["x" * 12, "short"])
    assert model.batches == [["xxxxx", "short"]]


@pytest.mark.parametrize("bad", ["", "   \n", None, 7])
def test_a_blank_or_non_text_is_refused_naming_it(embed, bad):
    model = ScriptedModel()
    with pytest.raises(InvalidInput, match="text 1 is"):
        embed(resilient(model, FakeTime()), ["fine", bad])
    assert model.batches == []


def test_one_string_is_refused_rather_than_embedded_letter_by_letter(embed):
    with pytest.raises(InvalidInput, match=r"pass \[text\]"):
        embed(resilient(ScriptedModel(), FakeTime()), "hello")


def test_a_transient_failure_is_retried_after_a_backoff(embed):
    time = FakeTime()
    model = ScriptedModel(busy(), busy(retry_after=2.5))
    vectors = embed(resilient(model, time), ["hi"])
    assert vectors == [model.vector("hi")]
    assert len(model.batches) == 3
    assert len(time.sleeps) == 2
    assert 0 <= time.sleeps[0] <= 0.5  # full jitter under base_delay
    assert time.sleeps[1] == 2.5  # the server's hint is a floor


def test_transient_failures_on_every_attempt_raise_the_last_and_count_it(embed):
    time = FakeTime()
    model = ScriptedModel(*(EmbeddingTimeout(f"slow {n}") for n in range(4)))
    embedder = resilient(model, time, retry=RetryPolicy(max_attempts=3))
    with pytest.raises(EmbeddingTimeout, match="slow 2"):
        embed(embedder, ["hi"])
    assert len(model.batches) == 3
    assert embedder.stats.failed == 1


def test_a_final_error_is_raised_at_once_and_closes_the_breaker(embed):
    time = FakeTime()
    model = ScriptedModel(busy(), EmbeddingError("400: input too long"))
    embedder = resilient(model, time, breaker=CircuitBreaker(failure_threshold=2))
    with pytest.raises(EmbeddingError, match="input too long"):
        embed(embedder, ["hi"])
    assert len(model.batches) == 2
    assert embedder.breaker.state(time.now) is BreakerState.CLOSED
    # Had the first failure still counted, this second one would open the breaker.
    model.outcomes.append(busy())
    assert embed(embedder, ["hi"]) == [model.vector("hi")]
    assert embedder.stats.failed == 1


def test_the_breaker_opens_refuses_at_once_then_lets_a_trial_through(embed):
    time = FakeTime()
    model = ScriptedModel(busy(), busy(), busy())
    embedder = resilient(model, time, breaker=CircuitBreaker(failure_threshold=2, reset_timeout=30))
    with pytest.raises(EmbedderUnavailable, match="failed 2 times in a row") as first:
        embed(embedder, ["hi"])
    assert isinstance(first.value.__cause__, RetryableEmbeddingError)
    assert first.value.context["retry_in"] == pytest.approx(30)
    with pytest.raises(EmbedderUnavailable, match=r"not calling it for another 30\.0 s"):
        embed(embedder, ["hi"])
    assert len(model.batches) == 2
    time.now += 31  # the cool-down passed: a trial call, which fails again
    with pytest.raises(EmbedderUnavailable):
        embed(embedder, ["hi"])
    assert len(model.batches) == 3
    time.now += 31  # the next trial succeeds and closes it
    assert embed(embedder, ["hi"]) == [model.vector("hi")]
    assert embedder.breaker.state(time.now) is BreakerState.CLOSED
    assert (embedder.stats.failed, embedder.stats.refused) == (0, 3)


def test_a_bug_in_the_model_is_neither_retried_nor_held_against_the_service(embed):
    time = FakeTime()
    model = ScriptedModel(KeyError("bug"))
    embedder = resilient(model, time, breaker=CircuitBreaker(failure_threshold=1))
    with pytest.raises(KeyError):
        embed(embedder, ["hi"])
    assert len(model.batches) == 1
    assert embedder.breaker.state(time.now) is BreakerState.CLOSED


@pytest.mark.parametrize(
    ("answer", "error", "match"),
    [
        (EmbeddingBatch([[1.0, 2.0, 3.0]], 1), EmbeddingError, "answered 1 vectors for 2 texts"),
        (EmbeddingBatch([[1.0, 2.0, 3.0], [1.0, 2.0]], 1), ConfigError, "of 2 numbers"),
        (EmbeddingBatch([[1.0, 2.0, 3.0], [1.0, math.nan, 3.0]], 1), EmbeddingError, "finite"),
        (EmbeddingBatch([[1.0, 2.0, 3.0], [math.inf, 0.0, 0.0]], 1), EmbeddingError, "finite"),
    ],
)
def test_an_answer_that_is_not_what_was_asked_is_refused(embed, answer, error, match):
    model = ScriptedModel(answer)
    embedder = resilient(model, FakeTime())
    with pytest.raises(error, match=match):
        embed(embedder, ["one", "two"])
    assert embedder.stats.failed == 1
    assert embedder.stats.texts == 0


def test_a_size_mismatch_names_the_setting_and_both_sizes():
    embedder = resilient(ScriptedModel(dimension=4), FakeTime())
    embedder.inner.vector = lambda text: [0.1] * 6  # type: ignore[method-assign]
    with pytest.raises(ConfigError) as caught:
        embedder.embed(["hi"])
    message = str(caught.value)
    assert "vectors of 6 numbers" in message
    assert "CHATLOG_EMBEDDING_DIMENSION is 4: set it to 6" in message
    assert caught.value.context["setting"] == "CHATLOG_EMBEDDING_DIMENSION"


def test_close_and_aclose_reach_the_model():
    model = ScriptedModel()
    embedder = resilient(model, FakeTime())
    embedder.close()
    asyncio.run(embedder.aclose())
    assert model.closed == 2


@pytest.mark.parametrize("options", [{"batch_size": 0}, {"max_chars": 0}])
def test_sizes_below_one_are_refused(options):
    with pytest.raises(InvalidInput):
        ResilientEmbedder(ScriptedModel(), **options)


# --------------------------------------------------------------------------- settings

LARGE = "text-embedding-3-large"


def test_the_offline_model_is_the_default_at_256():
    assert Settings.from_env({}).embedding == EmbeddingSpec("offline", OFFLINE_MODEL, 256)


@pytest.mark.parametrize(
    ("provider", "model", "dimension", "expected"),
    [
        ("offline", None, 128, EmbeddingSpec("offline", OFFLINE_MODEL, 128)),
        ("offline", OFFLINE_MODEL, 64, EmbeddingSpec("offline", OFFLINE_MODEL, 64)),
        ("openai", None, None, EmbeddingSpec("openai", "text-embedding-3-small", 1536)),
        ("openai", "text-embedding-3-large", None, EmbeddingSpec("openai", LARGE, 3072)),
        ("openai", "bge-m3", 1024, EmbeddingSpec("openai", "bge-m3", 1024)),
    ],
)
def test_the_spec_fills_in_what_is_known(provider, model, dimension, expected):
    assert embedding_spec(provider, model, dimension) == expected


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"CHATLOG_EMBEDDING_DIMENSION": "300"}, "DIMENSION=300: the offline model's vectors"),
        ({"CHATLOG_EMBEDDING_MODEL": "bge-m3"}, "the offline provider has one model"),
        (
            {"CHATLOG_EMBEDDING_PROVIDER": "openai", "CHATLOG_EMBEDDING_MODEL": "bge-m3"},
            "the size of the vectors of 'bge-m3' is not known",
        ),
        (
            {"CHATLOG_EMBEDDING_BASE_URL": "http://127.0.0.1:8000/v1"},
            "CHATLOG_EMBEDDING_BASE_URL is set, but the embedding provider is offline",
        ),
        (
            {"CHATLOG_EMBEDDING_CA_FILE": "/etc/ssl/private-ca.pem"},
            "CHATLOG_EMBEDDING_CA_FILE is set, but the embedding provider is offline",
        ),
        ({"CHATLOG_EMBEDDING_PROVIDER": "torch"}, "CHATLOG_EMBEDDING_PROVIDER='torch'"),
        ({"CHATLOG_EMBEDDING_BATCH_SIZE": "0"}, "CHATLOG_EMBEDDING_BATCH_SIZE"),
        ({"CHATLOG_EMBEDDING_TIMEOUT_S": "0"}, "CHATLOG_EMBEDDING_TIMEOUT_S"),
    ],
)
def test_embedding_settings_that_do_not_fit_are_refused_naming_the_fix(env, match):
    with pytest.raises(ConfigError, match=match):
        Settings.from_env(env)


def test_the_embedding_api_key_is_masked_and_the_url_password_too():
    settings = Settings.from_env(
        {
            "CHATLOG_EMBEDDING_PROVIDER": "openai",
            "CHATLOG_EMBEDDING_API_KEY": "sk-very-secret-42",
            "CHATLOG_EMBEDDING_BASE_URL": "https://gw:hunter22@embed.example/v1",
        }
    )
    shown = settings.describe()
    assert shown["CHATLOG_EMBEDDING_API_KEY"] == "***"
    assert shown["CHATLOG_EMBEDDING_BASE_URL"] == "https://gw:***@embed.example/v1"
    for text in (repr(settings), str(shown)):
        assert "sk-very-secret-42" not in text
        assert "hunter22" not in text


def test_recall_on_a_redis_cluster_needs_a_recall_redis_of_its_own():
    # Both addresses named: a local stack's file would otherwise fill in its recall Redis.
    cluster = {
        "CHATLOG_REDIS_CLUSTER": "true",
        "CHATLOG_RECALL": "true",
        "CHATLOG_REDIS_URL": "redis://127.0.0.1:7000/0",
        "CHATLOG_KAFKA_BOOTSTRAP": "127.0.0.1:9092",
    }
    with pytest.raises(ConfigError, match="needs CHATLOG_RECALL_REDIS_URL"):
        Settings.from_env(cluster)
    own = Settings.from_env(cluster | {"CHATLOG_RECALL_REDIS_URL": "redis://127.0.0.1:6380/0"})
    assert own.recall_redis == "redis://127.0.0.1:6380/0"


def test_the_breakers_pause_is_the_setting():
    embedder = wiring.embedder(Settings.from_env({"CHATLOG_EMBEDDING_BREAKER_RESET_S": "7"}))
    assert embedder.breaker.reset_timeout == 7.0
