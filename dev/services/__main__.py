"""`python -m dev.services up|down|status|env|stop|start`: the local stack from a shell.

Progress goes to stderr, one line a step; stdout carries only what a script may want:
`up` and `env` print `export KEY=value` lines, so `eval "$(python -m dev.services
env)"` points a shell at the stack. Exit status 0 means done; 1 means it failed, and
stderr says why (first line) and, for a start-up failure, shows the log tail after it.

`stop NODE [--kill]` and `start NODE` take one node of the running stack down and back
for fault drills (`kafka-1` to `kafka-3`, `redis`, `redis-stack`); `status` then names
the node that is down and exits 1.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from chatlog.local_stack import read_addresses, resolve_state_dir
from dev.services import down, start_node, status, stop_node, stopped_nodes, up
from dev.services.kafka_local import kafka_answers
from dev.services.redis_local import redis_answers
from dev.services.state import ServiceError, read_state

_PROG = "python -m dev.services"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the process exit status."""
    args = _parser().parse_args(argv)
    _log_to_stderr()
    command: Callable[[argparse.Namespace], int] = args.run
    try:
        return command(args)
    except (ServiceError, OSError) as exc:
        first, _, rest = str(exc).partition("\n")
        print(f"{_PROG} {args.command}: {first}", file=sys.stderr)
        if rest:
            print(rest, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{_PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG, description="Start, stop and locate the local Kafka + Redis stack."
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the stack's state and data live (default: $CHATLOG_STATE_DIR or ./.chatlog)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    start = commands.add_parser("up", help="start the stack, or reuse the running one")
    start.add_argument(
        "--brokers",
        type=int,
        choices=(1, 3),
        default=1,
        help="Kafka nodes to run (3 for fault tests; default 1)",
    )
    start.set_defaults(run=_up)
    commands.add_parser("down", help="stop the stack and delete its data").set_defaults(run=_down)
    commands.add_parser("status", help="show the stack; exit 1 if it is not running").set_defaults(
        run=_status
    )
    commands.add_parser("env", help="print export lines for the stack's addresses").set_defaults(
        run=_env
    )
    halt = commands.add_parser(
        "stop",
        help="stop one node, keeping its data (fault drills)",
        description="Stop one node of the running stack and keep its data dir, so that "
        "`start NODE` brings it back. `up` would instead replace a stack with a node down "
        "by a fresh one.",
    )
    halt.add_argument(
        "node", metavar="NODE", help="kafka-1, kafka-2, kafka-3, redis or redis-stack"
    )
    halt.add_argument(
        "--kill", action="store_true", help="SIGKILL, as a crash would (default: SIGTERM)"
    )
    halt.set_defaults(run=_stop_node)
    resume = commands.add_parser(
        "start",
        help="start a stopped node again as it was",
        description="Start a stopped node again with its own config, ports and data dir, "
        "and wait until it answers: a Kafka node has rejoined the cluster, and catches up "
        "on what it missed. Redis runs without persistence, so it comes back EMPTY: to "
        "chatlog's projector that is data loss (see docs/replay.md), not an outage.",
    )
    resume.add_argument(
        "node", metavar="NODE", help="kafka-1, kafka-2, kafka-3, redis or redis-stack"
    )
    resume.set_defaults(run=_start_node)
    return parser


def _log_to_stderr() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("dev.services")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _up(args: argparse.Namespace) -> int:
    _print_exports(up(brokers=args.brokers, state_dir=args.state_dir).as_env())
    return 0


def _down(args: argparse.Namespace) -> int:
    down(state_dir=args.state_dir)
    return 0


def _status(args: argparse.Namespace) -> int:
    directory = resolve_state_dir(args.state_dir)
    stack = read_state(state_dir=directory)
    if stack is None:
        raise ServiceError(f"not running: no stack recorded in {directory} (run `{_PROG} up`)")
    if status(state_dir=directory) is None:
        down_nodes = stopped_nodes(state_dir=directory)
        if down_nodes:
            names = " and ".join(down_nodes)
            raise ServiceError(
                f"not running: {names} of the stack recorded in {directory} "
                f"{'is' if len(down_nodes) == 1 else 'are'} down (run "
                f"{' and '.join(f'`{_PROG} start {n}`' for n in down_nodes)} to bring "
                f"{'it' if len(down_nodes) == 1 else 'them'} back, or `{_PROG} down`)"
            )
        broken = [
            name
            for name, ok in (
                ("kafka", kafka_answers(stack.kafka, timeout=2.0)),
                ("redis", redis_answers(stack.redis)),
                *(
                    [("redis-stack", redis_answers(stack.recall_redis))]
                    if stack.recall_redis
                    else []
                ),
            )
            if not ok
        ]
        raise ServiceError(
            f"not running: {' and '.join(broken) or 'the stack'} recorded in {directory} "
            f"does not answer (run `{_PROG} up` to restart it, or `{_PROG} down`)"
        )
    kafka, redis = stack.kafka, stack.redis
    plural = "s" if kafka.brokers > 1 else ""
    print(
        f"kafka  {kafka.bootstrap}  (Kafka {kafka.version}, {kafka.brokers} broker{plural}, "
        f"pid{plural} {', '.join(map(str, kafka.pids))})"
    )
    print(f"redis  {redis.url}  (pid {redis.pid})")
    if stack.recall_redis is not None:
        recall = stack.recall_redis
        print(f"redis-stack  {recall.url}  (pid {recall.pid}; the recall index)")
    print(f"state  {directory}")
    return 0


def _env(args: argparse.Namespace) -> int:
    addresses = read_addresses(state_dir=args.state_dir)
    if addresses is None:
        raise ServiceError(
            f"no stack recorded in {resolve_state_dir(args.state_dir)} (run `{_PROG} up`)"
        )
    _print_exports(addresses)
    return 0


def _stop_node(args: argparse.Namespace) -> int:
    stop_node(args.node, kill=args.kill, state_dir=args.state_dir)
    return 0


def _start_node(args: argparse.Namespace) -> int:
    start_node(args.node, state_dir=args.state_dir)
    return 0


def _print_exports(env: dict[str, str]) -> None:
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")


if __name__ == "__main__":
    sys.exit(main())
