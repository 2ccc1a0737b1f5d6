"""The placeholders of personal data, and putting the tokenized originals back.

Redaction (`chatlog.schemas.redaction`) writes placeholders in place of personal data;
in its ``tokenize`` mode each is a numbered token, ``[EMAIL#1]``, whose original the
event keeps in its `tokens` map, sealed under the owner's key. Readers that may reveal
(``context(..., reveal=True)``) open those originals and put them back with `reveal_field`
(a stored view's fields) or `revealed` (an opened event). Kept apart from redaction so
that readers do not load the detector.

JSON fields (tool call arguments, a metadata value written as an object or array) have
their placeholders inside their strings, so both ways they stay valid JSON: the
redaction rewrites such a field leaf by leaf, and an original goes back escaped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

from chatlog.schemas.events import ConversationEvent
from chatlog.schemas.sealing import METADATA, TOOL_CALLS, map_fields

__all__ = ["NOT_JSON", "json_of", "reveal", "reveal_field", "revealed", "token"]

# A token: a kind's name, '#', a number, in brackets.
_TOKEN = re.compile(r"\[([A-Za-z][A-Za-z0-9_]*#[0-9]+)\]")
_ARGUMENTS = ".arguments"
NOT_JSON: Final = object()


def token(name: str) -> str:
    """The placeholder of token `name` (``EMAIL#1`` -> ``[EMAIL#1]``)."""
    return f"[{name}]"


def json_of(path: str, text: str) -> Any:
    """The JSON document `text` holds, if the field is one: tool call arguments (JSON by
    contract), or a metadata value written as an object or array (LangChain's fields);
    `NOT_JSON` otherwise. Placeholders go inside such a document's strings, and
    originals come back escaped, so it stays valid JSON both ways."""
    arguments = path.startswith(TOOL_CALLS) and path.endswith(_ARGUMENTS)
    structured = path.startswith(METADATA) and text.lstrip()[:1] in ("{", "[")
    if not (arguments or structured):
        return NOT_JSON
    try:
        return json.loads(text)
    except ValueError:
        return NOT_JSON


def reveal(text: str, originals: Mapping[str, str], *, json_text: bool = False) -> str:
    """`text` with each ``[NAME#n]`` placeholder of `originals` (name -> original) put
    back; `json_text`: the placeholders lie inside JSON strings, so the originals are
    escaped as JSON string content."""
    if not originals or "[" not in text:
        return text

    def original(match: re.Match[str]) -> str:
        value = originals.get(match.group(1))
        if value is None:
            return match.group()
        return json.dumps(value, ensure_ascii=False)[1:-1] if json_text else value

    return _TOKEN.sub(original, text)


def reveal_field(path: str, text: str, originals: Mapping[str, str]) -> str:
    """`reveal` for the field at `path` (a sealing path): a JSON field's originals go
    back escaped, as its placeholders were put inside its strings."""
    if not originals or "[" not in text:
        return text
    return reveal(text, originals, json_text=json_of(path, text) is not NOT_JSON)


def revealed(event: ConversationEvent) -> ConversationEvent:
    """An opened event with its tokenized originals (`event.tokens`) back in place."""
    if not event.tokens:
        return event
    originals = event.tokens

    def put_back(path: str, value: str) -> str:
        return reveal_field(path, value, originals)

    return event.model_copy(update={"payload": map_fields(event.payload, put_back)})
