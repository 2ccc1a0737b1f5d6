"""The demo (`make demo`, `python -m chatlog.demo`): a support desk's chats, end to end.

What does it show? The problem chatlog exists for: many users chatting at once, and no
user ever seeing another's conversation. Forty customers open three hundred support
chats; eight threads publish them concurrently, as the workers of a chat back end would.
Every chat is about one order whose number (say ``#A7-1042``) appears in no other chat,
a canary: if any context ever holds a number that is not its own, sessions got mixed.

The run uses the real parts on the local stack: the producer, a projector running as a
child process (``chatlog run projector``, stopped with SIGTERM at the end whatever
happens), and the Redis reader. It then checks, and says so in one line each, that every
session holds exactly its own messages in order (isolation) and that a context read right
after an append contains it (read-your-writes), and prints the commands to look further.

Each run writes to a fresh topic and Redis prefix (``chatlog.demo.<time>-<random>``),
so runs never mix; they are left in place for those commands to read.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from chatlog import wiring
from chatlog.cli_read import context_lines, session_rows
from chatlog.client import ChatLog
from chatlog.settings import Settings
from producers.commands import new_event
from projections.context import Context
from schemas.errors import ChatlogError
from schemas.events import SessionStarted
from schemas.position import Position

__all__ = ["main"]

CANARY = re.compile(r"#[A-Z][0-9]-[0-9]{4}")
_LABEL = 12
_STOP_TIMEOUT_S = 15.0

USERS = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
    "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter",
    "yasmin", "zoe", "amir", "bea", "chen", "dara", "eli", "fatima", "goran", "hana",
    "ines", "jonas", "kofi", "lena", "mateo", "noor", "oskar", "priya", "quinn", "rosa",
    "sven",
]  # fmt: skip
ITEMS = [
    "trail shoe", "coffee grinder", "desk lamp", "rain jacket", "blender",
    "bluetooth speaker", "yoga mat", "office chair", "kettle", "backpack",
]  # fmt: skip


@dataclass(frozen=True)
class Scenario:
    """One kind of support request: how it opens and how the agent first answers."""

    title: str
    opening: str
    reply: str
    tool: str | None = None
    tool_result: str = ""


SCENARIOS = [
    Scenario(
        "Late delivery",
        "Hi, my order {order} was due on Monday and it still hasn't arrived.",
        "Sorry about the wait! Order {order} is with the carrier and should reach you "
        "within two days.",
        tool="lookup_order",
        tool_result='{{"order": "{order}", "status": "in transit", "eta_days": 2}}',
    ),
    Scenario(
        "Damaged item",
        "The {item} from order {order} arrived with a cracked casing.",
        "I'm sorry it arrived like that. I've started a free replacement for {order}; a "
        "courier will collect the damaged {item}.",
    ),
    Scenario(
        "Refund status",
        "I sent back the {item} from order {order} two weeks ago. Where is my refund?",
        "The return for {order} was received on Tuesday; the refund was issued and "
        "shows on your card within 3-5 working days.",
        tool="lookup_refund",
        tool_result='{{"order": "{order}", "refund": "issued", "amount_eur": 49.90}}',
    ),
    Scenario(
        "Exchange",
        "The {item} in order {order} is the wrong size. Can I exchange it?",
        "Of course. I've sent a prepaid exchange label for {order} to your email.",
    ),
    Scenario(
        "Cancellation",
        "Please cancel order {order}, I ordered the {item} by mistake.",
        "Done: order {order} is cancelled and you won't be charged.",
        tool="cancel_order",
        tool_result='{{"order": "{order}", "cancelled": true}}',
    ),
    Scenario(
        "Address change",
        "I need to change the delivery address of order {order}, I'm moving this week.",
        "No problem. Order {order} hasn't shipped yet, so I can update the address now. "
        "What is the new one?",
    ),
    Scenario(
        "Double charge",
        "My card was charged twice for order {order}.",
        "I see two transactions for {order}; the second is a pre-authorisation that is "
        "released automatically within a few days.",
        tool="lookup_payments",
        tool_result='{{"order": "{order}", "captured": 1, "authorised": 2}}',
    ),
    Scenario(
        "Missing item",
        "Order {order} arrived but the {item} was missing from the box.",
        "Apologies! I've shipped the missing {item} for {order} separately, by express.",
    ),
]

FOLLOW_UPS = [
    (
        "Can you send me the tracking link for {order}?",
        "Sure, the tracking link for {order} is on its way to your email.",
    ),
    (
        "Could it go to my office instead of my home?",
        "I can ask the carrier to redirect it; that may add one working day.",
    ),
    (
        "Will I get a notification when it ships?",
        "Yes, an email and a text message as soon as it leaves the warehouse.",
    ),
    (
        "And if nothing has arrived by Friday?",
        "Then write to us again quoting {order} and we will refund or replace it at once.",
    ),
    (
        "Can I add another {item} to the same order?",
        "Orders can't be changed once packed, but I can give you free shipping on a new one.",
    ),
    (
        "Do I need to be home to sign for it?",
        "No signature is needed for {order}; the driver can leave it in a safe place.",
    ),
    (
        "Where do I find the invoice for {order}?",
        "In your account under Orders, then Invoices; I've also emailed you a copy.",
    ),
    (
        "Is there a warranty on the {item}?",
        "Yes, two years from the delivery date, and the receipt for {order} is the proof.",
    ),
    (
        "Honestly this is the second time this happens.",
        "I understand, and I'm sorry. I've added a 10% voucher to your account.",
    ),
    (
        "What's the phone number of the carrier?",
        "You don't need to call them: I've opened a ticket with the carrier for {order}.",
    ),
    (
        "Can you confirm which email you have on file?",
        "It's the address you used to place {order}; you can change it in your profile.",
    ),
    (
        "How long do returns usually take to process?",
        "About a week from the day the parcel reaches our warehouse.",
    ),
]
CLOSING = (
    "That's all, thanks for your help!",
    "You're welcome! Quote {order} if you need us again. Have a great day.",
)


@dataclass(frozen=True)
class Turn:
    """One message of a script, as `ChatLog.append` takes it."""

    role: str
    content: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Script:
    """One support chat, written before it is published."""

    session_id: str
    user_id: str
    order: str
    title: str
    turns: tuple[Turn, ...]

    @property
    def has_tool_call(self) -> bool:
        """Whether the agent looked something up."""
        return any(t.role == "tool" for t in self.turns)


@dataclass
class Outcome:
    """What the demo measured and found; `failures` empty means every check passed."""

    failures: list[str] = field(default_factory=list)
    last: dict[str, Position] = field(default_factory=dict)
    example: Script | None = None


def write_scripts(rng: random.Random, *, users: int, sessions: int) -> list[Script]:
    """`sessions` chats among the first `users` customers, a quarter of them long."""
    names = USERS[:users] if users <= len(USERS) else [f"user{i:03d}" for i in range(users)]
    scripts = []
    for number in range(sessions):
        # The running number makes each canary unique; the letter and digit make it look real.
        order = f"#{rng.choice('ABCDEFGHKMNPRSTW')}{rng.randrange(10)}-{1000 + number:04d}"
        scenario = rng.choice(SCENARIOS)
        values = {"order": order, "item": rng.choice(ITEMS)}
        # A quarter of the chats drag on past the window of 20 messages (the overflow).
        pairs = rng.randint(9, 16) if rng.random() < 0.25 else rng.randint(1, 5)
        turns = [Turn("user", scenario.opening.format(**values))]
        if scenario.tool:
            turns += _tool_turns(rng, scenario, values)
        turns.append(Turn("assistant", scenario.reply.format(**values)))
        # No question twice until every one was asked, as in a real chat.
        asked = rng.sample(FOLLOW_UPS, k=min(pairs, len(FOLLOW_UPS)))
        asked += rng.choices(FOLLOW_UPS, k=pairs - len(asked))
        for question, answer in asked:
            turns += [Turn("user", question.format(**values))]
            turns += [Turn("assistant", answer.format(**values))]
        turns += [Turn("user", CLOSING[0]), Turn("assistant", CLOSING[1].format(**values))]
        scripts.append(
            Script(
                session_id=f"s-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}",
                user_id=rng.choice(names),
                order=order,
                title=f"{scenario.title} {order}",
                turns=tuple(turns),
            )
        )
    return scripts


def _tool_turns(rng: random.Random, scenario: Scenario, values: dict[str, str]) -> list[Turn]:
    assert scenario.tool is not None
    call_id = f"call_{rng.getrandbits(48):012x}"
    call = {
        "id": call_id,
        "name": scenario.tool,
        "arguments": json.dumps({"order_id": values["order"]}),
    }
    return [
        Turn("assistant", "", {"tool_calls": [call]}),
        Turn(
            "tool",
            scenario.tool_result.format(**values),
            {"name": scenario.tool, "tool_call_id": call_id},
        ),
    ]


# -- the projector child process ----------------------------------------------------


@contextmanager
def running_projector(settings: Settings, *, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`chatlog run projector` for `settings` as a child; SIGTERM (then kill) on the way out."""
    env = dict(os.environ)
    for name in ("kafka_bootstrap", "redis_url", "topic", "dlq_topic", "redis_prefix"):
        env[Settings.env_name(name)] = str(getattr(settings, name))
    env[Settings.env_name("projector_group")] = settings.projector_group
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log_file:
        # A session of its own: Ctrl-C in the terminal reaches the demo only, which then
        # stops the projector in order instead of both racing.
        child = subprocess.Popen(
            [sys.executable, "-m", "chatlog.cli", "run", "projector"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
    try:
        yield child
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit, so the `finally` blocks stop the projector."""

    def leave(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _projector_problem(child: subprocess.Popen[bytes], log_path: Path) -> str:
    if child.poll() is None:
        return f"the projector (pid {child.pid}) is running but did not keep up; see {log_path}"
    lines = log_path.read_text(errors="replace").strip().splitlines()[-3:]
    return f"the projector exited with {child.returncode}: " + " / ".join(lines)


# -- the steps ----------------------------------------------------------------------


def publish_all(log: ChatLog, scripts: Sequence[Script], *, threads: int) -> dict[str, Position]:
    """Publish every script, `threads` chats at a time; the last position of each."""

    def publish(script: Script) -> tuple[str, Position]:
        started = new_event(
            script.session_id, user_id=script.user_id, payload=SessionStarted(title=script.title)
        )
        position = log.producer.publish(started)
        for turn in script.turns:
            position = log.append(
                script.session_id,
                user_id=script.user_id,
                role=turn.role,
                content=turn.content,
                **turn.fields,
            )
        return script.session_id, position

    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="chat-worker")
    try:
        return dict(pool.map(publish, scripts))
    finally:
        # On Ctrl-C, chats not yet started are dropped rather than published.
        pool.shutdown(wait=True, cancel_futures=True)


def read_all(
    log: ChatLog, scripts: Sequence[Script], last: dict[str, Position], *, timeout: float
) -> dict[str, Context]:
    """Every session's context once the projection has its last append (read-your-writes)."""
    return {
        s.session_id: log.context(
            s.session_id, user_id=s.user_id, after=last[s.session_id], timeout=timeout
        )
        for s in scripts
    }


def isolation_problems(scripts: Sequence[Script], contexts: dict[str, Context]) -> list[str]:
    """Why a session's context is not exactly its own chat, for each session where it is not."""
    problems = []
    for script in scripts:
        ctx = contexts[script.session_id]
        expected = [t.content for t in script.turns]
        held = [m.content for m in ctx.messages]
        text = " ".join(held + [c.arguments for m in ctx.messages for c in m.tool_calls])
        canaries = set(CANARY.findall(text))
        if ctx.user_id != script.user_id:
            problems.append(f"{script.session_id}: owner {ctx.user_id}, not {script.user_id}")
        elif canaries != {script.order}:
            strangers = sorted(canaries - {script.order})
            problems.append(f"{script.session_id} ({script.order}) holds {strangers}")
        elif not held or held != expected[-len(held) :] or ctx.message_count != len(expected):
            problems.append(
                f"{script.session_id}: {ctx.message_count} messages, not the {len(expected)} "
                f"published, or not in their order"
            )
    return problems


def read_your_writes(
    log: ChatLog, scripts: Sequence[Script], *, rng: random.Random, samples: int, timeout: float
) -> tuple[list[float], list[str]]:
    """Append a follow-up and read the context right away; the waits and any misses."""
    waits, misses = [], []
    for number, script in enumerate(rng.choices(scripts, k=samples)):
        content = f"Sorry, one more thing about {script.order} (follow-up {number + 1})."
        position = log.append(
            script.session_id, user_id=script.user_id, role="user", content=content
        )
        started = time.perf_counter()
        ctx = log.context(
            script.session_id, user_id=script.user_id, after=position, timeout=timeout
        )
        waits.append(time.perf_counter() - started)
        newest = ctx.messages[-1] if ctx.messages else None
        if newest is None or newest.content != content or newest.offset != position.offset:
            misses.append(f"{script.session_id}: the context after {position} lacks its append")
    return waits, misses


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


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _cli_path() -> str:
    script = Path(sys.executable).with_name("chatlog")
    if not script.exists():
        return "chatlog"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


# -- main ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit status (0: every check passed)."""
    parser = argparse.ArgumentParser(prog="python -m chatlog.demo", description=__doc__)
    parser.add_argument("--users", type=int, default=40, help="customers (default 40)")
    parser.add_argument("--sessions", type=int, default=300, help="chats (default 300)")
    parser.add_argument("--threads", type=int, default=8, help="publishing threads (default 8)")
    parser.add_argument("--seed", type=int, help="for the same chats every run")
    args = parser.parse_args(argv)
    # Canaries are #X9-NNNN with NNNN = 1000 + the session's number: four digits each.
    if not (1 <= args.sessions <= 9000 and args.users >= 1 and args.threads >= 1):
        parser.error("--sessions must be 1-9000, --users and --threads at least 1")
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    # librdkafka's transient retry warnings would bury the demo's output (as in the CLI).
    logging.getLogger("chatlog.kafka").setLevel(logging.ERROR)
    try:
        with _sigterm_as_exit():
            return _run(args)
    except ChatlogError as exc:
        print(f"demo: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted; the projector was stopped", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    run = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    name = f"chatlog.demo.{run}"
    settings = Settings.from_env(
        topic=name,
        dlq_topic=f"{name}.dlq",
        redis_prefix=name,
        projector_group=f"chatlog-projector.demo.{run}",
    )
    rng = random.Random(args.seed)
    width = max(80, min(shutil.get_terminal_size((120, 24)).columns, 120))
    print(
        f"chatlog demo: {args.sessions} customer-support chats of {args.users} users, "
        f"published concurrently, projected, and checked\n"
    )
    reports = {r.name: r for r in wiring.create_topics(settings)}
    _say("kafka", f"{settings.kafka_bootstrap}  topic {settings.topic}")
    _say("", f"({reports[settings.topic].partitions} partitions, key = session id)")
    _say("redis", f"{settings.redis_url}  prefix {settings.redis_prefix}")
    log_path = settings.state_dir / "demo-projector.log"
    with running_projector(settings, log_path=log_path) as child:
        _say("projector", f"pid {child.pid}: chatlog run projector  (log: {log_path})")
        print()
        with ChatLog(
            producer=wiring.producer(settings),
            reader=wiring.reader(settings),
            read_timeout_s=settings.read_timeout_s,
        ) as log:
            outcome = _steps(log, args, settings, rng, width=width, child=child, log_path=log_path)
    stopped = child.returncode
    _say("projector", f"stopped by SIGTERM, exit status {stopped}")
    if stopped != 0:
        outcome.failures.append(f"the projector exited with {stopped}, not 0; see {log_path}")
    if outcome.failures:
        print("\ndemo FAILED:", file=sys.stderr)
        for failure in outcome.failures[:10]:
            print(f"  {failure}", file=sys.stderr)
        return 1
    _next_steps(settings, outcome)
    return 0


def _steps(
    log: ChatLog,
    args: argparse.Namespace,
    settings: Settings,
    rng: random.Random,
    *,
    width: int,
    child: subprocess.Popen[bytes],
    log_path: Path,
) -> Outcome:
    outcome = Outcome()
    scripts = write_scripts(rng, users=args.users, sessions=args.sessions)
    messages = sum(len(s.turns) for s in scripts)
    long_ones = sum(len(s.turns) > settings.window for s in scripts)

    started = time.perf_counter()
    outcome.last = publish_all(log, scripts, threads=args.threads)
    took = time.perf_counter() - started
    events = messages + len(scripts)
    _say(
        "published",
        f"{events:,} events in {took:.1f} s from {args.threads} threads: {events / took:,.0f}/s",
    )
    _say(
        "",
        f"{messages:,} messages in {len(scripts)} sessions, {long_ones} of them longer "
        f"than the window of {settings.window}",
    )

    started = time.perf_counter()
    try:
        contexts = read_all(log, scripts, outcome.last, timeout=30.0)
    except ChatlogError as exc:
        outcome.failures += [exc.message, _projector_problem(child, log_path)]
        return outcome
    _say(
        "projected",
        f"every session's last append was readable {_ms(time.perf_counter() - started)} later",
    )
    print()

    outcome.example = _show_contexts(scripts, contexts, settings, width=width)
    _show_sessions(log, scripts, width=width, outcome=outcome)

    problems = isolation_problems(scripts, contexts)
    clean = len(scripts) - len(problems)
    print(f"isolation: {clean}/{len(scripts)} sessions hold only their own messages")
    outcome.failures += problems

    waits, misses = read_your_writes(
        log, scripts, rng=rng, samples=100, timeout=settings.read_timeout_s
    )
    print(
        f"read-your-writes: {len(waits) - len(misses)}/{len(waits)} fresh appends were in the "
        f"next context read; wait p50 {_ms(_percentile(waits, 0.5))}, "
        f"p99 {_ms(_percentile(waits, 0.99))}"
    )
    outcome.failures += misses
    print()
    return outcome


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _show_contexts(
    scripts: Sequence[Script], contexts: dict[str, Context], settings: Settings, *, width: int
) -> Script:
    """Print a long session with a tool call and a short one; returns the long one."""
    long_one = next(
        (s for s in scripts if len(s.turns) > settings.window and s.has_tool_call), scripts[0]
    )
    short_one = next(
        (s for s in scripts if len(s.turns) <= 8 and s.user_id != long_one.user_id), scripts[-1]
    )
    _say("context", "two sessions as a chat back end reads them (after their last append):")
    for script in (long_one, short_one):
        ctx = contexts[script.session_id]
        lines = context_lines(ctx, ctx.to_openai())
        print()
        _indent([lines[0], *_excerpt(lines[1:], head=3, tail=4, what="messages")], width=width)
    print()
    return long_one


def _show_sessions(
    log: ChatLog, scripts: Sequence[Script], *, width: int, outcome: Outcome
) -> None:
    counts: dict[str, int] = {}
    for script in scripts:
        counts[script.user_id] = counts.get(script.user_id, 0) + 1
    user = max(counts, key=lambda u: counts[u])
    entries = log.sessions(user, limit=100)
    _say("sessions", f"{user}'s {len(entries)} sessions, most recent first:")
    rows = session_rows(entries)
    _indent(_excerpt(rows, head=7, tail=0, what="sessions"), width=width)
    listed = {e.session_id for e in entries}
    own = {s.session_id for s in scripts if s.user_id == user}
    if listed != own:
        outcome.failures.append(f"{user}'s session list is {sorted(listed)}, not {sorted(own)}")
    print()


def _next_steps(settings: Settings, outcome: Outcome) -> None:
    assert outcome.example is not None
    cli = _cli_path()
    session, user = outcome.example.session_id, outcome.example.user_id
    position = outcome.last[session]
    print("\nwhere to look next (this run's topic and Redis keys stay in place):")
    print(
        f"  export {Settings.env_name('topic')}={settings.topic} \\\n"
        f"         {Settings.env_name('dlq_topic')}={settings.dlq_topic} \\\n"
        f"         {Settings.env_name('redis_prefix')}={settings.redis_prefix}"
    )
    print(f"  {cli} context {session} --user {user} --after {position}")
    print(f"  {cli} sessions {user}")
    print(f"  {cli} tail {session} --no-follow")
    print(f"  {cli} run projector        # the projector this demo ran, in the foreground")
    print("  README.md: 'Using it from Python', 'Command line', 'Guarantees'")
    print("stop the local stack with `make services-stop`")


if __name__ == "__main__":
    sys.exit(main())
