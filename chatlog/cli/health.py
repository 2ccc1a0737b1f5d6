"""`chatlog health`: ask a running process whether it is ready (or live), for a probe.

It reads ``/readyz`` (``--live``: ``/livez``) on the process's metrics port
(`chatlog.prom_metrics`): by default this host's ``CHATLOG_METRICS_PORT``, else
``--url``. The exit status is the answer: 0 ready, 1 not ready (the reason is printed),
75 cannot tell (nothing answers there, or not in time), as `chatlog.cli.common` defines
them: a supervisor's probe needs no parsing.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from chatlog.cli.common import EXIT_ACT, EXIT_TEMPORARY, positive_float
from chatlog.schemas.errors import ConfigError
from chatlog.settings import Settings

if TYPE_CHECKING:
    from chatlog.cli.common import Commands

__all__ = ["add_commands", "probe"]


def add_commands(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add `health` to the parser's `commands`."""
    health = commands.add_parser(
        "health",
        parents=[common],
        help="is a running process ready? exit 0 ready, 1 not ready, 75 cannot tell",
    )
    health.add_argument(
        "--url",
        help="the process's metrics address, as http://host:port (default: this host's "
        "CHATLOG_METRICS_PORT)",
    )
    health.add_argument("--live", action="store_true", help="ask whether it is live instead")
    health.add_argument(
        "--timeout", type=positive_float, default=5.0, help="seconds to wait for the answer (5)"
    )
    health.set_defaults(handler=_health)


def probe(url: str, *, timeout: float) -> tuple[int | None, str]:
    """The HTTP status of `url` and its body; (None, why) when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - http(s) only
            return int(answer.status), answer.read().decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace").strip()
    except (urllib.error.URLError, OSError) as exc:
        return None, str(getattr(exc, "reason", exc))


def _health(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    base = args.url or _local_url(settings)
    if not base.lower().startswith(("http://", "https://")):
        raise ConfigError(f"--url {base!r} must be an http:// URL", setting="--url")
    url = base.rstrip("/") + ("/livez" if args.live else "/readyz")
    status, detail = probe(url, timeout=args.timeout)
    what = "live" if args.live else "ready"
    result = {"url": url, what: status == 200, "status": status, "detail": detail}
    if status == 200:
        return result
    if args.json:
        print(json.dumps(result))
    elif status in (503, 500):
        print(f"not {what}: {detail}")
    else:
        print(f"chatlog: cannot tell whether {base} is {what}: {detail}", file=sys.stderr)
    raise SystemExit(EXIT_ACT if status in (503, 500) else EXIT_TEMPORARY)


def _local_url(settings: Settings) -> str:
    if not settings.metrics_port:
        raise ConfigError(
            "CHATLOG_METRICS_PORT is not set, so there is no local process to ask: set it "
            "to the port the process serves its metrics on, or pass --url",
            setting="CHATLOG_METRICS_PORT",
        )
    host = settings.metrics_host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - listening everywhere: ask the loopback
        host = "127.0.0.1"
    return f"http://{host}:{settings.metrics_port}"
