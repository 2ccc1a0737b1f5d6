"""Embedders: turn the texts of turns (and recall queries) into vectors for the vector index.

What is an embedder for? Semantic recall finds the earlier turns of a user that are
closest in meaning to a query: every user and assistant turn is embedded once, into a
vector of `dimension` numbers, and stored in the vector index; a query is embedded by the
same model, and the index returns the nearest turns. Vectors of two models (or of one
model at two sizes) are not comparable, so `model` and `dimension` are recorded with the
index, and a change of either means a rebuild.

There are two roles. An `EmbeddingModel` is one provider, one call: the offline default
(`chatlog.processors.wordllama_embeddings`, a static model whose weights ship inside its
wheel) or any OpenAI-compatible endpoint (`chatlog.processors.openai_embeddings`, which
imports a network library); each lives in a module of its own. An `Embedder` is what the
embedding processor and recall use: `ResilientEmbedder` wraps a model with what every
provider needs the same way (batches of at most `batch_size` texts, long texts cut,
retries and a circuit breaker from `chatlog.processors.resilience`, the answer checked:
one vector per text, each of `dimension` finite numbers) and counts what it did.

Failures are the errors of `chatlog.schemas.errors`: `EmbeddingError` (a `Refused`: the
model answered, but not with the vectors) is final; `RetryableEmbeddingError` and its
`EmbeddingTimeout` (`Unavailable`) are retried; `EmbedderUnavailable` says the circuit
is open and nothing was attempted; a vector of another size than the settings say is a
`ConfigError` (the setting, or the model, is wrong: no retry helps).
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from chatlog.processors.resilience import (
    CircuitBreaker,
    Resilience,
    RetryPolicy,
    refusal_text,
)
from chatlog.schemas.errors import (
    ConfigError,
    EmbedderUnavailable,
    EmbeddingError,
    InvalidInput,
    RetryableEmbeddingError,
)

__all__ = [
    "DEFAULT_MAX_CHARS",
    "OFFLINE_DIMENSIONS",
    "OFFLINE_MODEL",
    "OPENAI_DEFAULT_MODEL",
    "Embedder",
    "EmbeddingBatch",
    "EmbeddingModel",
    "EmbeddingSpec",
    "EmbeddingStats",
    "Provider",
    "ResilientEmbedder",
    "embedding_spec",
]

Provider = Literal["offline", "openai"]

# The offline model (`chatlog.processors.wordllama_embeddings`): the weights its wheel
# ships are 256 wide, and Matryoshka-trained, so that their first 64 or 128 numbers work
# alone. 256 is the default: the best recall@5 of the three (docs/recall.md), 1 KB a turn.
OFFLINE_MODEL = "wordllama/l2_supercat"
OFFLINE_DIMENSIONS = (256, 128, 64)
# An endpoint's default model, and the vector sizes of OpenAI's models (another model's
# size is a setting: nothing tells it before the first answer).
OPENAI_DEFAULT_MODEL = "text-embedding-3-small"
_OPENAI_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


@dataclass(frozen=True, slots=True)
class EmbeddingSpec:
    """Which model embeds, and the size of its vectors: what the index records."""

    provider: Provider
    model: str
    dimension: int


def embedding_spec(provider: Provider, model: str | None, dimension: int | None) -> EmbeddingSpec:
    """The model and size that ``CHATLOG_EMBEDDING_PROVIDER``, ``_MODEL`` and ``_DIMENSION``
    name, defaults filled in; `ValueError` naming the setting to fix if they do not fit."""
    if provider == "offline":
        if model not in (None, OFFLINE_MODEL):
            raise ValueError(
                f"CHATLOG_EMBEDDING_MODEL={model!r}: the offline provider has one model, "
                f"{OFFLINE_MODEL}; unset it, or set CHATLOG_EMBEDDING_PROVIDER=openai for "
                f"an endpoint's model"
            )
        size = OFFLINE_DIMENSIONS[0] if dimension is None else dimension
        if size not in OFFLINE_DIMENSIONS:
            raise ValueError(
                f"CHATLOG_EMBEDDING_DIMENSION={dimension}: the offline model's vectors have "
                f"{', '.join(map(str, OFFLINE_DIMENSIONS))} numbers"
            )
        return EmbeddingSpec(provider, OFFLINE_MODEL, size)
    name = model or OPENAI_DEFAULT_MODEL
    known = dimension or _OPENAI_DIMENSIONS.get(name)
    if known is None:
        raise ValueError(
            f"CHATLOG_EMBEDDING_DIMENSION is unset, and the size of the vectors of {name!r} "
            f"is not known: set it (the vector index is made for one size)"
        )
    return EmbeddingSpec(provider, name, known)


# How a batch ends with no vectors (the rest are bugs or settings, not counted).
_FAILURES = (RetryableEmbeddingError, EmbeddingError, EmbedderUnavailable)

# About 2,000 tokens: under the input limit of common endpoints (OpenAI's 8,191), and a
# turn's topic is in its beginning. Models with 512-token inputs want less (a setting).
DEFAULT_MAX_CHARS = 8_000


@dataclass(frozen=True, slots=True)
class EmbeddingBatch:
    """One model call's answer: a vector per text, in order, and the input tokens it cost."""

    vectors: list[list[float]]
    tokens: int


class EmbeddingModel(Protocol):
    """One provider: embeds one batch of texts per call, with no retry of its own."""

    @property
    def model(self) -> str:
        """The model's name, as recorded with the index."""
        ...

    @property
    def dimension(self) -> int:
        """How many numbers each vector has."""
        ...

    def embed_batch(self, texts: Sequence[str]) -> EmbeddingBatch:
        """The vectors of `texts`; `EmbeddingError` or `RetryableEmbeddingError` if none."""
        ...

    async def aembed_batch(self, texts: Sequence[str]) -> EmbeddingBatch:
        """`embed_batch` for asyncio."""
        ...

    def close(self) -> None:
        """Release what a thread's calls hold (an HTTP client); nothing for an in-process one."""
        ...

    async def aclose(self) -> None:
        """Release everything the model holds, asyncio's client too."""
        ...


class Embedder(Protocol):
    """What the embedding processor and recall use: any number of texts in, vectors out."""

    @property
    def model(self) -> str:
        """The model's name, as recorded with the index."""
        ...

    @property
    def dimension(self) -> int:
        """How many numbers each vector has."""
        ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order."""
        ...

    async def aembed(self, texts: Sequence[str]) -> list[list[float]]:
        """`embed` for asyncio."""
        ...


@dataclass
class EmbeddingStats:
    """What an embedder did since it started (the metrics read it)."""

    batches: int = 0  # model calls that answered with vectors
    texts: int = 0  # texts embedded
    tokens: int = 0  # input tokens the model counted (0 for the offline model)
    failed: int = 0  # batches that ended with no vectors, after retries
    refused: int = 0  # batches refused at once: the circuit was open
    seconds: list[float] = field(default_factory=list)  # time of each batch, retries included

    def timed(self, seconds: float) -> None:
        """Record one batch's time (the last thousand are kept, for percentiles)."""
        self.seconds.append(seconds)
        if len(self.seconds) > 1_000:
            del self.seconds[:500]


class ResilientEmbedder:
    """An `Embedder` over one `EmbeddingModel`: batches, cuts, retries, checks, counts.

    `batch_size` texts at most go to the model in one call, and a retry repeats only the
    batch that failed. A text longer than `max_chars` is cut to it (a turn can be longer
    than any model's input, and an endpoint would refuse it for good). An empty or blank
    text is refused: it has no meaning to embed (the offline model would answer NaNs).
    """

    def __init__(
        self,
        inner: EmbeddingModel,
        *,
        batch_size: int = 64,
        max_chars: int = DEFAULT_MAX_CHARS,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        block: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if batch_size < 1:
            raise InvalidInput(f"batch_size must be at least 1, got {batch_size}")
        if max_chars < 1:
            raise InvalidInput(f"max_chars must be at least 1, got {max_chars}")
        self.inner = inner
        self.batch_size = batch_size
        self.max_chars = max_chars
        self.stats = EmbeddingStats()
        self._clock = clock
        self._resilience = Resilience(
            transient=RetryableEmbeddingError,
            final=EmbeddingError,
            retry=retry,
            breaker=breaker,
            clock=clock,
            sleep=sleep,
            block=block,
            rng=rng,
        )
        self.breaker = self._resilience.breaker

    @property
    def model(self) -> str:
        """The model's name, as recorded with the index."""
        return self.inner.model

    @property
    def dimension(self) -> int:
        """How many numbers each vector has."""
        return self.inner.dimension

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order, after retries."""
        vectors: list[list[float]] = []
        for batch in self._batches(texts):
            started = self._clock()
            try:
                answer = self._resilience.call(
                    functools.partial(self.inner.embed_batch, batch), self._refusal
                )
            except _FAILURES as exc:
                self._count_failure(exc)
                raise
            vectors += self._accepted(batch, answer, started)
        return vectors

    async def aembed(self, texts: Sequence[str]) -> list[list[float]]:
        """`embed` for asyncio."""
        vectors: list[list[float]] = []
        for batch in self._batches(texts):
            started = self._clock()
            try:
                answer = await self._resilience.acall(
                    functools.partial(self.inner.aembed_batch, batch), self._refusal
                )
            except _FAILURES as exc:
                self._count_failure(exc)
                raise
            vectors += self._accepted(batch, answer, started)
        return vectors

    def close(self) -> None:
        """Close the model's client of threads (`aclose` closes asyncio's too)."""
        self.inner.close()

    async def aclose(self) -> None:
        """Close the model's clients."""
        await self.inner.aclose()

    def _count_failure(self, error: Exception) -> None:
        if isinstance(error, EmbedderUnavailable):
            self.stats.refused += 1
        else:
            self.stats.failed += 1

    def _batches(self, texts: Sequence[str]) -> list[list[str]]:
        if isinstance(texts, str):
            raise InvalidInput("embed takes a sequence of texts, not one string: pass [text]")
        cut = []
        for n, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise InvalidInput(
                    f"text {n} is {'blank' if isinstance(text, str) else type(text).__name__}: "
                    f"only non-blank strings have a meaning to embed (leave such turns out)"
                )
            cut.append(text[: self.max_chars])
        return [cut[i : i + self.batch_size] for i in range(0, len(cut), self.batch_size)]

    def _accepted(
        self, batch: list[str], answer: EmbeddingBatch, started: float
    ) -> list[list[float]]:
        """`answer`'s vectors once they are what was asked for: one per text, each of
        `dimension` finite numbers."""
        vectors = answer.vectors
        if len(vectors) != len(batch):
            self.stats.failed += 1
            raise EmbeddingError(
                f"the embedding model {self.model!r} answered {len(vectors)} vectors for "
                f"{len(batch)} texts",
                model=self.model,
            )
        for vector in vectors:
            if len(vector) != self.dimension:
                self.stats.failed += 1
                raise ConfigError(
                    f"the embedding model {self.model!r} answers vectors of {len(vector)} "
                    f"numbers, and CHATLOG_EMBEDDING_DIMENSION is {self.dimension}: set it to "
                    f"{len(vector)} (a new vector index, built by replay), or use a model "
                    f"of {self.dimension}",
                    setting="CHATLOG_EMBEDDING_DIMENSION",
                    model=self.model,
                )
            if not all(map(math.isfinite, vector)):
                self.stats.failed += 1
                raise EmbeddingError(
                    f"the embedding model {self.model!r} answered a vector that holds a "
                    f"number that is not finite (NaN or infinity)",
                    model=self.model,
                )
        self.stats.batches += 1
        self.stats.texts += len(batch)
        self.stats.tokens += answer.tokens
        self.stats.timed(self._clock() - started)
        return vectors

    def _refusal(self, retry_in: float, cause: Exception | None) -> EmbedderUnavailable:
        return EmbedderUnavailable(
            refusal_text(f"the embedding model {self.model!r}", self.breaker, retry_in, cause),
            model=self.model,
            retry_in=retry_in,
        )
