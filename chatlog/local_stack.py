"""Where a local Kafka + Redis stack says it answers: the addresses file that Settings reads.

The development stack (`make services`, not part of the installed package) records the
addresses it started in ``<state dir>/services.env``, one ``KEY=value`` a line::

    CHATLOG_KAFKA_BOOTSTRAP=127.0.0.1:PORT
    CHATLOG_REDIS_URL=redis://127.0.0.1:PORT/0

The state dir is ``$CHATLOG_STATE_DIR``, else ``./.chatlog`` relative to the working
directory, so each checkout has its own stack. This module is the one place that knows the
file's name and format; it imports only the standard library, so reading the addresses
costs one file read.
"""

from __future__ import annotations

import os
from pathlib import Path

from chatlog.schemas.errors import ConfigError

__all__ = ["ADDRESSES_FILE", "STATE_DIR_ENV", "read_addresses", "resolve_state_dir"]

STATE_DIR_ENV = "CHATLOG_STATE_DIR"
ADDRESSES_FILE = "services.env"


def resolve_state_dir(state_dir: Path | None = None) -> Path:
    """The state dir as an absolute path: the argument, `$CHATLOG_STATE_DIR`, or ./.chatlog."""
    if state_dir is None:
        state_dir = Path(os.environ.get(STATE_DIR_ENV) or ".chatlog")
    return state_dir.expanduser().resolve()


def read_addresses(*, state_dir: Path | None = None) -> dict[str, str] | None:
    """The recorded ``{CHATLOG_KAFKA_BOOTSTRAP: ..., CHATLOG_REDIS_URL: ...}``, if any.

    This reads the file only; it does not check that the stack still answers.
    """
    path = resolve_state_dir(state_dir) / ADDRESSES_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    addresses: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, equals, value = line.partition("=")
        if not equals or not key.startswith("CHATLOG_"):
            raise ConfigError(
                f"{path}:{number} is not a CHATLOG_KEY=value line; delete {path} or "
                f"restart the local stack (`make services`)",
                setting=str(path),
            )
        addresses[key.strip()] = value.strip()
    return addresses
