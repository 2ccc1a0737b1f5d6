"""A local OpenAI-compatible server for the tests: chat completions and embeddings.

`LlmStub` serves ``POST /v1/chat/completions`` and ``POST /v1/embeddings`` on 127.0.0.1
from a thread, so the real `openai` client talks HTTP to it. Each request (of either
route) takes the next behaviour from a queue (`ok` when the queue is empty) and every
request body is recorded, parsed, with its headers::

    with LlmStub() as stub:
        stub.script(status(429, retry_after=0.1), status(500), ok())
        client = AsyncOpenAI(base_url=stub.base_url, api_key="test")
        ...
        assert stub.requests[-1]["max_completion_tokens"] == 200

`ok` answers a chat completion with a deterministic summary derived from the request: the
``#XX-NNNN`` identifiers found in its messages, and how many turns its JSON data message
holds. It answers an embeddings request with `stub_vector(text, size)` for each input, of
the request's ``dimensions`` or else `embedding_dimension` numbers.

`planned` makes it an agent's model that calls tools: it reads a plan from the request's
first user message (``plan: flight, hotel | dinner``: the calls of each turn, ``|``
between turns), counts the tool results the request already holds, and answers with the
next turn's calls to the request's first tool (one argument, its first parameter), or,
once every call has a result, with a text that lists the results. Its answer depends on
the request alone, so an agent resumed in another process gets the answer it would have
got.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import ssl
import struct
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "Behaviour",
    "LlmStub",
    "empty",
    "malformed",
    "ok",
    "planned",
    "slow",
    "status",
    "stub_vector",
]

_ID = re.compile(r"#[A-Z0-9]{2}-\d{4}")


@dataclass(frozen=True)
class Behaviour:
    """How the stub answers one request."""

    kind: str
    status: int = 200
    retry_after: float | None = None
    seconds: float = 0.0
    text: str | None = None
    quote_key: bool = False


def ok(text: str | None = None) -> Behaviour:
    """200 with a summary: `text`, or one derived from the request."""
    return Behaviour("ok", text=text)


def status(code: int, *, retry_after: float | None = None, quote_key: bool = False) -> Behaviour:
    """An error status with an OpenAI-style error body (and ``Retry-After`` if given);
    `quote_key`: the body quotes the request's API key back, as careless servers do."""
    return Behaviour("status", status=code, retry_after=retry_after, quote_key=quote_key)


def slow(seconds: float) -> Behaviour:
    """`ok`, after `seconds`."""
    return Behaviour("slow", seconds=seconds)


def malformed() -> Behaviour:
    """200 with a body that is not JSON."""
    return Behaviour("malformed")


def planned() -> Behaviour:
    """200 with the next tool calls of the plan in the request (see the module docstring)."""
    return Behaviour("planned")


def empty() -> Behaviour:
    """200 with a well-formed completion that has no choices (embeddings: no vectors)."""
    return Behaviour("empty")


def stub_vector(text: str, size: int) -> list[float]:
    """The vector `ok` answers for `text`: numbers in [-1, 1) drawn from its hash."""
    numbers: list[float] = []
    counter = 0
    while len(numbers) < size:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        numbers += [byte / 128 - 1 for byte in digest]
        counter += 1
    return numbers[:size]


def derived_summary(body: dict[str, Any]) -> str:
    """The summary `ok` answers with: the ids seen and the number of turns."""
    contents = [m.get("content") or "" for m in body.get("messages", [])]
    ids = sorted(set(_ID.findall(" ".join(contents))))
    turns = 0
    for message in body.get("messages", []):
        if message.get("role") == "user":
            try:
                turns = len(json.loads(message["content"]).get("turns", []))
            except (ValueError, AttributeError):
                turns = 0
    return f"Stub summary of {turns} turns. Ids: {', '.join(ids) or 'none'}."


