"""Stand-in bots for the development chat page: a reply without an LLM, a key or a network.

What is a stand-in bot? The chat page (`/`, `chatlog serve --dev --bot echo`) shows a
conversation, and a conversation needs a second voice. A real assistant would call an
LLM; a stand-in answers at once, offline and deterministically, so that a newcomer sees
replies arrive live and a test can predict them. It is a development aid only: it
exists in ``--dev`` mode, never otherwise.

After the gateway has stored a user's message, `answer` runs in the background: it reads
the session's context once the projector has applied that message (read-your-writes),
asks the bot for a reply, and appends it with role ``assistant`` as the same user and
tenant, through the library's own append (so the session claims, the caps and the
redaction apply to it as to any message). Its message id is derived from the user's,
so a retried request (the same ``Idempotency-Key``) is answered once.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from chatlog.schemas.errors import ChatlogError

if TYPE_CHECKING:
    from chatlog.client import AsyncChatLog
    from chatlog.gateway.tokens import Principal
    from chatlog.projections.context import Context
    from chatlog.schemas.position import Position

__all__ = ["BOTS", "Bot", "EchoBot", "answer", "reply_id"]

_log = logging.getLogger("chatlog.gateway.bot")

_ECHO_CHARS = 200  # what the echo repeats of a message: enough to recognise it


class Bot(Protocol):
    """A stand-in assistant: the reply to a user's message, from the session's context."""

    @property
    def name(self) -> str:
        """Its name, shown as the reply's ``name``."""
        ...

    def reply(self, context: Context, message_id: str) -> str:
        """The reply to message `message_id` of `context` (it holds that message)."""
        ...


@dataclass(frozen=True, slots=True)
class EchoBot:
    """Says back what the user said, and which turn of the chat this is."""

    name: str = "echo"

    def reply(self, context: Context, message_id: str) -> str:
        said = next((m for m in context.messages if m.message_id == message_id), None)
        text = "" if said is None else said.content
        if len(text) > _ECHO_CHARS:
            text = text[:_ECHO_CHARS] + "…"
        # The message count of the whole session (summarized turns included): turn N.
        return f"You said: {text} (turn {context.message_count} of this chat)"


BOTS: dict[str, type[EchoBot]] = {"echo": EchoBot}
"""The stand-in bots ``chatlog serve --bot NAME`` knows, by name."""


def reply_id(message_id: str) -> str:
    """The id of the reply to `message_id`: derived, so the same message is answered once."""
    return "bot-" + hashlib.sha256(message_id.encode()).hexdigest()[:32]


async def answer(
    bot: Bot,
    log: AsyncChatLog,
    caller: Principal,
    session_id: str,
    *,
    message_id: str,
    position: Position,
) -> None:
    """Append `bot`'s reply to the caller's message at `position` (run in the background).

    A failure is logged, not raised: the user's message is stored whatever the bot does,
    and the page simply shows no reply.
    """
    try:
        context = await log.context(session_id, user_id=caller.user_id, after=position)
        await log.append(
            session_id,
            user_id=caller.user_id,
            role="assistant",
            content=bot.reply(context, message_id),
            name=bot.name,
            message_id=reply_id(message_id),
            tenant=caller.tenant,
        )
    except ChatlogError as exc:
        _log.warning("the %s bot did not answer in session %s: %s", bot.name, session_id, exc)
