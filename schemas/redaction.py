"""Redaction: personal data taken out of what a person wrote, before it is stored.

Why before storage? The events topic keeps everything forever, and its copies (replicas,
the dead-letter topic, Redis, backups, the summarizer's LLM) are many. Sealing hides a
card number from whoever holds a disk; redaction means it is not there at all, not even
for chatlog's own readers, which build prompts from what the log holds. The producer
applies it to every event before sealing and encoding, so nothing downstream ever sees
the original.

What is looked at? Every field sealing treats as personal (`chatlog.schemas.sealing`'s
one list): a message's content, its name, tool call arguments and metadata values; a
session's title and metadata values; a summary; a reason. Tool call *names* are left
alone: they name functions, and a changed one would break the call. Ids and metadata
keys are never redacted (nor sealed): do not put personal data in them.

The modes (`Mode`, ``CHATLOG_PII_MODE``):

* ``off``: nothing is changed;
* ``redact`` (the default): a typed placeholder, ``[EMAIL]``, ``[CARD]``;
* ``mask``: a placeholder that keeps what support staff commonly see, ``[CARD ••••1111]``
  (`mask`); secrets and custom kinds are hidden whole;
* ``tokenize``: a numbered placeholder, ``[EMAIL#1]`` (the same original gets the same
  number within an event), whose original goes into the event's `tokens`, which the
  producer seals under the owner's data key: `chatlog.schemas.placeholders.reveal_field`
  puts it back for a reader who asks (``context(..., reveal=True)``), and erasing the
  owner destroys it with the key.

Whatever the mode (but off), each redaction is recorded in the event (`Redaction`): the
field, the kind, the placeholder, and a keyed HMAC-SHA256 of the original (never
Python's `hash`, which is neither keyed nor stable), so an audit can tell whether a given
value was redacted without the event keeping it. The MAC key is derived from the owner's
own data key (purpose ``pii``): a card two users both typed gets two unrelated MACs, so
the records link nobody, and once the user is erased nothing is left to test a guess
against (a masked card's last four digits leave only a few guesses).

Pure: finding is the `Redactor`'s (`chatlog.schemas.pii.Detector` by default), the MAC
is a function the producer passes in (the owner's data key's).
"""

from __future__ import annotations

import enum
import ipaddress
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from chatlog.schemas.events import (
    CheckpointSaved,
    CheckpointWritesSaved,
    ConversationEvent,
    Redaction,
    TaskEvent,
)
from chatlog.schemas.pii import Detector, Finding, Kind
from chatlog.schemas.placeholders import NOT_JSON, json_of, token
from chatlog.schemas.sealing import TOOL_CALLS, Mac, map_fields

__all__ = [
    "MAC_PURPOSE",
    "Mode",
    "RedactionPolicy",
    "Redactor",
    "mask",
]

MAC_PURPOSE = "pii"
_DOT = "•"


class Mode(enum.StrEnum):
    """What redaction writes in place of what it finds (see the module docstring)."""

    OFF = "off"
    REDACT = "redact"
    MASK = "mask"
    TOKENIZE = "tokenize"


class Redactor(Protocol):
    """Finds the personal data in a text; `chatlog.schemas.pii.Detector` is the default."""

    def find(self, text: str) -> Sequence[Finding]:
        """The findings in `text`, sorted by position, none overlapping another."""
        ...


def mask(kind: str, original: str) -> str:
    """The ``mask`` mode's placeholder: enough for a person to recognise their own
    value (the last digits), too little to use it."""
    digits = re.sub(r"\D", "", original)
    if kind == Kind.CARD:
        return f"[CARD {_DOT * 4}{digits[-4:]}]"  # what receipts print (PCI DSS allows it)
    if kind == Kind.IBAN:
        compact = original.replace(" ", "").upper()
        return f"[IBAN {compact[:2]}{_DOT * 2} {_DOT * 4}{compact[-4:]}]"  # as banks show it
    if kind == Kind.SSN:
        return f"[SSN {_DOT * 3}-{_DOT * 2}-{digits[-4:]}]"
    if kind == Kind.PHONE:
        return f"[PHONE {_DOT * 4}{digits[-2:]}]"
    if kind == Kind.EMAIL:
        local, _, domain = original.partition("@")
        return f"[EMAIL {local[:1]}{_DOT * 3}@{domain}]"
    if kind == Kind.IP:
        return f"[IP {_network(original)}]"
    return f"[{kind}]"  # secrets and custom kinds: no part of them is safe to show


def _network(address: str) -> str:
    """The address with its host part hidden: IPv4's last octet, IPv6's last 80 bits
    (the anonymisation analytics tools apply)."""
    parsed = ipaddress.ip_address(address)
    if parsed.version == 4:
        return ".".join(address.split(".")[:3]) + f".{_DOT}"
    return str(ipaddress.ip_network(f"{address}/48", strict=False).network_address) + _DOT


_MACHINE_DATA = CheckpointSaved | CheckpointWritesSaved | TaskEvent