class _Server(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5: many calls connecting at once (the
    # capacity benchmark keeps 64 in flight) would find connections refused.
    request_queue_size = 128


def planned_message(body: dict[str, Any]) -> dict[str, Any]:
    """The assistant message `planned` answers with: the next turn's tool calls, or the
    closing text once every planned call has a result."""
    messages = body.get("messages", [])
    asked = next((m.get("content") or "" for m in messages if m.get("role") == "user"), "")
    _, _, plan = asked.partition("plan:")
    turns = [[item.strip() for item in turn.split(",") if item.strip()] for turn in plan.split("|")]
    results = [m.get("content") or "" for m in messages if m.get("role") == "tool"]
    done = 0
    for turn in turns:
        if done == len(results):
            tool = body["tools"][0]["function"]
            argument = next(iter(tool["parameters"]["properties"]))
            calls = [
                {
                    "id": f"call_{item}",
                    "type": "function",
                    "function": {"name": tool["name"], "arguments": json.dumps({argument: item})},
                }
                for item in turn
            ]
            return {"role": "assistant", "content": None, "tool_calls": calls}
        done += len(turn)
    return {"role": "assistant", "content": "done: " + "; ".join(results)}


class LlmStub:
    """The server; a context manager that starts and stops it."""

    def __init__(self, *, tls: ssl.SSLContext | None = None, embedding_dimension: int = 8) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        # The size of the vectors `ok` answers when the request names none.
        self.embedding_dimension = embedding_dimension
        # What a request gets when nothing is scripted: `status(500)` takes the LLM down.
        self.default: Behaviour = ok()
        self._queue: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _handler(self))
        self._scheme = "http"
        if tls is not None:  # https, with the server certificate `tls` holds
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
            self._scheme = "https"
        # Join handler threads on close: a test leaves no thread behind.
        self._server.daemon_threads = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        """The URL to give the openai client."""
        host, port = self._server.server_address[:2]
        return f"{self._scheme}://{host!s}:{port}/v1"

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next requests, in order."""
        with self._lock:
            self._queue.extend(behaviours)

    def __enter__(self) -> LlmStub:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()  # wakes `slow` handlers, so closing joins them at once
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _next(self, body: dict[str, Any], headers: dict[str, str]) -> Behaviour:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            return self._queue.popleft() if self._queue else self.default


def _handler(stub: LlmStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            if self.path not in _ROUTES:
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            body = json.loads(raw)
            behaviour = stub._next(body, {k.lower(): v for k, v in self.headers.items()})
            # The client may have given up (a timeout test): then there is no one to answer.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._answer(behaviour, body)

        def _answer(self, behaviour: Behaviour, body: dict[str, Any]) -> None:
            embeddings = self.path == "/v1/embeddings"
            if behaviour.kind == "status":
                headers = {}
                if behaviour.retry_after is not None:
                    headers["Retry-After"] = str(behaviour.retry_after)
                message = f"stub error {behaviour.status}"
                if behaviour.quote_key:
                    message += f": incorrect API key {self.headers.get('Authorization', '')}"
                error = {"message": message, "type": "stub"}
                self._send(behaviour.status, {"error": error}, headers)
            elif behaviour.kind == "malformed":
                self._send_raw(200, b'{"id": "chatcmpl-stub", "choices": [')
            elif behaviour.kind == "empty":
                self._send(200, _embeddings(body, 0) if embeddings else _completion(body, None))
            elif behaviour.kind == "planned":
                # An agent's client keeps its connection for the next turn; closing it
                # here lets the stub's close join every handler thread at once.
                message = planned_message(body)
                self._send(200, _completion(body, message), {"Connection": "close"})
            else:
                if behaviour.kind == "slow" and stub._stopping.wait(behaviour.seconds):
                    return
                if embeddings:
                    self._send(200, _embeddings(body, stub.embedding_dimension))
                else:
                    text = behaviour.text or derived_summary(body)
                    self._send(200, _completion(body, {"role": "assistant", "content": text}))

        def _send(self, code: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            self._send_raw(code, json.dumps(payload).encode(), headers)

        def _send_raw(self, code: int, data: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler


_ROUTES = ("/v1/chat/completions", "/v1/embeddings")


def _embeddings(body: dict[str, Any], default_size: int) -> dict[str, Any]:
    """An embeddings answer: `stub_vector` of each input (none when `default_size` is 0)."""
    texts = body.get("input", [])
    texts = [texts] if isinstance(texts, str) else texts
    size = body.get("dimensions") or default_size
    data = []
    for index, text in enumerate(texts if default_size else []):
        vector = stub_vector(text, size)
        if body.get("encoding_format") == "base64":  # the openai client's default
            packed = struct.pack(f"<{len(vector)}f", *vector)
            embedding: Any = base64.b64encode(packed).decode()
        else:
            embedding = vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    # Listed last first: the order that counts is `index`'s, which a client must follow.
    data.reverse()
    tokens = sum(len(text) for text in texts) // 4
    return {
        "object": "list",
        "data": data,
        "model": body.get("model", "stub"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _completion(body: dict[str, Any], message: dict[str, Any] | None) -> dict[str, Any]:
    prompt = sum(len(m.get("content") or "") for m in body.get("messages", [])) // 4
    choices = []
    completion = 0
    if message is not None:
        said = message.get("content") or json.dumps(message.get("tool_calls"))
        completion = max(1, len(said) // 4)
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        choices.append({"index": 0, "message": message, "finish_reason": finish})
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": body.get("model", "stub"),
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }
