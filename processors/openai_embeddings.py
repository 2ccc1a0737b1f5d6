"""`OpenAIEmbedder`: vectors from any OpenAI-compatible embeddings endpoint.

OpenAI itself, or a server of one's own (vLLM, Ollama, llama.cpp, text-embeddings-
inference, LiteLLM): give its base URL, model and the size of its vectors. One call embeds
one batch (``POST /v1/embeddings``); batching across calls, retries, the circuit breaker
and the checks of the answer are `chatlog.processors.embeddings.ResilientEmbedder`'s.

Vectors are asked for as JSON floats (``encoding_format="float"``): the client would
otherwise ask for base64, which not every compatible server speaks. The ``dimensions``
parameter (OpenAI's text-embedding-3 models shorten their vectors to it) is sent only when
asked for, since servers whose model cannot shorten refuse it.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from chatlog.schemas.errors import MissingExtra

try:
    import openai
    from openai.types import CreateEmbeddingResponse
except ImportError as missing:
    raise MissingExtra.needs(
        "recall", "the embeddings endpoint (CHATLOG_EMBEDDING_PROVIDER=openai)", missing
    ) from missing

from chatlog.processors.embeddings import EmbeddingBatch
from chatlog.processors.openai_client import translated_errors
from chatlog.projections.context import approx_tokens
from chatlog.schemas.errors import (
    ConfigError,
    EmbeddingError,
    EmbeddingTimeout,
    RetryableEmbeddingError,
)

__all__ = ["OpenAIEmbedder"]


class OpenAIEmbedder:
    """An `EmbeddingModel` behind an OpenAI-compatible ``/embeddings`` endpoint.

    It builds its clients on first use (a thread's and asyncio's), with ``max_retries=0``:
    retrying is the `ResilientEmbedder`'s job. `close` closes the thread's client,
    `aclose` both.
    """

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str,
        model: str,
        dimension: int,
        timeout: float,
        send_dimension: bool = False,
        ca_file: str | None = None,
    ) -> None:
        if not model:
            raise ConfigError("the embedding model is empty; name the model to use")
        if dimension < 1:
            raise ConfigError(f"the embedding dimension must be at least 1, not {dimension}")
        if not timeout > 0 or not math.isfinite(timeout):
            raise ConfigError(f"the embedding timeout must be a positive number, not {timeout}")
        self.model = model
        self.dimension = dimension
        self.timeout = timeout
        self.send_dimension = send_dimension
        self._base_url = base_url
        self._api_key = api_key
        self._ca_file = ca_file
        self._client: openai.OpenAI | None = None
        self._async_client: openai.AsyncOpenAI | None = None

    def embed_batch(self, texts: Sequence[str]) -> EmbeddingBatch:
        """The endpoint's vectors of `texts`, in order."""
        if self._client is None:
            self._client = openai.OpenAI(
                **self._client_options(),
                http_client=None
                if self._tls is None
                else openai.DefaultHttpxClient(verify=self._tls),
            )
        with self._errors():
            response = self._client.embeddings.create(**self._request(texts))
        return self._batch(response, texts)

    async def aembed_batch(self, texts: Sequence[str]) -> EmbeddingBatch:
        """`embed_batch` for asyncio."""
        if self._async_client is None:
            self._async_client = openai.AsyncOpenAI(
                **self._client_options(),
                http_client=(
                    None if self._tls is None else openai.DefaultAsyncHttpxClient(verify=self._tls)
                ),
            )
        with self._errors():
            response = await self._async_client.embeddings.create(**self._request(texts))
        return self._batch(response, texts)

    def close(self) -> None:
        """Close the thread's client (the asyncio one needs `aclose`)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        """Close both clients."""
        self.close()
        if self._async_client is not None:
            await self._async_client.close()
            self._async_client = None

    @property
    def _tls(self) -> ssl.SSLContext | None:
        """A private CA's context (CHATLOG_EMBEDDING_CA_FILE); None: httpx trusts the
        usual CAs."""
        return None if self._ca_file is None else ssl.create_default_context(cafile=self._ca_file)

    def _client_options(self) -> dict[str, Any]:
        return {
            "base_url": self._base_url,
            "api_key": self._api_key,
            "timeout": self.timeout,
            "max_retries": 0,
        }

    def _request(self, texts: Sequence[str]) -> dict[str, Any]:
        return {
            "model": self.model,
            "input": list(texts),
            "encoding_format": "float",
            "dimensions": self.dimension if self.send_dimension else openai.omit,
        }

    def _errors(self) -> AbstractContextManager[None]:
        return translated_errors(
            "the embeddings endpoint",
            answer="an embedding list",
            timeout_s=self.timeout,
            final=EmbeddingError,
            transient=RetryableEmbeddingError,
            timeout=EmbeddingTimeout,
            secret=self._api_key,
            ca_setting="CHATLOG_EMBEDDING_CA_FILE",
            model=self.model,
        )

    def _batch(self, response: CreateEmbeddingResponse, texts: Sequence[str]) -> EmbeddingBatch:
        # Without strict validation the client passes on whatever the server sent, so
        # the shape is checked rather than trusted; the answer's order is by `index`.
        data: Any = getattr(response, "data", None)
        if not isinstance(data, list):
            raise EmbeddingError(
                "the embeddings endpoint answered with no embedding list", model=self.model
            )
        try:
            items = sorted(data, key=lambda item: int(item.index))
            vectors = [_floats(item.embedding) for item in items]
        except (AttributeError, TypeError, ValueError) as exc:
            raise EmbeddingError(
                f"the embeddings endpoint answered with an embedding that is not a list of "
                f"numbers ({exc})",
                model=self.model,
            ) from None
        usage = getattr(response, "usage", None)
        tokens = getattr(usage, "prompt_tokens", None)
        if not isinstance(tokens, int):
            tokens = sum(approx_tokens(text) for text in texts)
        return EmbeddingBatch(vectors=vectors, tokens=tokens)


def _floats(embedding: Any) -> list[float]:
    if not isinstance(embedding, list):
        raise TypeError(f"got {type(embedding).__name__}")
    return [float(x) for x in embedding]
