"""Semantic recall's index: what it holds for a turn, what a search returns, and its rules.

What is the recall index? For every user and assistant turn, a vector (the turn's
embedding) and what is needed to find and show the turn again: tenant, user and session
as filters, the role, the time, the turn's position in the log (partition, offset), and
the message itself *as the read-model stores it*: `encode_message` of a `Message` whose
content is still sealed under its owner's data key (`chatlog.schemas.sealing`). A search
returns those messages; the caller opens them with the owner's keys exactly as a read of
a session is opened (`chatlog.projections.opening.ViewOpener.values_for`).

Why store the sealed message rather than only ids? The turns recall is for are those the
read-model no longer holds (beyond the window and the overflow): fetching their text
would mean reading the log, tens of milliseconds a turn. Sealed, the text is what the
read-model already keeps (a Redis dump opens nothing; an erased user's copy is unreadable
once their key is destroyed), at the price of one message's bytes beside its vector.

The vector itself is derived personal data in clear (a search must compare it): erasure
deletes it, and a user's erasure mark keeps any late write of theirs out
(`chatlog.projections.redis_vectors`).

The model that made the vectors is recorded with the index (`EmbeddingModel`): vectors of
two models are not comparable, so an index is refused by a process whose settings name
another (`model_mismatch`).

What a caller gets back is a `RecalledTurn`: a hit opened with its owner's keys, with the
score and the turn's place in the log, and nothing of the index's own (no vector, no
tenant: it is always the caller's). The rules a recall request must meet before anything
is embedded (`recall_query`, `check_k`) are here too, so every path (the client, the
gateway, the CLI, the LangChain retriever) refuses alike. Pure: no I/O.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from chatlog.projections.view import Message
from chatlog.schemas.errors import EmbeddingModelMismatch, InvalidInput
from chatlog.schemas.events import from_epoch_millis
from chatlog.schemas.position import Position

__all__ = [
    "ALGORITHMS",
    "MAX_K",
    "MAX_QUERY_CHARS",
    "Algorithm",
    "EmbeddingModel",
    "IndexedTurn",
    "RecallHit",
    "RecalledTurn",
    "TurnRef",
    "check_k",
    "model_mismatch",
    "recall_query",
    "vector_bytes",
]

Algorithm = Literal["HNSW", "FLAT"]
ALGORITHMS: tuple[Algorithm, ...] = ("HNSW", "FLAT")
_MAX_DIMENSION = 8192  # above every embedding model in use; a typo beyond it
MAX_K = 100  # a prompt holds a handful of recalled turns; more is a mistake
# A query is a question or one chat message, not a document. Longer, a static model's
# average of token vectors blurs toward no topic at all; 2,000 characters (about 500
# tokens) is also within every embedding model's input (the turns' own cut,
# CHATLOG_EMBEDDING_MAX_CHARS, is 8,000 by default, 2,000 for 512-token models), so a
# query is never silently cut; and it bounds the work one HTTP request may ask for.
MAX_QUERY_CHARS = 2_000


@dataclass(frozen=True, slots=True)
class EmbeddingModel:
    """The model that makes the index's vectors: its name and its vectors' length."""

    name: str
    dimension: int

    def __post_init__(self) -> None:
        if not self.name or not self.name.isprintable():
            raise InvalidInput(f"embedding model name {self.name!r} must be printable text")
        if not 1 <= self.dimension <= _MAX_DIMENSION:
            raise InvalidInput(
                f"embedding dimension {self.dimension} of model {self.name} must be between "
                f"1 and {_MAX_DIMENSION}"
            )

    def __str__(self) -> str:
        return f"{self.name} (dimension {self.dimension})"


@dataclass(frozen=True, slots=True)
class IndexedTurn:
    """One turn as the recall index holds it; `message` sealed, as the read-model has it."""

    tenant: str
    user_id: str
    session_id: str
    partition: int
    message: Message
    vector: Sequence[float]

    @property
    def position(self) -> Position:
        """Where the turn is in the log."""
        return Position(self.partition, self.message.offset)


@dataclass(frozen=True, slots=True)
class TurnRef:
    """One turn of one owner, as a deletion names it. The owner is part of it because a
    document is keyed by session and message id only, and anyone who can publish can
    name another user's session and message id: the index deletes a document only for
    the user who owns it (`chatlog.projections.redis_vectors`)."""

    tenant: str
    user_id: str
    session_id: str
    message_id: str


@dataclass(frozen=True, slots=True)
class RecallHit:
    """A turn a search found: `score` is the cosine similarity to the query (1: same
    direction), `message` as stored (sealed until the caller opens it)."""

    tenant: str
    user_id: str
    session_id: str
    partition: int
    message: Message
    score: float

    @property
    def position(self) -> Position:
        """Where the turn is in the log."""
        return Position(self.partition, self.message.offset)


def model_mismatch(
    generation: str, built_with: EmbeddingModel, wanted: EmbeddingModel
) -> EmbeddingModelMismatch | None:
    """The error to raise when the index of `generation`, built with `built_with`, is
    used by settings that name `wanted` (None: they agree)."""
    if built_with == wanted:
        return None
    return EmbeddingModelMismatch(
        f"the recall index of generation {generation} was built with embedding model "
        f"{built_with}, but this process embeds with {wanted}: vectors of different models "
        f"cannot be compared. Set the embedding model back to {built_with.name}, or rebuild "
        f"the index with the new model (`chatlog replay`)",
        generation=generation,
        index_model=built_with.name,
        index_dimension=built_with.dimension,
        model=wanted.name,
        dimension=wanted.dimension,
    )


def vector_bytes(vector: Sequence[float], model: EmbeddingModel) -> bytes:
    """`vector` as the index stores it (float32, little-endian), checked against `model`."""
    if len(vector) != model.dimension:
        raise InvalidInput(
            f"a vector of {len(vector)} numbers does not fit embedding model {model}",
            dimension=len(vector),
        )
    packed = array("f", vector)
    # One C loop: a NaN or an infinity anywhere makes the sum one (no float32 sum of
    # 8,192 numbers overflows a float64).
    if not math.isfinite(sum(packed)):
        raise InvalidInput(f"a vector of model {model.name} holds NaN or infinity")
    if array("f", [1.0]).tobytes() != b"\x00\x00\x80?":  # pragma: no cover - big-endian host
        packed.byteswap()
    return packed.tobytes()


@dataclass(frozen=True, slots=True)
class RecalledTurn:
    """An earlier turn of the caller's that a recall found, opened: `score` is the cosine
    similarity to the query (1: same direction), `position` where the turn is in the log."""

    session_id: str
    message_id: str
    role: str
    content: str
    score: float
    position: Position
    occurred_at: datetime

    @classmethod
    def of(cls, hit: RecallHit, opened: Message) -> RecalledTurn:
        """The turn `hit` found, with `opened`, its message opened with its owner's keys."""
        return cls(
            session_id=hit.session_id,
            message_id=opened.message_id,
            role=opened.role,
            content=opened.content,
            score=hit.score,
            position=hit.position,
            occurred_at=from_epoch_millis(opened.occurred_at_ms),
        )

    def to_dict(self) -> dict[str, Any]:
        """The turn as JSON-ready values (the gateway's and the CLI's shape)."""
        return {
            "session_id": self.session_id,
            "message_id": self.message_id,
            "role": self.role,
            "content": self.content,
            "score": round(self.score, 6),
            "position": str(self.position),
            "occurred_at": self.occurred_at.isoformat(timespec="milliseconds"),
        }


def recall_query(query: object) -> str:
    """`query` if a recall may embed it: text, not blank, at most `MAX_QUERY_CHARS`."""
    if not isinstance(query, str):
        raise InvalidInput(f"a recall query must be text, not {type(query).__name__}")
    if not query.strip():
        raise InvalidInput("the recall query is empty: pass the question or message to recall for")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidInput(
            f"the recall query has {len(query)} characters, over {MAX_QUERY_CHARS}: pass the "
            f"question or the latest message, not a document",
            length=len(query),
        )
    return query


def check_k(k: object) -> int:
    """`k` if it is a number of turns a recall may return: 1 to `MAX_K`."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InvalidInput(f"k={k!r}: ask for 1 to {MAX_K} recalled turns")
    return k
