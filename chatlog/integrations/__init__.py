"""Drop-in integrations: chatlog behind the interfaces chat back ends already use.

* `chatlog.integrations.langchain`: `ChatlogMessageHistory`, a LangChain
  `BaseChatMessageHistory` (needs ``pip install 'chatlog-memory[langchain]'``).
* `chatlog.integrations.langchain_retriever`: `ChatlogRecallRetriever`, a LangChain
  `BaseRetriever` over semantic recall (the same extra; recall needs ``CHATLOG_RECALL``).
* `chatlog.integrations.store`: `ChatlogConversationStore`, an asyncio store of sessions
  and messages of the shape agent frameworks plug in. Its role (`ConversationStore`) and
  models are in `chatlog.integrations.conversations`, its in-memory stand-in in
  `chatlog.integrations.memory_store`.

Nothing here is imported by the rest of chatlog, and this package imports LangChain only
in `chatlog.integrations.langchain`, `chatlog.integrations.langchain_messages` and
`chatlog.integrations.langchain_retriever`.
"""
