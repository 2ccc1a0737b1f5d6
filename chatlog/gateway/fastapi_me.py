"""The caller's own data: ``DELETE /v1/me`` (erase me) and ``GET /v1/me/export``.

Both are the library's privacy operations for the token's user and tenant: the erasure
destroys the user's keys, so what the log holds of them can never be read again, and
removes their sessions from the read-model (`AsyncChatLog.erase_user`,
docs/privacy.md); the export reads every session of theirs from the log, decrypted,
redactions applied, personal data the producer tokenized revealed, as `chatlog export`
writes it (`AsyncChatLog.export_user`). Both are recorded in the audit trail with the
caller's principal (``jwt:<tenant>/<user>``) as the actor.

The caller asks about themself, so no existence oracle is at stake here: an erased
caller's export answers 410 ``erased``, where a session of an erased user answers 404
as any missing session.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from chatlog.client import AsyncChatLog
from chatlog.gateway.fastapi_app import Caller
from chatlog.gateway.http_errors import HttpError
from chatlog.schemas.errors import Erased

__all__ = ["me_routes"]

_CHUNK_CHARS = 64 * 1024  # what one write of the export carries

_PRIVATE = {"Cache-Control": "no-store"}  # a person's every message: no cache keeps a copy


def me_routes(log: AsyncChatLog) -> APIRouter:
    """The routes over the caller's own data, over `log`."""
    router = APIRouter(tags=["me"])

    @router.delete("/v1/me")
    async def erase_me(caller: Caller) -> dict[str, Any]:
        """Erase the caller: their keys are destroyed and their sessions leave the
        read-model; every read of theirs answers 404 from then on. Harmless when
        repeated (``already_erased``)."""
        erasure = await log.erase_user(caller.user_id, tenant=caller.tenant, principal=str(caller))
        return erasure.as_dict()

    @router.get(
        "/v1/me/export",
        response_model=None,
        responses={200: {"content": {"application/json": {}}}},
    )
    async def export_me(caller: Caller) -> StreamingResponse | JSONResponse:
        """Every session of the caller, read from the log, as one JSON document (the
        format of ``chatlog export``, docs/privacy.md). Reads the whole events topic:
        it takes a while on a large log. 410 once the caller is erased."""
        try:
            document = await log.export_user(
                caller.user_id, tenant=caller.tenant, principal=str(caller)
            )
        except Erased as exc:
            error = HttpError(410, "erased", exc.message)
            return JSONResponse(error.body(), status_code=error.status, headers=_PRIVATE)
        return StreamingResponse(
            _json_chunks(document),
            media_type="application/json",
            headers={
                **_PRIVATE,
                "Content-Disposition": 'attachment; filename="chatlog-export.json"',
            },
        )

    return router


def _json_chunks(document: dict[str, Any]) -> Iterator[str]:
    """`document` as JSON text, in pieces of about `_CHUNK_CHARS`: the answer starts at
    once and is never held twice (as the document and as one string)."""
    pending: list[str] = []
    size = 0
    for piece in json.JSONEncoder(ensure_ascii=False).iterencode(document):
        pending.append(piece)
        size += len(piece)
        if size >= _CHUNK_CHARS:
            yield "".join(pending)
            pending, size = [], 0
    if pending:
        yield "".join(pending)
