"""The demo (`make demo`, `python -m dev.demo`): a support desk's chats, end to end.

What does it show? The problem chatlog exists for: many users chatting at once, and no
user ever seeing another's conversation. Forty customers open three hundred support
chats; eight threads publish them concurrently, as the workers of a chat back end would.
Every chat is about one order whose number (say ``#A7-1042``) appears in no other chat.

Then one customer's long chat (``dev/long_chat.txt``), over a hundred turns in four
visits about a leaking espresso machine, shows the rolling summary: the turns that leave
the window are folded into the session's summary as the chat goes on, so the prompt
stays small however long the chat grows. The demo prints the summary, how many turns it
covers and what the prompt costs against the whole chat.

Then semantic recall (docs/recall.md), when the local stack has a Redis with the query
engine (`make services` starts Redis Stack): ``chatlog run embedder`` runs beside the
projector and the summarizer and embeds every turn into the recall index, and the demo
asks for something the customer of the long chat learnt in its first visit, which
neither the window nor the summary holds any more; `ChatLog.context(..., recall=...)`
finds it, with its score, and the demo prints the `chatlog recall` command that asks the
same. Without such a Redis the demo says that recall is skipped, and why.

Last, one customer is exported and erased: the demo shows a message of theirs as it
rests in Kafka and in Redis (ciphertext under their own key), exports their sessions
from the log (`ChatLog.export_user`), calls `ChatLog.erase_user`, and shows that their
sessions now answer "erased" while every other customer's read as before; then the
audit trail's records of the export and the erasure (`chatlog audit --user ...
--verify`), which name the customer by a pseudonym only, and that its chains hold.

It uses only what an application would: `ChatLog` to append, read and recall,
`chatlog.wiring.create_topics`, and the ``chatlog`` command: ``chatlog run projector``,
``chatlog run summarizer`` (and ``chatlog run embedder``) as child processes (the offline
extractive summarizer unless ``CHATLOG_LLM_BASE_URL`` names an LLM; all stopped with
SIGTERM at the end whatever happens), ``chatlog tail`` to count the summaries in the log,
and the CLI's own formatting for contexts, session lists and recalled turns. What the
demo shows is checked by tests: isolation and the long chat's summary by
``tests/integration/test_support_chats.py``, read-your-writes by ``test_projection.py``,
recall by ``test_recall.py``. The demo ends with one sanity line and the commands to look
further.

Last, it leaves the chat page running on this run's data, as it leaves the stack up
(`dev.demo_page`: ``chatlog serve --dev --bot echo`` and a projector, detached), and
prints its URL and a ``curl`` line with a token for one of the customers.
``make demo-stop`` stops them; ``make services-stop`` stops them and the stack.

Each run writes to a fresh topic and Redis prefix (``chatlog.demo.<time>-<random>``),
so runs never mix; they are left in place for those commands to read.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import random
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from confluent_kafka import TopicPartition
from pydantic import SecretStr

from chatlog import (
    ChatLog,
    ChatlogError,
    ConfigError,
    Context,
    MissingExtra,
    OutcomeUnknown,
    Position,
    Settings,
    wiring,
)
from chatlog.cli.output import context_lines, session_rows
from chatlog.cli.privacy import audit_lines, verify_lines
from chatlog.cli.recall import recall_rows
from chatlog.gateway.tokens import TokenIssuer
from chatlog.logs import setup_logging
from chatlog.processors.kafka_audit import read_audit
from chatlog.processors.kafka_consumer import groupless_consumer
from chatlog.schemas.events import ConversationEvent, MessageAppended
from chatlog.schemas.master_keys import user_pseudonyms
from chatlog.schemas.secrets import redacted_url
from dev import demo_page
from dev.demo_chats import Script, read_long_chat, write_scripts
from dev.services.state import ServiceError, free_ports

__all__ = ["main"]

_LABEL = 12
_STOP_TIMEOUT_S = 15.0
# Per visit of the long chat; the first wait includes the summarizer's start and backlog.
_SUMMARY_TIMEOUT_S = 60.0
# The prompt budget of the long chat's context: its summary and every turn held fit.
_PROMPT_TOKENS = 2_000
# What the long chat's customer might ask next. The answer was given in the first visit
# (dev/long_chat.txt): neither the window nor the summary holds it by the last one (the
# summary names the cities, not what was said of them). The offline model ranks both
# turns of that answer in its first 3 (k).
RECALL_QUERY = "If the new one breaks, can I get a loan machine?"
_RECALL_FACT = "loan machine"
_RECALL_K = 3
# The embedder runs beside the chats; it is usually caught up by the time the long chat
# is summarized, and this bounds the wait when it is not.
_RECALL_TIMEOUT_S = 30.0


class DemoFailed(Exception):
    """A step did not do what the demo shows; the message says which, and why."""


# -- the chatlog command ------------------------------------------------------------


def chatlog_command() -> str:
    """The ``chatlog`` command installed beside this Python (`make venv`), else on PATH."""
    beside = Path(sys.executable).with_name("chatlog")
    found = str(beside) if beside.exists() else shutil.which("chatlog")
    if found is None:
        raise DemoFailed("the `chatlog` command is not installed; run `make venv`")
    return found


def chatlog_env(settings: Settings) -> dict[str, str]:
    """This environment, with the demo's topic, Redis prefix, consumer groups and recall."""
    env = dict(os.environ)
    for name in (
        *("kafka_bootstrap", "redis_url", "topic", "dlq_topic", "keys_topic", "audit_topic"),
        *("redis_prefix", "recall", "recall_redis_url"),
        *("projector_group", "summarizer_group", "embedder_group", "master_key_file"),
    ):
        value = getattr(settings, name)
        if isinstance(value, bool):
            env[Settings.env_name(name)] = str(value).lower()
        elif value is not None:
            env[Settings.env_name(name)] = str(value)
    return env


