"""A writer process for `test_key_races.py`: each user's first messages, at a given instant.

Run as ``python -m tests.system.key_race_writer NAME BARRIER USERS MESSAGES`` with the
settings in its environment (`tests.processes.chatlog_env`). It builds its producer
first (the slow part: imports, connections, the topic checks), says so by creating
``BARRIER/ready-NAME``, and waits for ``BARRIER/go``, which holds a wall-clock start time
and the interval between users. User ``u<i>`` is started at ``start + i * interval`` by
every writer, so that the writers' first appends of a user, each of which makes the
user's key when the directory has none yet, fall within a millisecond or two of each
other. Each acknowledged append is printed as one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from chatlog import wiring
from chatlog.settings import Settings


def main(name: str, barrier: Path, users: int, messages: int) -> None:
    settings = Settings.from_env()
    with wiring.producer(settings, flush_on_sigterm=False) as producer:
        (barrier / f"ready-{name}").touch()
        go = barrier / "go"
        deadline = time.monotonic() + 120
        while not go.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"{name}: no go file in {barrier} after 120 s")
            time.sleep(0.01)
        start, interval = (float(x) for x in go.read_text().split())
        for i in range(users):
            _sleep_until(start + i * interval)
            user, session = f"u{i}", f"race-{i}"
            for n in range(messages):
                content = f"{name}:{user}:{n}"
                position = producer.append(session, user_id=user, role="user", content=content)
                line = {
                    "user": user,
                    "session": session,
                    "partition": position.partition,
                    "offset": position.offset,
                    "content": content,
                }
                print(json.dumps(line), flush=True)


def _sleep_until(moment: float) -> None:
    """Sleep to within a few milliseconds of wall-clock `moment`, then spin to it: a
    plain sleep may overshoot by a scheduler tick, which would let one writer's key win."""
    while (left := moment - time.time()) > 0.005:
        time.sleep(left - 0.004)
    while time.time() < moment:
        pass


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
