"""A stand-in LLM of a fixed latency, in a process of its own, for the capacity scenario.

    python -m bench.llm_child 0.2      # every chat completion answered after 200 ms

It serves the tests' OpenAI-compatible stub (`tests.llm_stub.LlmStub`: ``POST
/v1/chat/completions`` on 127.0.0.1, a thread per request) with every answer delayed by
the given seconds, prints its base URL as the first line of stdout, and on SIGTERM
prints how many requests it answered as one JSON line. Why a process of its own: in the
benchmark's process its request threads would take CPU and the GIL from the summarizer
being measured, whose CPU seconds per summary are one of the figures.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from types import FrameType

from tests.llm_stub import LlmStub, slow


def main(argv: list[str]) -> int:
    """Serve until SIGTERM or SIGINT; `argv[0]` is the latency in seconds."""
    if len(argv) != 1:
        print("usage: python -m bench.llm_child SECONDS", file=sys.stderr)
        return 2
    try:
        latency = float(argv[0])
    except ValueError:
        print(f"the latency must be a number of seconds, not {argv[0]!r}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with LlmStub() as stub:
        stub.default = slow(latency)
        print(stub.base_url, flush=True)
        stop.wait()
        answered = len(stub.requests)
    print(json.dumps({"requests": answered}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