def with_recall(overrides: dict[str, Any]) -> tuple[Settings, str | None]:
    """The demo's settings (`overrides` over the environment's) with recall on when a
    Redis with the query engine is known; else with recall off, and why it is skipped."""
    try:
        on = Settings.from_env(**overrides, recall=True)
        client = wiring.recall_client(on)
        try:
            wiring.check_recall(on, client)  # the query engine, as the embedder checks it
        finally:
            client.close()
    except (ConfigError, MissingExtra) as exc:
        off = Settings.from_env(**overrides, recall=False)
        if isinstance(exc, MissingExtra) or off.recall_redis_url is not None:
            return off, str(exc)
        return off, (
            f"no Redis with the query engine is known: CHATLOG_RECALL_REDIS_URL is not set, "
            f"and the read-model's Redis ({redacted_url(off.redis_url)}) has none; `make "
            f"services` starts Redis Stack for it"
        )
    return on, None


@dataclass(frozen=True)
class Child:
    """A `chatlog run <name>` child process and the file its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_url: str  # its /metrics, /livez and /readyz (CHATLOG_METRICS_PORT)

    def problem(self) -> str:
        """Why it may not have done its part, for a failure message."""
        if self.process.poll() is None:
            return f"the {self.name} (pid {self.process.pid}) is running; see {self.log_path}"
        lines = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
        return f"the {self.name} exited with {self.process.returncode}: " + " / ".join(lines)


@contextmanager
def running_children(settings: Settings, names: Sequence[str]) -> Iterator[dict[str, Child]]:
    """`chatlog run <name>` for `settings`, each as a child; SIGTERM (then kill) on the way out."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    command, env = chatlog_command(), chatlog_env(settings)
    children: dict[str, Child] = {}
    ports = free_ports(len(names))
    try:
        for name, port in zip(names, ports, strict=True):
            env[Settings.env_name("metrics_port")] = str(port)
            log_path = settings.state_dir / f"demo-{name}.log"
            with log_path.open("wb") as log_file:
                # A session of its own: Ctrl-C in the terminal reaches the demo only, which
                # then stops the children in order instead of all of them racing.
                process = subprocess.Popen(  # noqa: S603 - our own CLI, names from this module
                    [command, "run", name],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    start_new_session=True,
                )
            children[name] = Child(name, process, log_path, f"http://127.0.0.1:{port}")
        yield children
    finally:
        # Signalled together, they stop side by side: the summarizer takes a second or so.
        running = [c.process for c in children.values() if c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def summaries_in_log(settings: Settings, session_id: str) -> list[dict[str, Any]]:
    """The session's `SummaryUpdated` payloads in the log, oldest first (`chatlog tail`)."""
    tail = subprocess.run(  # noqa: S603 - our own CLI, names from this module
        # The demo reads as the operator: whoever owns the session (audited as such).
        [chatlog_command(), "tail", session_id, "--operator", "--no-follow", "--json"],
        env=chatlog_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if tail.returncode != 0:
        raise DemoFailed(f"chatlog tail {session_id} failed: {tail.stderr.strip()}")
    events = [json.loads(line) for line in tail.stdout.splitlines()]
    return [e["payload"] for e in events if e["type"] == "SummaryUpdated"]


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit, so the `finally` blocks stop the children."""

    def leave(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- the steps ----------------------------------------------------------------------


def stored_once(call: Callable[[], Position]) -> Position:
    """`call`'s position, as a chat back end should publish: an event whose outcome is
    unknown (`OutcomeUnknown`, e.g. a retried send the broker acknowledged without its
    position) is sent again as the same event, which the projection keeps once."""
    for attempt in range(3):
        try:
            return call()
        except OutcomeUnknown:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def append(log: ChatLog, session_id: str, **message: Any) -> Position:
    """`log.append` with the caller's own message id, so that a retry is the same message."""
    message.setdefault("message_id", str(uuid.uuid4()))
    return stored_once(lambda: log.append(session_id, **message))


def start(log: ChatLog, script: Script) -> Position:
    """Start the script's session; starting again is a retitle to the same title, so a
    retry changes nothing."""
    return stored_once(
        lambda: log.start_session(script.session_id, user_id=script.user_id, title=script.title)
    )


def publish(log: ChatLog, script: Script) -> Position:
    """Start the script's session (its title) and append its turns; the last position."""
    position = start(log, script)
    for turn in script.turns:
        position = append(
            log,
            script.session_id,
            user_id=script.user_id,
            role=turn.role,
            content=turn.content,
            **turn.fields,
        )
    return position


def publish_all(log: ChatLog, scripts: Sequence[Script], *, threads: int) -> list[Position]:
    """Publish every script, `threads` chats at a time; the last position of each."""
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="chat-worker")
    try:
        return list(pool.map(lambda script: publish(log, script), scripts))
    finally:
        # On Ctrl-C, chats not yet started are dropped rather than published.
        pool.shutdown(wait=True, cancel_futures=True)


def wait_for_summary(
    log: ChatLog, script: Script, last: Position, *, threshold: int, summarizer: Child
) -> tuple[Context, float]:
    """The chat's context once it has `last` and fewer than `threshold` turns wait for a
    summary; and how long that took.

    That state is final: the summarizer asks for a summary only at `threshold` turns past
    the window, and the projector drops the turns a summary covers.
    """
    started = time.perf_counter()
    while True:
        ctx = log.context(script.session_id, user_id=script.user_id, after=last)
        waited = time.perf_counter() - started
        if len(ctx.messages) - len(ctx.window) < threshold:
            return ctx, waited
        if summarizer.process.poll() is not None or waited > _SUMMARY_TIMEOUT_S:
            raise DemoFailed(f"the long chat was not summarized; {summarizer.problem()}")
        time.sleep(0.05)


# -- output -------------------------------------------------------------------------


def _say(label: str, text: str = "") -> None:
    print(f"{label:<{_LABEL}}{text}".rstrip(), flush=True)


def _indent(lines: Sequence[str], *, width: int) -> None:
    for line in lines:
        shown = " " * _LABEL + line
        print(shown if len(shown) <= width else shown[: width - 1] + "…")


def _excerpt(lines: Sequence[str], *, head: int, tail: int, what: str) -> list[str]:
    if len(lines) <= head + tail + 1:
        return list(lines)
    hidden = len(lines) - head - tail
    return [*lines[:head], f"  … {hidden} more {what} …", *lines[len(lines) - tail :]]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _wrapped(text: str, *, width: int) -> list[str]:
    """`text` folded to `width`, continuation lines indented under their bullet."""
    return [
        folded
        for line in text.splitlines()
        for folded in textwrap.wrap(line, width, subsequent_indent="  ") or [""]
    ]


# -- main ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit status (0: it showed everything it set out to)."""
    parser = argparse.ArgumentParser(prog="python -m dev.demo", description=__doc__)
    parser.add_argument("--users", type=int, default=40, help="customers (default 40)")
    parser.add_argument("--sessions", type=int, default=300, help="chats (default 300)")
    parser.add_argument("--threads", type=int, default=8, help="publishing threads (default 8)")
    parser.add_argument("--seed", type=int, help="for the same chats every run")
    parser.add_argument(
        "--page-port",
        type=int,
        help=f"the chat page's port (default {demo_page.DEFAULT_PORT} if free, else any; 0: any)",
    )
    args = parser.parse_args(argv)
    # Order numbers are #X9-NNNN with NNNN = 1000 + the session's number: four digits each.
    if not (1 <= args.sessions <= 9000 and args.users >= 1 and args.threads >= 1):
        parser.error("--sessions must be 1-9000, --users and --threads at least 1")
    # librdkafka's transient retry warnings would bury the demo's output: setup_logging
    # keeps them out, as in the CLI.
    setup_logging("demo", level=logging.WARNING)
    try:
        with _sigterm_as_exit():
            return _run(args)
    except (ChatlogError, DemoFailed) as exc:
        print(f"demo FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted; the processes it ran were stopped", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    run = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    name = f"chatlog.demo.{run}"
    overrides: dict[str, Any] = {
        "topic": name,
        "dlq_topic": f"{name}.dlq",
        # Its own keys topic too: the demo erases a user, and an erased id stays retired.
        "keys_topic": f"{name}.keys",
        # And its own audit trail, so that the listing at the end shows this run only.
        "audit_topic": f"{name}.audit",
        "redis_prefix": name,
        "projector_group": f"chatlog-projector.demo.{run}",
        "summarizer_group": f"chatlog-summarizer.demo.{run}",
        "embedder_group": f"chatlog-embedder.demo.{run}",
    }
    settings, recall_skipped = with_recall(overrides)
    overrides["recall"] = settings.recall
    recalled = "" if recall_skipped else ", and a fact from its first visit recalled"
    print(
        f"chatlog demo: {args.sessions} customer-support chats of {args.users} users, "
        f"published concurrently and projected; then one long chat summarized{recalled}\n"
    )
    reports = {r.name: r for r in wiring.create_topics(settings)}
    _say("kafka", f"{settings.kafka_bootstrap}  topic {settings.topic}")
    _say("", f"({reports[settings.topic].partitions} partitions, key = session id)")
    _say("redis", f"{settings.redis_url}  prefix {settings.redis_prefix}")
    if recall_skipped:
        _say("recall", f"skipped: {recall_skipped}")
    else:
        model = settings.embedding
        _say("recall", f"{redacted_url(settings.recall_redis)}  the recall index (query engine),")
        _say("", f"the offline model {model.model} ({model.dimension} numbers) unless set")
    names = ("projector", "summarizer") + (("embedder",) if settings.recall else ())
    with running_children(settings, names) as children:
        for child in children.values():
            _say(
                child.name, f"pid {child.process.pid}: chatlog run {child.name}  ({child.log_path})"
            )
            _say("", f"curl -s {child.metrics_url}/metrics | grep ^chatlog_   # while it runs")
        print()
        with ChatLog.from_env(**overrides) as log:
            example, long_chat = _steps(log, args, settings, children)
        _say("metrics", _scraped(children["projector"].metrics_url))
    for child in children.values():
        _say(child.name, f"stopped by SIGTERM, exit status {child.process.returncode}")
        if child.process.returncode != 0:
            raise DemoFailed(child.problem())
    _next_steps(settings, example, long_chat)
    _chat_page(settings, example, port=args.page_port)
    print(
        "stop the chat page with `make demo-stop`, it and the local stack with `make services-stop`"
    )
    return 0


def _steps(
    log: ChatLog, args: argparse.Namespace, settings: Settings, children: dict[str, Child]
) -> tuple[Context, Script]:
    """Publish, read back and show; the example context and the long chat for what's next."""
    rng = random.Random(args.seed)
    width = max(80, min(shutil.get_terminal_size((120, 24)).columns, 120))
    scripts = write_scripts(rng, users=args.users, sessions=args.sessions)
    messages = sum(len(s.turns) for s in scripts)

    started = time.perf_counter()
    last = publish_all(log, scripts, threads=args.threads)
    took = time.perf_counter() - started
    events = messages + len(scripts)
    _say("published", f"{events:,} events in {took:.1f} s from {args.threads} threads")
    _say("", f"{messages:,} messages in {len(scripts)} sessions, {events / took:,.0f} events/s")

    started = time.perf_counter()
    try:
        contexts = [
            log.context(s.session_id, user_id=s.user_id, after=position, timeout=30.0)
            for s, position in zip(scripts, last, strict=True)
        ]
    except ChatlogError as exc:
        raise DemoFailed(f"{exc}; {children['projector'].problem()}") from exc
    took = time.perf_counter() - started
    _say("projected", f"every session's last append was readable {_ms(took)} later")
    print()

    # A chat that ran past the window and called a tool, and a short one of another user.
    pairs = list(zip(scripts, contexts, strict=True))
    example = next(
        (c for s, c in pairs if len(s.turns) > settings.window and s.has_tool_call), contexts[0]
    )
    short = next(
        (c for c in contexts if c.message_count <= 8 and c.user_id != example.user_id), contexts[-1]
    )
    _say("context", "two sessions as a chat back end reads them (after their last append):")
    for ctx in (example, short):
        lines = context_lines(ctx, ctx.to_openai())
        print()
        _indent([lines[0], *_excerpt(lines[1:], head=3, tail=4, what="messages")], width=width)
    print()

    busiest = max({s.user_id for s in scripts}, key=[s.user_id for s in scripts].count)
    entries = log.sessions(busiest, limit=100)
    _say("sessions", f"{busiest}'s {len(entries)} sessions, most recent first:")
    _indent(_excerpt(session_rows(entries), head=7, tail=0, what="sessions"), width=width)
    print()

    long_chat = _long_chat(log, settings, rng, width=width, summarizer=children["summarizer"])
    stale = [s.session_id for s, c in pairs if c.message_count != len(s.turns)]
    if stale:
        raise DemoFailed(f"sessions read back without all their messages: {stale[:5]}")
    if settings.recall:
        _recall(log, long_chat, width=width, embedder=children["embedder"])
    _erasure(log, settings, list(zip(scripts, last, strict=True)), keep=example.user_id)
    return example, long_chat


def _recall(log: ChatLog, script: Script, *, width: int, embedder: Child) -> None:
    """Recall, for the long chat's customer, what they were told in the first visit and
    the prompt no longer holds; waits (bounded) for the embedder to have indexed it."""
    started = time.perf_counter()
    while True:
        ctx = log.context(
            script.session_id, user_id=script.user_id, recall=RECALL_QUERY, recall_k=_RECALL_K
        )
        # The answer, not only the question that mentions it: the embedder may have
        # indexed one and not yet the other.
        if any(
            turn.role == "assistant" and _RECALL_FACT in turn.content.lower()
            for turn in ctx.recalled
        ):
            break
        if embedder.process.poll() is not None or time.perf_counter() - started > _RECALL_TIMEOUT_S:
            found = "; ".join(recall_rows(list(ctx.recalled))) or ctx.recall_error or "nothing"
            raise DemoFailed(
                f"recall did not find the long chat's {_RECALL_FACT!r} turns within "
                f"{_RECALL_TIMEOUT_S:.0f} s (it found: {found}); {embedder.problem()}"
            )
        time.sleep(0.1)
    waited = time.perf_counter() - started
    if any(_RECALL_FACT in (m.content or "").lower() for m in ctx.messages):
        raise DemoFailed(f"the long chat still holds its {_RECALL_FACT!r} turns: it changed?")
    kept = (
        f"the {len(ctx.messages)} turns the session holds do not keep that (its summary does)"
        if _RECALL_FACT in (ctx.summary or "").lower()
        else f"neither the {len(ctx.messages)} turns the session holds nor its summary keep that"
    )
    started = time.perf_counter()
    turns = log.recall(script.user_id, RECALL_QUERY, k=_RECALL_K)
    took = time.perf_counter() - started
    prompt = ctx.to_openai(max_tokens=_PROMPT_TOKENS)
    in_prompt = sum(ctx.count_tokens(m.get("content") or "") for m in prompt)

    first = f"chatlog run embedder embeds every turn it reads. In the first visit, {script.user_id}"
    _say("recall", first)
    _indent(
        _wrapped(f"was told where loan machines are lent; {kept}.", width=width - _LABEL),
        width=width,
    )
    _say("", "Asked about it, recall finds it by meaning:")
    _say(
        "",
        f"log.context({script.session_id!r}, user_id={script.user_id!r}, "
        f"recall={RECALL_QUERY!r}, recall_k={_RECALL_K})",
    )
    _indent(recall_rows(list(ctx.recalled)), width=width)
    _say(
        "",
        f"found {_ms(waited)} after asking; then log.recall({script.user_id!r}, ..., "
        f"k={_RECALL_K}): {len(turns)} turns in {_ms(took)}",
    )
    _say(
        "",
        f"to_openai(max_tokens={_PROMPT_TOKENS:,}): {len(prompt)} messages, ~{in_prompt:,} "
        f"tokens, the {len(ctx.recalled)} recalled turns quoted as data in one user message",
    )
    _say("", "the same from a shell: the `chatlog recall` line at the end")
    print()


def _erasure(
    log: ChatLog, settings: Settings, pairs: Sequence[tuple[Script, Position]], *, keep: str
) -> None:
    """Show one chat as it rests in Kafka and Redis (sealed), erase its user, read again."""
    script, position = next((s, p) for s, p in pairs if s.user_id != keep)
    user, session = script.user_id, script.session_id
    _redaction(log, settings, user, session)
    event = _record_at(settings, position)
    payload = event.payload
    if not isinstance(payload, MessageAppended) or event.sealed is None:
        raise DemoFailed(f"the record at {position} is not a sealed message: {event!r}")
    sealed = event.sealed.fields["content"]
    stored = json.loads(log.reader.client.lindex(log.reader.keys().messages(session), -1) or "{}")
    in_redis = stored["s"][2]["content"]  # the message's sealed fields: [event, key, fields]
    _say("sealed", f"{user}'s last message, {script.turns[-1].content[:48]!r}..., at rest:")
    _say("", f"kafka  content={payload.content!r}, sealed {sealed[:10].hex()}... ({len(sealed)} B)")
    _say("", f'redis  "c": {stored["c"]!r}, sealed {in_redis[:20]}... (the same, in base64)')

    exported = log.export_user(user)
    _say(
        "exported",
        f"log.export_user({user!r}): {len(exported['sessions'])} sessions, "
        f"{sum(len(s['messages']) for s in exported['sessions'])} messages, from the log",
    )
    erasure = log.erase_user(user)
    _say(
        "erased",
        f"log.erase_user({user!r}): {len(erasure.key_ids)} data key(s) destroyed, "
        f"{erasure.sessions_removed} sessions removed from Redis in {_ms(erasure.seconds)}"
        + (f", {erasure.vectors_removed} vectors from the recall index" if settings.recall else ""),
    )
    answers = []
    reads: dict[str, Callable[[], object]] = {
        "context": lambda: log.context(session, user_id=user),
        "as_of": lambda: log.context(session, user_id=user, as_of=position),
    }
    for name, read in reads.items():
        try:
            read()
        except ChatlogError as exc:
            answers.append(f"{name} -> {type(exc).__name__}")
        else:
            raise DemoFailed(f"{name} of {session} still answered after erasing {user}")
    if log.sessions(user):
        raise DemoFailed(f"{user} still has sessions listed after the erasure")
    other = next(s for s, _ in pairs if s.user_id == keep)
    if log.context(other.session_id, user_id=keep).message_count != len(other.turns):
        raise DemoFailed(f"{keep}'s session {other.session_id} changed when {user} was erased")
    _say("", f"then {', '.join(answers)}, sessions -> []; {keep}'s chats read as before")
    print()
    _audit_listing(settings, user)


def _audit_listing(settings: Settings, user: str) -> None:
    """What `chatlog audit --user <user> --verify` shows: the export and the erasure,
    the user named by a pseudonym, and every chain intact."""
    scan = read_audit(
        bootstrap_servers=settings.kafka_bootstrap,
        topic=settings.audit_topic,
        config=settings.kafka,
    )
    names = {
        str(m)
        for m in user_pseudonyms(wiring.key_provider(settings), tenant="default", user_id=user)
    }
    theirs = [(p, r) for p, r in scan.records if r.user in names]
    if not scan.intact or not any(r.action == "user_erased" for _, r in theirs):
        raise DemoFailed(f"the audit trail lacks {user}'s erasure or is broken: {scan.chains}")
    started = [pr for pr in theirs if pr[1].action == "session_created"]
    _say("audit", f"chatlog audit --user {user} --verify  ({len(theirs)} records; no user ids):")
    _indent([f"  ({len(started)} session_created records by start_session, then)"], width=200)
    rest = [pr for pr in theirs if pr[1].action != "session_created"]
    _indent(_excerpt(audit_lines(rest), head=4, tail=0, what="records"), width=200)
    _say("", verify_lines(scan)[-1])
    print()


def _redaction(log: ChatLog, settings: Settings, user: str, session: str) -> None:
    """Append a card number: the producer redacts it before anything stores it."""
    card = "4111 1111 1111 1111"
    typed = f"My card is {card}, please refund it"
    position = append(log, session, user_id=user, role="user", content=typed)
    read = log.context(session, user_id=user, after=position, timeout=30.0).messages[-1].content
    if settings.pii_mode != "off" and card in read:
        raise DemoFailed(f"the card number was stored as typed: {read!r}")
    _say("redacted", f"{user} typed {typed!r}")
    _say("", f"kafka and redis hold, readers get {read!r} (CHATLOG_PII_MODE={settings.pii_mode})")


def _record_at(settings: Settings, position: Position) -> ConversationEvent:
    """The event stored at `position`, decoded but not opened: as it rests in the log."""
    consumer = groupless_consumer(settings.kafka_bootstrap, settings.kafka, purpose="demo")
    try:
        consumer.assign([TopicPartition(settings.topic, position.partition, position.offset)])
        for _ in range(50):
            for message in consumer.consume(1, timeout=0.2):
                value = message.value()
                if message.error() is None and message.offset() == position.offset and value:
                    return wiring.codec(settings).decode(value)
    finally:
        consumer.close()
    raise DemoFailed(f"no record at {position} of {settings.topic}")


def _long_chat(
    log: ChatLog, settings: Settings, rng: random.Random, *, width: int, summarizer: Child
) -> Script:
    """Publish the long chat a visit at a time, show its summary and prompt; it."""
    script, visits = read_long_chat(rng)
    start(log, script)
    turns = iter(script.turns)
    waits = []
    for size in visits:
        for turn in itertools.islice(turns, size):
            position = append(
                log, script.session_id, user_id=script.user_id, role=turn.role, content=turn.content
            )
        # The visits are days apart in the story: the summarizer folds the overflow between.
        ctx, waited = wait_for_summary(
            log, script, position, threshold=settings.summary_threshold, summarizer=summarizer
        )
        waits.append(waited)
    summaries = summaries_in_log(settings, script.session_id)
    newest = max(summaries, key=lambda s: int(s["through_offset"]), default=None)
    covered = int(newest["covered_messages"]) if newest else 0
    held, window = len(ctx.messages), len(ctx.window)
    prompt = ctx.to_openai(max_tokens=_PROMPT_TOKENS)
    in_prompt = sum(ctx.count_tokens(m.get("content") or "") for m in prompt)
    whole = sum(ctx.count_tokens(t.content) for t in script.turns)

    _say(
        "long chat",
        f"{script.user_id}'s chat about one order: {len(script.turns)} messages over "
        f"{len(visits)} visits, appended turn by turn",
    )
    _say("", f"{len(summaries)} summaries in the log; the summarizer's wait after each visit:")
    _say("", f"{', '.join(map(_ms, waits))} (the first includes every chat above)")
    _say(
        "",
        f"{covered} turns covered by the summary, {held} kept in full "
        f"({window} window + {held - window} overflow)",
    )
    _say(
        "",
        f"to_openai(max_tokens={_PROMPT_TOKENS:,}): {len(prompt)} messages, ~{in_prompt:,} "
        f"tokens; the whole chat is ~{whole:,} ({in_prompt / whole:.0%})",
    )
    print()
    lines = context_lines(ctx, prompt)
    _indent([lines[0]], width=width)
    if newest is not None and ctx.summary:
        _indent([f"[summary by {newest['model']}]"], width=width)
        _indent(_wrapped(ctx.summary, width=width - _LABEL), width=width)
    turns_shown = lines[2:] if ctx.summary else lines[1:]
    _indent(_excerpt(turns_shown, head=0, tail=3, what="messages"), width=width)
    print()
    if covered + held != ctx.message_count or ctx.message_count != len(script.turns):
        raise DemoFailed(
            f"the long chat's {covered} summarized + {held} held turns are not its "
            f"{len(script.turns)}: turns were dropped, or summarized twice"
        )
    print(
        f"sanity: every session read back with all its messages; the long chat's "
        f"{len(script.turns)} turns = {covered} summarized + {held} held\n"
    )
    return script


def _scraped(url: str) -> str:
    """What the projector's /metrics and /readyz say now, in one line."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as answer:  # noqa: S310
            text = answer.read().decode()
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as answer:  # noqa: S310
            ready = answer.read().decode().strip()
    except OSError as exc:  # HTTPError (a 503) included
        return f"{url} did not answer as expected: {exc}"
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("chatlog_"))
    applied = float(values.get("chatlog_projector_events_applied_total", "0"))
    return f"the projector's {url}/metrics: {applied:,.0f} events applied; /readyz: {ready}"


def _next_steps(settings: Settings, example: Context, long_chat: Script) -> None:
    cli = chatlog_command()
    with contextlib.suppress(ValueError):
        cli = str(Path(cli).relative_to(Path.cwd()))
    session, user = example.session_id, example.user_id
    print("\nwhere to look next (this run's topic and Redis keys stay in place):")
    print(
        f"  export {Settings.env_name('topic')}={settings.topic} \\\n"
        f"         {Settings.env_name('dlq_topic')}={settings.dlq_topic} \\\n"
        f"         {Settings.env_name('keys_topic')}={settings.keys_topic} \\\n"
        f"         {Settings.env_name('audit_topic')}={settings.audit_topic} \\\n"
        f"         {Settings.env_name('redis_prefix')}={settings.redis_prefix}"
    )
    print(f"  {cli} context {session} --user {user} --after {example.position}")
    print(f"  {cli} sessions {user}")
    print(f"  {cli} tail {session} --operator --no-follow   # an operator's read: audited")
    print(f"  {cli} audit --verify   # the audit trail: who did what, chains verified")
    print(f"  {cli} context {long_chat.session_id} --user {long_chat.user_id}   # the long chat")
    print(f"  {cli} run projector        # the projector this demo ran, in the foreground")
    print(f"  {cli} run summarizer       # and the summarizer")
    if settings.recall:
        print(f"  {cli} run embedder         # and the embedder (CHATLOG_RECALL=true)")
        print(
            f"  CHATLOG_RECALL=true {cli} recall --user {long_chat.user_id} "
            f"{shlex.quote(RECALL_QUERY)}   # semantic recall"
        )
    print("  docs/python-api.md, docs/cli.md and docs/guarantees.md: what to read next")
    print()


def _chat_page(settings: Settings, example: Context, *, port: int | None) -> None:
    """Leave the chat page running on this run's data; print its URL and a curl line."""
    secret = _auth_secret(settings)
    env = {
        **chatlog_env(settings),
        Settings.env_name("auth_secret"): secret,
        # No embedder runs beside the page: its recall would miss every turn chatted there.
        Settings.env_name("recall"): "false",
    }
    try:
        page = demo_page.start_page(
            command=chatlog_command(), env=env, state_dir=settings.state_dir.resolve(), port=port
        )
    except ServiceError as exc:
        raise DemoFailed(f"the chat page did not start: {exc}") from exc
    user = example.user_id
    issuer = TokenIssuer.from_settings(
        settings.model_copy(update={"auth_secret": SecretStr(secret)})
    )
    token = issuer.mint(user, ttl_s=3600)
    logs = _shown_path(Path(page.log_dir))
    _say("chat page", f"{page.url}  left running for you (development mode, this run's data):")
    _say(
        "",
        f"chatlog serve --dev --bot echo (pid {page.gateway_pid}) and a projector "
        f"(pid {page.projector_pid}); logs in {logs}/",
    )
    _say("", f"sign in as {user} to see that customer's chats, or as anyone to chat with the")
    _say("", "echo bot; the development login gives anyone any user's token: never in production")
    _say("curl", f'curl -H "Authorization: Bearer {token}" {page.url}v1/sessions')
    _say("", f"({user}'s token, valid 1 hour; mint others with `chatlog token --user U` and")
    _say("", f"CHATLOG_AUTH_SECRET from {_shown_path(_secret_file(settings))} or your environment)")
    print()


def _secret_file(settings: Settings) -> Path:
    return settings.state_dir.resolve() / "demo-page" / "auth-secret"


def _auth_secret(settings: Settings) -> str:
    """CHATLOG_AUTH_SECRET if set, else the demo's own, kept in the state dir (0600) so
    that `chatlog token` can mint tokens the page's gateway accepts."""
    if settings.auth_secret is not None:
        return settings.auth_secret.get_secret_value()
    path = _secret_file(settings)
    with contextlib.suppress(FileNotFoundError):
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(secret + "\n", encoding="utf-8")
    return secret


def _shown_path(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
