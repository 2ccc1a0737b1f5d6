"""`ChatlogRecallRetriever`: semantic recall as a LangChain retriever.

A retriever over one user's history: `invoke(query)` is `ChatLog.recall(user_id,
query, k=k)`, and each recalled turn becomes a `Document` whose ``page_content`` is the
turn's text and whose metadata says where it came from::

    retriever = ChatlogRecallRetriever(user_id="alice", log=ChatLog.from_env(), k=5)
    docs = retriever.invoke("which order was late?")
    docs[0].metadata  # {"session_id": ..., "message_id": ..., "role": "user",
                      #  "score": 0.83, "position": "3:1042", "occurred_at": "..."}

It plugs into any chain that takes a retriever (``create_retrieval_chain``, a tool).
Remember that what it returns is what users and the assistant said: a prompt should quote
it as data, never as instructions (`chatlog.projections.context.render_recalled` does).
The retriever is one user's of one tenant, fixed when it is made; nothing in a query can
make it read another's. ``session_id`` narrows it to one session of theirs.

`log` serves `invoke` and `async_log` `ainvoke`; with only `log`, `ainvoke` runs the
blocking call in a thread, and with neither, the histories' shared `ChatLog.from_env()`
is used (`chatlog.integrations.langchain.shared_log`).
"""

from __future__ import annotations

import asyncio

from chatlog.schemas.errors import MissingExtra

try:
    from langchain_core.callbacks import (
        AsyncCallbackManagerForRetrieverRun,
        CallbackManagerForRetrieverRun,
    )
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
except ImportError as missing:
    raise MissingExtra.needs("langchain", "ChatlogRecallRetriever", missing) from missing

from pydantic import ConfigDict

from chatlog.client import AsyncChatLog, ChatLog
from chatlog.integrations.langchain import shared_log
from chatlog.projections.recall import RecalledTurn

__all__ = ["ChatlogRecallRetriever", "recalled_document"]


class ChatlogRecallRetriever(BaseRetriever):
    """A LangChain retriever of one user's earlier turns, by meaning (see the module)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    user_id: str
    tenant: str = "default"
    k: int = 5
    session_id: str | None = None
    log: ChatLog | None = None
    async_log: AsyncChatLog | None = None

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        log = self.log or shared_log()
        turns = log.recall(
            self.user_id, query, k=self.k, session_id=self.session_id, tenant=self.tenant
        )
        return [recalled_document(turn) for turn in turns]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        if self.async_log is None:
            return await asyncio.to_thread(
                self._get_relevant_documents, query, run_manager=run_manager.get_sync()
            )
        turns = await self.async_log.recall(
            self.user_id, query, k=self.k, session_id=self.session_id, tenant=self.tenant
        )
        return [recalled_document(turn) for turn in turns]


def recalled_document(turn: RecalledTurn) -> Document:
    """A recalled turn as a LangChain `Document`: its text, and where it came from."""
    metadata = turn.to_dict()
    return Document(page_content=metadata.pop("content"), metadata=metadata)
