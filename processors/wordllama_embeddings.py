"""`WordLlamaEmbedder`: the offline default, a static embedding model that needs no key and
no download.

What is WordLlama? The token embeddings of a large language model's first layer (Llama 2's
tokenizer and vocabulary, 32,000 tokens), trained further for sentence similarity: a
text's vector is the average of its tokens' vectors, normalised. No network runs, so it
embeds thousands of turns a second on one core, and its wheel (about 19 MB, numpy,
tokenizers and safetensors beside it, no torch) holds the weights
(``wordllama/weights/l2_supercat_256.safetensors``) and the tokenizer. Its vectors are
Matryoshka-trained: the first 64 or 128 numbers are a usable vector too, smaller and
coarser; docs/recall.md gives the measured difference.

The package's loader looks for the tokenizer in a folder its wheel does not have, and
would then download it; it is pointed at the package's own folder, downloads disabled, so
a machine with no network loads it the same (a test runs it with no network at all).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chatlog.processors.embeddings import OFFLINE_DIMENSIONS, OFFLINE_MODEL, EmbeddingBatch
from chatlog.schemas.errors import ConfigError, MissingExtra


def _import_wordllama() -> Any:
    # wordllama calls logging.basicConfig(level=INFO) on import: in an application that
    # has not set its logging up yet, that would install a handler of its own on the
    # root logger. A placeholder handler makes basicConfig do nothing.
    root = logging.getLogger()
    placeholder = logging.NullHandler()
    root.addHandler(placeholder)
    try:
        import wordllama  # noqa: PLC0415 - the guard above must run first
    finally:
        root.removeHandler(placeholder)
    return wordllama


try:
    import numpy as np

    _wordllama = _import_wordllama()
except ImportError as missing:
    raise MissingExtra.needs(
        "recall",
        "the offline embedding model (CHATLOG_EMBEDDING_PROVIDER=offline)",
        missing,
        instead="use an embeddings endpoint (CHATLOG_EMBEDDING_PROVIDER=openai)",
    ) from missing

__all__ = ["WordLlamaEmbedder"]

_CONFIG = "l2_supercat"
_SHIPPED = 256  # the width of the weights in the wheel


class WordLlamaEmbedder:
    """An `EmbeddingModel` that runs in-process, from the weights inside the wheel.

    Vectors have unit length (cosine distance is a dot product). Loading takes about a
    second and 32 MB of memory (the float16 weights widened to float32).
    """

    model = OFFLINE_MODEL

    def __init__(self, *, dimension: int = _SHIPPED) -> None:
        if dimension not in OFFLINE_DIMENSIONS:
            raise ConfigError(
                f"the offline embedding model has vectors of "
                f"{', '.join(map(str, OFFLINE_DIMENSIONS))} numbers, not {dimension}: set "
                f"CHATLOG_EMBEDDING_DIMENSION to one of them",
                setting="CHATLOG_EMBEDDING_DIMENSION",
            )
        self.dimension = dimension
        package = Path(_wordllama.__file__).parent
        self._model = _wordllama.WordLlama.load(
            _CONFIG,
            cache_dir=package,  # where its wheel put weights/ and tokenizers/
            dim=_SHIPPED,
            trunc_dim=None if dimension == _SHIPPED else dimension,
            disable_download=True,
        )

    def embed_batch(self, texts: Sequence[str]) -> EmbeddingBatch:
        """The vectors of `texts`, in order, each of unit length."""
        matrix = self._model.embed(list(texts), norm=True, batch_size=max(1, len(texts)))
        return EmbeddingBatch(vectors=np.asarray(matrix, dtype=np.float32).tolist(), tokens=0)

    async def aembed_batch(self, texts: Sequence[str]) -> EmbeddingBatch:
        """`embed_batch` in a worker thread: it is CPU work (numpy releases the GIL)."""
        return await asyncio.to_thread(self.embed_batch, texts)

    def close(self) -> None:
        """Nothing to close: the model is memory only."""

    async def aclose(self) -> None:
        """Nothing to close: the model is memory only."""
