"""What a user would use instead of chatlog, measured beside it on the same Redis.

Two peers, each one small adapter with the same three calls (`add`, `read`, `keys`):

* `LangChainHistory`: LangChain's `RedisChatMessageHistory` from langchain-community, the
  chat history most LangChain apps start with. `add_message` is an LPUSH of the message
  as JSON (`message_to_dict`) and, with a ttl, an EXPIRE: two round trips. `.messages`
  is one LRANGE of the whole list, each item parsed back into a LangChain message.
* `PlainRedisList`: a per-session Redis list written the way most chat apps do it by
  hand: per message, RPUSH of `{"role", "content", "at"}` as JSON and EXPIRE, in one
  pipeline (one round trip); read with LRANGE of the whole list, each item parsed.

Both keep every message of a session in Redis; chatlog keeps a bounded window there
(the whole history is in Kafka). Both are given the session time-to-live chatlog uses.
"""

from __future__ import annotations

import json
import time
import warnings
from typing import Any

import redis

from bench.workload import Turn
from chatlog.settings import Settings

__all__ = [
    "LANGCHAIN_BLOCKED",
    "LangChainHistory",
    "PlainRedisList",
    "langchain_available",
    "langchain_peer",
    "open_peers",
]

LANGCHAIN_BLOCKED = "langchain-community not installed (pip install -e '.[dev]')"


def langchain_available() -> str | None:
    """None when langchain-community imports; else why not."""
    try:
        _import_history()
    except ImportError as exc:
        return f"{LANGCHAIN_BLOCKED}: {exc}"
    return None


def langchain_peer(name: str, blocked: str | None) -> str:
    """How a row names LangChain: `name`, or, when it cannot run, that it is blocked and why."""
    return name if blocked is None else f"LangChain: blocked, {blocked}"


def open_peers(
    settings: Settings, client: redis.Redis, *, prefix: str
) -> tuple[LangChainHistory | None, PlainRedisList]:
    """Both peers, their keys under `prefix`, with chatlog's session time-to-live.

    LangChain's is None when it cannot run (`langchain_available` says why).
    """
    ttl = int(settings.session_ttl_s) or None
    langchain = (
        LangChainHistory(settings.redis_url, key_prefix=f"{prefix}:langchain:", ttl_s=ttl)
        if langchain_available() is None
        else None
    )
    return langchain, PlainRedisList(client, prefix=f"{prefix}:plain:", ttl_s=ttl)


def _import_history() -> Any:
    with warnings.catch_warnings():
        # langchain-community warns on import that it is being sunset; it still is what
        # LangChain's documentation points chat apps to for a Redis history.
        warnings.simplefilter("ignore", DeprecationWarning)
        from langchain_community.chat_message_histories import (  # noqa: PLC0415
            RedisChatMessageHistory,
        )
    return RedisChatMessageHistory


class LangChainHistory:
    """`RedisChatMessageHistory`, one instance per session, kept for the whole run.

    Each instance makes its own Redis client (`get_client(redis_url=url)`); an app that
    makes one per request, as `RunnableWithMessageHistory`'s `get_session_history` often
    does, would also open a connection per request. Here they are made before the clock
    starts (the warm-up touches every session), so that cost is left out.
    """

    def __init__(self, url: str, *, key_prefix: str, ttl_s: int | None) -> None:
        from langchain_core.messages import AIMessage, HumanMessage  # noqa: PLC0415

        self._history_class = _import_history()
        self._message_class = {"user": HumanMessage, "assistant": AIMessage}
        self.url = url
        self.key_prefix = key_prefix
        self.ttl_s = ttl_s
        self._histories: dict[str, Any] = {}

    def history(self, session_id: str) -> Any:
        """The session's `RedisChatMessageHistory` (made on first use)."""
        history = self._histories.get(session_id)
        if history is None:
            history = self._history_class(
                session_id, url=self.url, key_prefix=self.key_prefix, ttl=self.ttl_s
            )
            self._histories[session_id] = history
        return history

    def add(self, turn: Turn) -> None:
        """`add_message` of a HumanMessage or AIMessage."""
        message = self._message_class[turn.role](content=turn.content)
        self.history(turn.session_id).add_message(message)

    def read(self, session_id: str) -> list[Any]:
        """`.messages`: every message of the session, oldest first."""
        return list(self.history(session_id).messages)

    def keys(self, session_id: str) -> list[str]:
        """The Redis keys that hold the session."""
        return [str(self.history(session_id).key)]

    def close(self) -> None:
        """Close every instance's client."""
        for history in self._histories.values():
            history.redis_client.close()
        self._histories.clear()


class PlainRedisList:
    """A hand-written per-session list: RPUSH + EXPIRE per message, LRANGE to read."""

    def __init__(self, client: redis.Redis, *, prefix: str, ttl_s: int | None) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s

    def key(self, session_id: str) -> str:
        """The list holding the session's messages."""
        return f"{self.prefix}{session_id}"

    def add(self, turn: Turn) -> None:
        """RPUSH the message as JSON and EXPIRE the list, in one round trip."""
        key = self.key(turn.session_id)
        message = {"role": turn.role, "content": turn.content, "at": time.time_ns() // 1_000_000}
        pipe = self.client.pipeline(transaction=False)
        pipe.rpush(key, json.dumps(message))
        if self.ttl_s:
            pipe.expire(key, self.ttl_s)
        pipe.execute()

    def read(self, session_id: str) -> list[dict[str, Any]]:
        """Every message of the session, oldest first, parsed."""
        return [json.loads(item) for item in self.client.lrange(self.key(session_id), 0, -1)]

    def keys(self, session_id: str) -> list[str]:
        """The Redis keys that hold the session."""
        return [self.key(session_id)]
