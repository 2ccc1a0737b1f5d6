"""Two generations' recall indexes compared document by document (`chatlog replay --verify`).

`--verify` rebuilds the log into a scratch generation, its recall index included, and
compares it with the live one. For the index that means: the same documents (one per
indexed turn, named by session and message id), each with the same tags, position and
sealed message, and a vector equal within `VECTOR_TOLERANCE` per number (one model can
round the last bits differently when a turn is embedded in another batch). Differences
are reported per session: turns missing on either side, and turns whose fields differ.

Documents are found by SCAN (never one command over the whole index) and read with
pipelined HGETALLs, `_BATCH` at a time; the names of both indexes are held in memory,
as the read-model's comparison holds its session ids.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from chatlog.projections.keys import KeySpace
from chatlog.projections.redis_generations import Difference
from chatlog.projections.redis_store import redis_errors, text

__all__ = ["VECTOR_TOLERANCE", "RecallComparison", "compare_documents", "counted"]

# Per number, on unit vectors: far below what moves a search's ranking, far above float32
# rounding (about 6e-8 near 1).
VECTOR_TOLERANCE = 1e-4
_BATCH = 200
_SHOWN = 5  # message ids named per difference


@dataclass(slots=True)
class RecallComparison:
    """What comparing two recall indexes found."""

    documents: int = 0  # in the rebuilt index
    sessions: int = 0  # sessions with a document in the rebuilt index
    differences: list[Difference] = field(default_factory=list)


@dataclass(slots=True)
class _Session:
    """One session's differences."""

    missing: dict[str, list[str]] = field(default_factory=dict)  # generation -> message ids
    differ: list[str] = field(default_factory=list)  # "m4 (vector, doc)"


def compare_documents(
    client: redis.Redis,
    *,
    prefix: str,
    live: str,
    rebuilt: str,
    vectors: bool = True,
    limit: int = 100,
) -> RecallComparison:
    """Compare the documents of `live`'s recall index with `rebuilt`'s (at most `limit`
    differences); with `vectors` False, everything but the vectors (two models)."""
    spaces = {g: KeySpace(prefix, g) for g in (live, rebuilt)}
    names = {g: _document_names(client, keys) for g, keys in spaces.items()}
    result = _counts(names[rebuilt])
    sessions: dict[str, _Session] = {}
    for generation, other in ((live, rebuilt), (rebuilt, live)):
        for name in sorted(names[other] - names[generation]):
            session_id, message_id = _ids(name)
            missing = sessions.setdefault(session_id, _Session()).missing
            missing.setdefault(generation, []).append(message_id)
    both = sorted(names[live] & names[rebuilt])
    for start in range(0, len(both), _BATCH):
        batch = both[start : start + _BATCH]
        for name, fields in _differing(client, spaces[live], spaces[rebuilt], batch, vectors):
            session_id, message_id = _ids(name)
            sessions.setdefault(session_id, _Session()).differ.append(
                f"{message_id} ({', '.join(fields)})"
            )
    for session_id in sorted(sessions):
        detail = _detail(sessions[session_id])
        result.differences.append(Difference("recall session", session_id, detail))
    del result.differences[limit:]
    return result


def counted(client: redis.Redis, *, prefix: str, generation: str) -> RecallComparison:
    """The documents and sessions of `generation`'s index, with nothing compared."""
    return _counts(_document_names(client, KeySpace(prefix, generation)))


def _counts(names: set[str]) -> RecallComparison:
    return RecallComparison(documents=len(names), sessions=len({_ids(n)[0] for n in names}))


def _document_names(client: redis.Redis, keys: KeySpace) -> set[str]:
    """Each document's name after the index's prefix: ``<session>:<message id>``."""
    head = keys.recall_documents
    with redis_errors():
        return {text(k)[len(head) :] for k in client.scan_iter(match=f"{head}*", count=1000)}


def _ids(name: str) -> tuple[str, str]:
    """(session id, message id) of a document name: ids hold no ``:``."""
    session_id, _, message_id = name.partition(":")
    return session_id, message_id


def _differing(
    client: redis.Redis, left: KeySpace, right: KeySpace, names: list[str], vectors: bool
) -> Iterable[tuple[str, list[str]]]:
    """(name, the fields that differ) of each document of `names` that differs."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(f"{left.recall_documents}{name}")
        pipe.hgetall(f"{right.recall_documents}{name}")
    with redis_errors():
        replies = pipe.execute()
    for n, name in enumerate(names):
        a, b = ({text(k): v for k, v in reply.items()} for reply in replies[2 * n : 2 * n + 2])
        fields = sorted(f for f in a.keys() | b.keys() if f != "vector" and a.get(f) != b.get(f))
        if vectors and not _vectors_close(a.get("vector"), b.get("vector")):
            fields.insert(0, "vector")
        if fields:
            yield name, fields


def _vectors_close(a: Any, b: Any) -> bool:
    """Whether two stored float32 vectors are equal within `VECTOR_TOLERANCE` a number."""
    if a is None or b is None or len(a) != len(b):
        return bool(a == b)
    left, right = array("f"), array("f")
    left.frombytes(a)
    right.frombytes(b)
    return all(abs(x - y) <= VECTOR_TOLERANCE for x, y in zip(left, right, strict=True))


def _detail(session: _Session) -> str:
    """What differs in one session, in words."""
    parts = [
        f"{len(ids)} turn(s) missing in {generation} ({_listed(ids)})"
        for generation, ids in sorted(session.missing.items())
    ]
    if session.differ:
        parts.append(f"{len(session.differ)} turn(s) differ: {_listed(session.differ)}")
    return "; ".join(parts)


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f", and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")
