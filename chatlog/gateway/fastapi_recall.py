"""``GET /v1/recall``: the caller's earlier turns nearest in meaning to a query.

The library's `AsyncChatLog.recall` for the token's user and tenant: never a user named
in the request. ``session_id`` narrows it to one session of the caller's; another's, or
one that does not exist, answers 404 as a read of it does. The route is served only
while the server runs with ``CHATLOG_RECALL=true`` (and `chatlog run embedder` fills the
index); otherwise it is not in the API at all, and answers 404 as any unknown path.

The caller asks about themself, so an erased caller hears it: 410 ``erased``, as their
export does.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from chatlog.client import AsyncChatLog
from chatlog.gateway.fastapi_app import Caller
from chatlog.gateway.http_errors import HttpError
from chatlog.projections.recall import MAX_K, MAX_QUERY_CHARS
from chatlog.schemas.errors import Erased

__all__ = ["recall_routes"]


def recall_routes(log: AsyncChatLog) -> APIRouter:
    """The recall route over `log`; none when `log` does not recall."""
    router = APIRouter(tags=["recall"])
    if log.recaller is None:
        return router

    @router.get("/v1/recall", response_model=None)
    async def recall(
        caller: Caller,
        q: Annotated[
            str,
            Query(
                min_length=1,
                max_length=MAX_QUERY_CHARS,
                description="what to recall: a question, or the latest message",
            ),
        ],
        k: Annotated[int, Query(ge=1, le=MAX_K, description="how many turns")] = 5,
        session_id: Annotated[
            str | None, Query(description="only this session of the caller's")
        ] = None,
    ) -> dict[str, Any] | JSONResponse:
        """The caller's ``k`` earlier turns nearest in meaning to ``q``, most relevant
        first, from all their sessions (or ``session_id``'s): each with its session,
        message id, role, content, score (cosine similarity), position and time. A
        search, not a read-your-writes read: a turn appended a moment ago is found once
        the embedder has indexed it."""
        try:
            turns = await log.recall(
                caller.user_id, q, k=k, session_id=session_id, tenant=caller.tenant
            )
        except Erased as exc:
            error = HttpError(410, "erased", exc.message)
            return JSONResponse(error.body(), status_code=error.status)
        return {"recalled": [turn.to_dict() for turn in turns]}

    return router
