"""The CLI's gateway commands: `serve` (the HTTP gateway), `token` (a development JWT)
and `apikey` (the service API keys of back ends: create, list, revoke).

`serve` and `token` need the ``server`` extra; without it they stop with one line naming
the install. `apikey` needs nothing more: it only writes the keys file.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from chatlog import wiring
from chatlog.cli.common import stop_on_signals
from chatlog.cli.output import iso
from chatlog.gateway.api_keys import ApiKeys
from chatlog.gateway.request_stats import GatewayStats, RequestStats
from chatlog.schemas.errors import ChatlogError, ConfigError, MissingExtra
from chatlog.settings import Settings

if TYPE_CHECKING:
    from chatlog.cli.common import Commands
    from chatlog.prom_metrics import MetricsServer

__all__ = ["add_commands", "parse_ttl"]

_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# The names of `chatlog.gateway.bots.BOTS`, here so that `--help` needs no server extra.
_BOT_NAMES = ("echo",)
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# Longer than the idle timeout of the usual proxies and clients (60 s): see `run`.
_KEEP_ALIVE_S = 75


def add_commands(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add `serve` and `token` to the parser's `commands`."""
    serve = commands.add_parser(
        "serve",
        help="run the HTTP gateway (JSON API for chat front ends; needs the server extra)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    serve.add_argument(
        "--dev",
        action="store_true",
        help="development mode, NEVER in production: POST /dev/token mints a token for "
        "anyone who asks (the chat page's login); loopback addresses only",
    )
    serve.add_argument(
        "--bot",
        choices=sorted(_BOT_NAMES),
        help="with --dev: a stand-in bot answers each user message (echo: offline, no key)",
    )
    serve.set_defaults(handler=_serve, json=False, process="gateway")

    token = commands.add_parser(
        "token",
        parents=[common],
        help="mint a development JWT for the gateway, signed with CHATLOG_AUTH_SECRET",
    )
    token.add_argument("--user", required=True, help="the user (the token's sub)")
    token.add_argument("--tenant", default="default", help="their tenant (default: default)")
    token.add_argument(
        "--ttl", type=parse_ttl, default=3600, help="how long it is valid: 90s, 15m, 1h (1h)"
    )
    token.set_defaults(handler=_token)

    apikey = commands.add_parser(
        "apikey", help="service API keys of back ends for the gateway: create, list, revoke"
    )
    actions = apikey.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        parents=[common],
        help="make a key and print it once (only its SHA-256 is kept)",
    )
    create.add_argument("--name", required=True, help="the key's name (in the audit trail)")
    create.add_argument(
        "--tenant", default="default", help="the tenant whose users it acts for (default)"
    )
    create.add_argument(
        "--operator",
        action="store_true",
        help="an operator key: operator routes only, refused on every route of user data",
    )
    create.set_defaults(handler=_apikey_create)
    listing = actions.add_parser("list", parents=[common], help="the keys, without secrets")
    listing.set_defaults(handler=_apikey_list)
    revoke = actions.add_parser(
        "revoke", parents=[common], help="revoke a key: refused from the next request on"
    )
    revoke.add_argument("name", help="the key's name")
    revoke.set_defaults(handler=_apikey_revoke)