@dataclass(frozen=True)
class RedactionPolicy:
    """A mode and a redactor: what the producer applies to every event."""

    mode: Mode = Mode.REDACT
    redactor: Redactor = field(default_factory=Detector)

    def apply(self, event: ConversationEvent, mac: Callable[[bytes], Mac]) -> ConversationEvent:
        """`event` with the personal data of its personal fields replaced, and what was
        replaced recorded; `mac` is the owner's data key's MAC for purpose ``pii``.

        An event already sealed (its fields are ciphertext), or with nothing found, is
        returned as it is. One that already carries redactions (read back from the log
        and published again, or built by hand) is searched all the same: what it says it
        redacted is kept, what it still holds is redacted too, and new tokens are
        numbered after its own. Placeholders are not personal data, so nothing is
        redacted twice.
        """
        if self.mode is Mode.OFF or event.sealed is not None:
            return event
        if isinstance(event.payload, _MACHINE_DATA):
            # Serialized graph state, a task's JSON: a placeholder written into it would
            # corrupt it. It is sealed whole instead, and erased with its owner.
            return event
        run = _Run(self.mode, self.redactor, mac, event.tokens)
        # Searched first without building a payload: most events hold nothing to redact,
        # and then the event is returned as it is.
        map_fields(event.payload, run.field, rebuild=False)
        if not run.redactions:
            return event
        return event.model_copy(
            update={
                "payload": map_fields(event.payload, run.result),
                "redactions": (*event.redactions, *run.redactions),
                "tokens": run.tokens,
            }
        )


class _Run:
    """One event's redaction: its placeholders, records and tokens."""

    def __init__(
        self,
        mode: Mode,
        redactor: Redactor,
        mac: Callable[[bytes], Mac],
        tokens: Mapping[str, str],
    ) -> None:
        self.mode, self.redactor, self.mac = mode, redactor, mac
        self.redactions: list[Redaction] = []
        self.tokens: dict[str, str] = dict(tokens)
        # (kind, original) -> token name; the event's own tokens first, so new ones
        # are numbered after them and an original it already tokenized keeps its name.
        self._names = {(name.partition("#")[0], text): name for name, text in tokens.items()}
        self._macs: dict[str, Mac] = {}
        # Each field's value after redaction, by path (`field` fills it, `result` reads it).
        self._results: dict[str, str] = {}

    def field(self, path: str, value: str) -> str:
        """`value` of field `path` redacted (and remembered for `result`)."""
        if path.startswith(TOOL_CALLS) and path.endswith(".name"):
            result = value  # a function's name: changing it would break the call
        else:
            document = json_of(path, value)
            if document is not NOT_JSON:
                result = self._json(path, value, document)
            else:
                result = self._text(path, value)
        self._results[path] = result
        return result

    def result(self, path: str, value: str) -> str:
        """What `field` made of field `path` (`value` if it never saw it)."""
        return self._results.get(path, value)

    def _text(self, path: str, text: str) -> str:
        findings = self.redactor.find(text)
        if not findings:
            return text
        parts: list[str] = []
        at = 0
        for finding in findings:
            parts += (text[at : finding.start], self._placeholder(path, finding))
            at = finding.end
        parts.append(text[at:])
        return "".join(parts)

    def _json(self, path: str, text: str, document: Any) -> str:
        """A JSON field: redacting its text as it is could cut through its syntax (a card
        written as a bare number), so it is redacted leaf by leaf, every placeholder
        inside a string, and written again only if something changed."""
        before = len(self.redactions)
        redacted = self._leaves(path, document)
        if len(self.redactions) == before:
            return text
        return json.dumps(redacted, ensure_ascii=False)

    def _leaves(self, path: str, value: Any) -> Any:
        if isinstance(value, str):
            return self._text(path, value)
        if isinstance(value, dict):
            return {key: self._leaves(path, item) for key, item in value.items()}
        if isinstance(value, list):
            return [self._leaves(path, item) for item in value]
        if isinstance(value, int | float) and not isinstance(value, bool):
            text = json.dumps(value)
            redacted = self._text(path, text)
            return value if redacted == text else redacted
        return value

    def _placeholder(self, path: str, finding: Finding) -> str:
        kind = str(finding.kind)
        if self.mode is Mode.TOKENIZE:
            name = self._names.get((kind, finding.text))
            if name is None:
                number = 1 + max(
                    (_number(n) for (k, _), n in self._names.items() if k == kind), default=0
                )
                name = self._names[kind, finding.text] = f"{kind}#{number}"
                self.tokens[name] = finding.text
            placeholder = token(name)
        elif self.mode is Mode.MASK:
            placeholder = mask(kind, finding.text)
        else:
            placeholder = f"[{kind}]"
        digest = self._macs.get(finding.text)
        if digest is None:
            digest = self._macs[finding.text] = self.mac(finding.text.encode())
        self.redactions.append(
            Redaction(
                field=path,
                kind=kind,
                placeholder=placeholder,
                mac_key_id=digest.key_id,
                mac=digest.digest,
            )
        )
        return placeholder


def _number(name: str) -> int:
    """The n of a token name ``KIND#n`` (0 if it has none)."""
    digits = name.partition("#")[2]
    return int(digits) if digits.isdecimal() else 0
