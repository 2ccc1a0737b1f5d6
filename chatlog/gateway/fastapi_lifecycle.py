"""Ending a session: ``POST /v1/sessions/{id}/close`` and ``DELETE /v1/sessions/{id}``.

Both go through the library (`AsyncChatLog.close_session`, `erase_session`), which
refuses another user's session before anything is published; the gateway checks the
tenant first, as for every route (`own_context`). Both answer once the projector has
applied the event (200), so the caller's next read sees it, or with 202 if it has not
within ``CHATLOG_READ_TIMEOUT_S`` (the event is stored all the same).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from chatlog.client import AsyncChatLog
from chatlog.gateway.fastapi_app import Caller, own_context
from chatlog.schemas.errors import ReadTimeout
from chatlog.schemas.position import Position

__all__ = ["lifecycle_routes"]


def lifecycle_routes(log: AsyncChatLog) -> APIRouter:
    """The routes that close and erase the caller's sessions, over `log`."""
    router = APIRouter(tags=["sessions"])

    @router.post("/v1/sessions/{session_id}/close")
    async def close_session(session_id: str, caller: Caller) -> JSONResponse:
        """Close the caller's session: it stays readable (status ``closed``), its live
        streams end, and a message appended later opens it again."""
        await own_context(log, session_id, caller, None)
        position = await log.close_session(session_id, user_id=caller.user_id, tenant=caller.tenant)
        return await _answer(log, session_id, position, "closed")

    @router.delete("/v1/sessions/{session_id}")
    async def erase_session(session_id: str, caller: Caller) -> JSONResponse:
        """Erase the caller's session: every read of it answers 404 from then on, and its
        live streams end. Recorded in the audit trail, the caller as the actor."""
        await own_context(log, session_id, caller, None)
        position = await log.erase_session(
            session_id, user_id=caller.user_id, tenant=caller.tenant, principal=str(caller)
        )
        return await _answer(log, session_id, position, "erased")

    return router


async def _answer(
    log: AsyncChatLog, session_id: str, position: Position, status: str
) -> JSONResponse:
    body: dict[str, Any] = {"session_id": session_id, "position": str(position), "status": status}
    try:
        await log.reader.wait_applied(session_id, position, timeout=log.read_timeout_s)
    except ReadTimeout:
        return JSONResponse(body, status_code=202)  # stored; applied soon
    return JSONResponse(body, status_code=200)