def parse_ttl(text: str) -> int:
    """An argparse type: a lifetime as ``90``, ``90s``, ``15m``, ``1h`` or ``7d``, in seconds."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in _TTL_UNITS else (text, "s")
    if not number.isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a lifetime such as 90s, 15m or 1h")
    return int(number) * _TTL_UNITS[unit]


def _token(args: argparse.Namespace, settings: Settings) -> str:
    try:
        from chatlog.gateway.tokens import TokenIssuer  # noqa: PLC0415 (the server extra)
    except ImportError as exc:
        raise MissingExtra.needs("server", "chatlog token", exc) from exc
    issuer = TokenIssuer.from_settings(settings)
    return issuer.mint(args.user, tenant=args.tenant, ttl_s=args.ttl)


def _apikey_create(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    keys = ApiKeys.from_settings(settings)
    key, stored = keys.create(
        args.name, tenant=args.tenant, scope="operator" if args.operator else "service"
    )
    print(
        f"chatlog: the key is shown this once; store it now (only its SHA-256 is kept, "
        f"in {keys.path})",
        file=sys.stderr,
    )
    return {"key": key, **_shown(stored.shown())}


def _apikey_list(args: argparse.Namespace, settings: Settings) -> list[dict[str, Any]]:
    return [_shown(key.shown()) for key in ApiKeys.from_settings(settings).stored()]


def _apikey_revoke(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    return {"revoked": ApiKeys.from_settings(settings).revoke(args.name).name}


def _shown(key: dict[str, Any]) -> dict[str, Any]:
    created = key.pop("created_at_ms")
    return {**key, "created_at": iso(created)}


def _serve(args: argparse.Namespace, settings: Settings) -> None:
    try:
        # Imported here: `chatlog` without the server extra must still run every other command.
        import uvicorn  # noqa: PLC0415

        from chatlog.gateway.bots import BOTS  # noqa: PLC0415
        from chatlog.gateway.fastapi_app import LagBound, create_app  # noqa: PLC0415
        from chatlog.gateway.principals import Authenticator  # noqa: PLC0415
        from chatlog.gateway.redis_ratelimit import RedisRateLimiter  # noqa: PLC0415
        from chatlog.gateway.tokens import TokenIssuer, TokenVerifier  # noqa: PLC0415
    except ImportError as exc:
        raise MissingExtra.needs("server", "chatlog serve", exc) from exc
    from chatlog.client import AsyncChatLog  # noqa: PLC0415

    # Checked before listening: a gateway with neither a secret nor a JWKS URL, or with a
    # keys file it cannot read, must not start at all.
    api_keys = ApiKeys.from_settings(settings)
    api_keys.stored()
    auth = Authenticator(TokenVerifier.from_settings(settings), api_keys)
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port} is not a TCP port (1-65535)", setting="--port")
    _check_dev(args)
    # Dev mode mints with the embedded HS256 secret the verifier checks.
    dev_issuer = TokenIssuer.from_settings(settings) if args.dev else None
    bot = BOTS[args.bot]() if args.bot is not None else None
    if args.dev:
        print(
            f"chatlog serve: DEVELOPMENT MODE: POST /dev/token gives anyone any user's "
            f"token{f', the {args.bot} bot answers' if bot else ''}; never in production. "
            f"The chat page: http://{_url_host(args.host)}:{args.port}/",
            file=sys.stderr,
            flush=True,
        )

    class Server(uvicorn.Server):
        """uvicorn's server, which also tells the app when it is asked to stop: uvicorn
        waits for every response to end first, and a live stream only ends when told."""

        def __init__(self, config: uvicorn.Config, on_exit: Callable[[], object]) -> None:
            super().__init__(config)
            self.on_exit = on_exit

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            self.on_exit()
            super().handle_exit(sig, frame)

    # /metrics on a port of its own (CHATLOG_METRICS_PORT), never on the public API port.
    requests = GatewayStats()
    metrics = _gateway_metrics(settings, requests)

    async def run() -> None:
        # Built inside the event loop that serves it: the asyncio Redis client binds to it.
        # uvicorn handles SIGTERM; the app's shutdown flushes pending events.
        log = AsyncChatLog.from_settings(settings, flush_on_sigterm=False)
        stopping = asyncio.Event()
        try:
            limiter = RedisRateLimiter.from_settings(settings, log.reader.client)
            lag = LagBound(wiring.topic_ends(settings), settings.ready_max_lag)
            app = create_app(
                log,
                auth,
                stopping=stopping,
                lag=lag,
                limiter=limiter,
                dev_issuer=dev_issuer,
                bot=bot,
            )
        except ChatlogError:
            await log.aclose()
            raise
        # log_config=None: uvicorn's loggers propagate to the one handler that
        # `chatlog.logs.setup_logging` set up, in CHATLOG_LOG_FORMAT, instead of its own.
        served: Any = app if metrics is None else RequestStats(app, requests)
        # timeout_keep_alive: uvicorn's 5 s closes an idle connection while a client (or a
        # proxy: 60 s idle is common) may be sending its next request on it, which then
        # fails with a reset (seen under load). A server keeps connections longer than its
        # clients do, so they, not it, close them.
        config = uvicorn.Config(
            served,
            host=args.host,
            port=args.port,
            lifespan="on",
            log_level="info",
            log_config=None,
            timeout_keep_alive=_KEEP_ALIVE_S,
        )
        loop = asyncio.get_running_loop()
        # From a signal handler: the loop may be asleep in select, so wake it.
        await Server(config, lambda: loop.call_soon_threadsafe(stopping.set)).serve()

    # uvicorn stops gracefully on SIGTERM or Ctrl-C, then raises the signal again for the
    # handler it found: this one, which only notes it, so a stop asked for exits 0 as the
    # processors do (a supervisor reads any other status as a failure).
    try:
        with stop_on_signals(deadline_s=None):
            asyncio.run(run())
    finally:
        if metrics is not None:
            metrics.close()


def _gateway_metrics(settings: Settings, requests: GatewayStats) -> MetricsServer | None:
    """The gateway's metrics and health server; None when CHATLOG_METRICS_PORT is unset."""
    if not settings.metrics_port:
        return None
    from chatlog.prom_metrics import GatewayCollector  # noqa: PLC0415 - the metrics extra

    client = wiring.redis_client(settings)
    return wiring.metrics_server(
        settings,
        GatewayCollector(requests),
        live=lambda: None,  # the server's thread answering is all there is to tell
        ready=lambda: wiring.redis_answers(client),
    )


def _check_dev(args: argparse.Namespace) -> None:
    """``--bot`` needs ``--dev``, and ``--dev`` listens on a loopback address only: a
    development login reachable from another machine would let anyone be anyone."""
    if args.bot is not None and not args.dev:
        raise ConfigError(
            f"--bot {args.bot} is a development aid: add --dev (never in production)",
            setting="--bot",
        )
    if args.dev and args.host not in _LOOPBACK_HOSTS:
        raise ConfigError(
            f"--dev with --host {args.host}: development mode hands out tokens to anyone "
            f"who asks, so it listens on a loopback address only "
            f"({', '.join(_LOOPBACK_HOSTS)}); drop --dev to serve other machines",
            setting="--dev",
        )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
