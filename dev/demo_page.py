"""The chat page the demo leaves running: a gateway in development mode and its projector.

Why leave processes behind? `make demo` ends by printing the URL of the chat page, and a
newcomer expects that URL to work when opened, after the demo has exited. So the demo
starts two detached processes on its own topic and Redis prefix, as the local stack is
left up: ``chatlog serve --dev --bot echo`` (the page, its development login and the
stand-in bot) and ``chatlog run projector`` (which the page's reads and live updates
need). Their pids are recorded in ``<state dir>/demo-page.json``; the next demo replaces
them, and ``python -m dev.demo_page stop`` (``make demo-stop``, also run by
``make services-stop``) stops exactly those pids, as `dev.services` stops its own.

The gateway listens on 127.0.0.1 only (``--dev`` refuses any other address): its login
gives anyone any user's token, which is what a demo on one's own machine wants and what
production must never have.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from chatlog.local_stack import resolve_state_dir
from dev.services.state import (
    ServiceError,
    free_ports,
    is_running,
    port_open,
    spawn_detached,
    stop_processes,
    tail,
)

__all__ = ["DEFAULT_PORT", "PageProcesses", "main", "start_page", "stop_page"]

DEFAULT_PORT = 8000
"""The port the page is served on when it is free (`chatlog serve`'s own default)."""

STATE_FILE = "demo-page.json"
_LOG_DIR = "demo-page"
_PROJECTOR_MARKER = " run projector"


@dataclass(frozen=True)
class PageProcesses:
    """The running page: its URL, the two pids and where their logs go."""

    url: str
    port: int
    gateway_pid: int
    projector_pid: int
    log_dir: str

    def targets(self) -> list[tuple[int, str]]:
        """(pid, marker) of each process, as `stop_processes` checks them."""
        return [
            (self.gateway_pid, f" serve --port {self.port} --dev"),
            (self.projector_pid, _PROJECTOR_MARKER),
        ]


def start_page(
    *,
    command: str,
    env: Mapping[str, str],
    state_dir: Path,
    port: int | None = None,
    timeout: float = 60.0,
) -> PageProcesses:
    """Start the page's gateway and projector with `command` (``chatlog``) in `env`;
    return once the gateway answers. A page left by an earlier demo is stopped first.

    `port` None: `DEFAULT_PORT` when it is free, else any free port; 0: any free port.
    """
    stop_page(state_dir)
    if port is None:
        port = DEFAULT_PORT if not port_open(DEFAULT_PORT) else 0
    if port == 0:
        (port,) = free_ports(1)
    log_dir = state_dir / _LOG_DIR
    projector = spawn_detached(
        [command, "run", "projector"], log_file=log_dir / "projector.log", env=env
    )
    gateway = spawn_detached(
        [command, "serve", "--port", str(port), "--dev", "--bot", "echo"],
        log_file=log_dir / "serve.log",
        env=env,
    )
    page = PageProcesses(f"http://127.0.0.1:{port}/", port, gateway, projector, str(log_dir))
    # Recorded before the wait, so that a failed or interrupted start can still be stopped.
    (state_dir / STATE_FILE).write_text(json.dumps(asdict(page)) + "\n", encoding="utf-8")
    try:
        _wait_ready(page, timeout=timeout)
    except BaseException:
        stop_page(state_dir)
        raise
    return page


def stop_page(state_dir: Path) -> PageProcesses | None:
    """Stop the page recorded in `state_dir` (only its own pids); what was recorded."""
    path = state_dir / STATE_FILE
    try:
        page = PageProcesses(**json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise ServiceError(f"{path} is not a record of the demo's page ({exc}); delete it") from exc
    stop_processes(page.targets())
    path.unlink(missing_ok=True)
    return page


def _wait_ready(page: PageProcesses, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    log_dir = Path(page.log_dir)
    while not _answers(f"{page.url}healthz"):
        for pid, marker in page.targets():
            if not is_running(pid, marker=marker):
                raise ServiceError(
                    f"the chat page's process {pid} exited during start-up; its logs:\n"
                    f"{tail(log_dir / 'serve.log')}\n{tail(log_dir / 'projector.log')}"
                )
        if time.monotonic() > deadline:
            raise ServiceError(
                f"chatlog serve did not answer at {page.url} within {timeout:g} s; "
                f"its log:\n{tail(log_dir / 'serve.log')}"
            )
        time.sleep(0.1)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as answer:  # noqa: S310 - our http URL
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dev.demo_page stop``: stop the page the last demo left running."""
    parser = argparse.ArgumentParser(prog="python -m dev.demo_page", description=__doc__)
    parser.add_argument("action", choices=["stop"])
    parser.parse_args(argv)
    page = stop_page(resolve_state_dir())
    if page is None:
        print("no chat page of the demo was running")
    else:
        print(
            f"stopped the demo's chat page at {page.url} (pids {page.gateway_pid}, "
            f"{page.projector_pid})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
