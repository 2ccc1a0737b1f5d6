"""Secrets never printed: the one rule for what is a secret, and how it is shown masked.

A deployment's secrets reach chatlog in two forms, and each has one rule here:

- a setting or property *named* like a secret (``CHATLOG_LLM_API_KEY``,
  ``CHATLOG_MASTER_KEY``, ``CHATLOG_KAFKA__SASL_PASSWORD``, a URL's ``?password=``):
  `is_secret` decides by the name, and its value is shown as `MASK`;
- credentials *inside a URL* (``redis://user:password@host``): `redacted_url` keeps the
  scheme, the user and the host, which is what a person needs to tell one deployment from
  another, and masks the password (a lone userinfo, often a token, is masked whole).

`Settings.describe`, ``repr(Settings)``, every `ChatlogError`'s message and context, and
the log records of the loggers that are handed URLs (`RedactingFilter`) all go through
these two functions, so a new setting or a new error message is masked without a
change here. Everything here is pure (``re`` and ``logging`` only).
"""

from __future__ import annotations

import logging
import re

__all__ = ["MASK", "RedactingFilter", "is_secret", "redacted_url"]

MASK = "***"

# Words of a name (split at '.', '_', '-') that make its value a secret.
_SECRET_WORDS = frozenset(
    {"password", "passwd", "pwd", "secret", "key", "apikey", "token", "credential", "sig"}
)
# A name ending in one of these refers to a secret (a file, a URL to fetch it from); the
# reference itself is shown, so that a person can see which file or endpoint is used.
_REFERENCE_WORDS = frozenset({"file", "location", "path", "url", "endpoint"})
# Named like secrets, but not: a duration. Whole strings, not words, which librdkafka's
# free-form properties need: sasl.oauthbearer.config may carry a client secret.
_NOT_SECRET = frozenset({"key_shred_within"})
_ALWAYS_SECRET = frozenset(
    {
        "sasl.oauthbearer.config",
        "sasl.jaas.config",
        # user:password, for the Schema Registry (the setting, and confluent's property).
        "schema_registry_basic_auth",
        "basic.auth.user.info",
    }
)

_WORD = re.compile(r"[._\-\s]+")
# librdkafka writes its protocols as schemes too (SASL_SSL://host:9092), with a "_".
_SCHEME = r"[A-Za-z][A-Za-z0-9+._\-]*://"
# The authority of a URL: up to its path, query or fragment, a quote or a space, or the
# next URL of a comma-separated list (Kafka's bootstrap servers).
_AUTHORITY = re.compile(rf"(?P<scheme>{_SCHEME})(?P<authority>(?:(?!,{_SCHEME})[^\s/?#'\"<>])*)")
# A query parameter (or a ;-separated one); its name decides whether the value is shown.
_PARAMETER = re.compile(r"(?P<lead>[?&;](?P<name>[^=&;\s#'\"]+)=)(?P<value>[^&;\s#'\"]*)")


def is_secret(name: str) -> bool:
    """Whether the value of the setting, Kafka property or URL parameter `name` is a
    secret (an API key, a password, a client secret, a key), shown only as `MASK`."""
    lowered = name.lower()
    if lowered in _ALWAYS_SECRET:
        return True
    if lowered in _NOT_SECRET:
        return False
    words = [word for word in _WORD.split(lowered) if word]
    if words and words[-1] in _REFERENCE_WORDS:
        return False
    return any(word in _SECRET_WORDS or word.endswith("password") for word in words)


def redacted_url(text: str) -> str:
    """`text` with the credentials of every URL in it masked: a userinfo's password
    (``redis://app:***@host:6379/0``), a userinfo with no password (a token) whole
    (``https://***@host``), and the value of a query parameter named like a secret
    (``?api_key=***``). Works on one URL, a comma-separated list, or a message."""
    return _PARAMETER.sub(_mask_parameter, _AUTHORITY.sub(_mask_userinfo, text))


def _mask_userinfo(match: re.Match[str]) -> str:
    authority = match["authority"]
    # The last '@' ends the userinfo, as for urllib and redis-py: a password may hold '@'.
    userinfo, at, host = authority.rpartition("@")
    if not at:
        return match.group(0)
    user, colon, _password = userinfo.partition(":")
    shown = f"{user}:{MASK}" if colon else MASK
    return f"{match['scheme']}{shown}@{host}"


def _mask_parameter(match: re.Match[str]) -> str:
    if not is_secret(match["name"]) or not match["value"]:
        return match.group(0)
    return f"{match['lead']}{MASK}"


class RedactingFilter(logging.Filter):
    """A log filter that masks URL credentials in a record's message (`redacted_url`).

    Attached to the loggers chatlog hands URLs to (httpx, which logs each request's URL
    at INFO; librdkafka's, through ``chatlog.kafka``) and to the CLI's handlers, so a
    record is masked whoever formats it. It never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redacted_url(message)
        if masked != message:
            # The formatted message replaces the template and its arguments, which held
            # the secret (httpx passes the URL as an argument).
            record.msg, record.args = masked, None
        return True
