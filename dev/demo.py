"""The demo (`make demo`, `python -m dev.demo`): a support desk's chats, end to end.

What does it show? The problem chatlog exists for: many users chatting at once, and no
user ever seeing another's conversation. Forty customers open three hundred support
chats; eight threads publish them concurrently, as the workers of a chat back end would.
Every chat is about one order whose number (say ``#A7-1042``) appears in no other chat,
a canary: if any context ever holds a number that is not its own, sessions got mixed.

Then one customer's long chat, over a hundred turns in four visits about a leaking
espresso machine, shows the rolling summary: the turns that leave the window are folded
into the session's summary as the chat goes on, so the prompt stays small however long
the chat grows. The demo prints the summary, how many turns it covers and what the
prompt costs against the whole chat.

The run uses the real parts on the local stack: the producer, a projector and a
summarizer running as child processes (``chatlog run projector`` and ``chatlog run
summarizer``, with the offline extractive summarizer unless ``CHATLOG_LLM_BASE_URL``
names an LLM; both stopped with SIGTERM at the end whatever happens), and the Redis
reader. It then checks, and says so in one line each, that every session holds exactly
its own messages in order (isolation), that a context read right after an append
contains it (read-your-writes), and that each turn of the long chat is either covered by
the summary or held in full, exactly once, and prints the commands to look further.

Each run writes to a fresh topic and Redis prefix (``chatlog.demo.<time>-<random>``),
so runs never mix; they are left in place for those commands to read.
"""

from __future__ import annotations

import argparse
import itertools
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
import textwrap
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupState,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from chatlog import wiring
from chatlog.cli.output import context_lines, session_rows
from chatlog.client import ChatLog
from chatlog.producers.commands import new_event
from chatlog.projections.context import Context
from chatlog.projections.redis_store import RedisViewStore
from chatlog.projections.view import SessionView, WindowPolicy
from chatlog.schemas.errors import BrokerUnavailable, ChatlogError, DecodeError
from chatlog.schemas.events import SessionStarted, SummaryUpdated
from chatlog.schemas.position import Position
from chatlog.settings import Settings

__all__ = ["main"]

CANARY = re.compile(r"#[A-Z][0-9]-[0-9]{4}")
_LABEL = 12
_STOP_TIMEOUT_S = 15.0
_SUMMARY_TIMEOUT_S = 30.0
_KAFKA_LOG = logging.getLogger("chatlog.kafka")
# The prompt budget of the long chat's context: its summary and every turn held fit.
_PROMPT_TOKENS = 2_000

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
    long_chat: Script | None = None


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


# -- the long chat -------------------------------------------------------------------

# One customer's chat about one order, over four visits in ten days: far longer than the
# window, so the summarizer folds its older turns into the rolling summary as it goes.
# Each visit alternates user and assistant, starting with the user; the last one ends on
# a question nobody has answered yet.
LONG_CHAT_USER = "hannah"
LONG_CHAT_TITLE = "Leaking espresso machine #BW-48213"
LONG_CHAT = (
    (  # Monday: the problem, and what can be done about it
        "Hi, this is Hannah Becker. My Brightwell Barista Pro from order #BW-48213 is "
        "leaking water.",
        "Hi Hannah, I'm Tom from Brightwell support, sorry to hear that. Let's find out where "
        "the water comes from. When did it start?",
        "It arrived on 3 March and started leaking two days later.",
        "Thanks. Does the water come from the front, under the drip tray, or from the back "
        "near the tank?",
        "From the back. There's a puddle after every second or third shot.",
        "That usually means the tank valve or the pump hose. I'll walk you through a few "
        "checks; it takes about ten minutes.",
        "OK, I have time now.",
        "Great. First, please switch the machine off, unplug it and let it cool for a minute.",
        "Done, it's unplugged.",
        "Now lift the water tank out and look at the small rubber valve at its bottom. Is it "
        "clean and seated flat?",
        "It looks clean. There's a bit of limescale around the edge.",
        "Wipe the limescale off with a damp cloth and push the tank back until it clicks.",
        "It clicked. Should I try a shot?",
        "Not yet. Please read me the serial number on the sticker under the drip tray first; "
        "I need it for the case.",
        "It says BP-2207-K.",
        "Thank you. Now plug it in and run one shot with no coffee in the portafilter.",
        "Running it now. Still a few drops at the back.",
        "Is the drip coming from the tank base or lower, from under the side panel?",
        "Lower, I think from under the side panel.",
        "Please take a photo of the area under the side panel and attach it here.",
        "Attached: photo_back_panel.jpg",
        "Thanks, I can see water on the pump bracket. That points at the pump hose, not at "
        "anything you did.",
        "Is it safe to keep using it?",
        "Please don't: water near the pump is a safety risk. Keep it unplugged for now.",
        "Can I fix the hose myself?",
        "I'd rather you didn't open it: the warranty covers this, and an opened machine "
        "complicates a return.",
        "How long is the warranty?",
        "Two years from delivery, so you're well within it.",
        "What are my options then?",
        "Three: a repair at our service centre, a replacement machine, or a full refund.",
        "How soon could a replacement arrive?",
        "The Barista Pro is out of stock until mid-April, so a replacement would take 5 to "
        "6 weeks.",
        "That's too long. What about the repair?",
        "A repair takes about 3 weeks including shipping both ways.",
        "Would I get a loan machine meanwhile? I live in Hamburg.",
        "Unfortunately not: loan machines are only offered in Berlin and Munich at the moment.",
        "Then I think I prefer a refund. Is that possible?",
        "Yes. The defect appeared within 30 days of delivery, so you're entitled to a full refund.",
        "Does that include the descaling kit I bought with it?",
        "The descaling kit (19.90 EUR) is on the same order; returned unopened, it is "
        "refunded too.",
        "It's unopened. And the shipping?",
        "The shipping of 12.50 EUR is refunded as well when the whole order goes back.",
        "I need to talk to my partner first. Can I come back tomorrow?",
        "Of course. Your case number is #CS-90417; quote it and any of us can pick it up.",
    ),
    (  # Tuesday: the refund is agreed and the pickup booked
        "Hi, Hannah Becker again, case #CS-90417.",
        "Welcome back Hannah, I'm Priya. I have your case here: the Barista Pro with the "
        "leaking pump hose.",
        "We decided: we'd like the full refund, please.",
        "Understood. I'll set up the return of order #BW-48213 for a full refund.",
        "What exactly will be refunded?",
        "The Barista Pro at 549.00 EUR, the descaling kit at 19.90 EUR and the shipping at "
        "12.50 EUR: 581.40 EUR in total.",
        "That's right. Will it go back to my card?",
        "Yes, to the Visa card ending 4417 that paid for the order.",
        "How do I send the machine back? It weighs almost 10 kg.",
        "You don't carry it anywhere: a courier collects it from your home. Which day suits you?",
        "Thursday or Friday would work.",
        "I can book DHL for Thursday 14 March between 9:00 and 13:00. Shall I?",
        "Thursday morning is fine.",
        "Booked: DHL pickup on Thursday 14 March, 9:00 to 13:00, at your delivery address.",
        "Is that still Elbchaussee 112?",
        "Yes, Elbchaussee 112, 22763 Hamburg, the address on the order.",
        "I threw away the original box. Is that a problem?",
        "Not at all. The courier brings a padded box; just have the machine ready to pack.",
        "Do I need to print a label?",
        "No, the courier brings one. Your return number is RMA-77120; it's in your email too.",
        "Should I empty the water tank and the drip tray?",
        "Yes please, empty both and let them dry overnight so nothing leaks on the way.",
        "And the portafilter and the milk jug?",
        "Pack them with the machine: the refund is for the complete set.",
        "How long does the refund take after the pickup?",
        "The machine reaches our warehouse in about 2 working days; we refund the same day, "
        "and your bank takes 3 to 5 working days.",
        "So I should see the money by the end of next week?",
        "Most likely by Wednesday 20 March, at the latest by Friday 22 March.",
        "Honestly, I'm disappointed. I saved up for this machine.",
        "I understand, and I'm sorry. I've added a 25 EUR voucher to your account for the trouble.",
        "Thank you, that's kind. Does the voucher expire?",
        "It's valid for 12 months and works on anything in the shop.",
        "Can you send me all of this by email?",
        "Done: the pickup time, RMA-77120 and the refund amount are on their way to you.",
    ),
    (  # Thursday: the pickup
        "Hello, it's Hannah again. The courier hasn't come and it's 12:40.",
        "Hi Hannah, Tom here. Let me check the DHL booking for RMA-77120.",
        "Thanks, I have to leave at 13:30.",
        "The driver is running late: the tracking shows your stop at about 13:10.",
        "OK, I'll wait until 13:30 but not longer.",
        "Thank you. If he misses you, I'll rebook for Friday morning at no cost.",
        "He just rang the bell!",
        "Perfect timing. Please ask him to scan the label so the pickup is recorded.",
        "Done, he scanned it and took the box.",
        "I can see the scan: parcel JJD0002249 is on its way to our warehouse in Kassel.",
        "Do I get a receipt?",
        "The scan is your receipt, and I've emailed you a pickup confirmation with the parcel "
        "number.",
        "How will I know when it arrives?",
        "You'll get an email when the warehouse checks it in, and another when the refund is "
        "issued.",
        "What if they say I damaged the machine?",
        "They won't: the leak is on your case with your photo, and our technician confirmed "
        "a hose defect.",
        "OK, that reassures me.",
        "Good. Is there anything else I can do today?",
        "No, that's it for now.",
        "Then have a good afternoon, Hannah, and thanks for your patience.",
    ),
    (  # the next Wednesday: where is the money, and what next
        "Hi, Hannah Becker, case #CS-90417. The warehouse email came on Monday but there's "
        "no refund yet.",
        "Hi Hannah, Priya again. Let me look at the refund for order #BW-48213.",
        "Thanks.",
        "The warehouse checked the machine in on Monday 18 March and confirmed the hose defect.",
        "So why no refund?",
        "The refund was approved yesterday and sent to the Visa card ending 4417: 581.40 EUR.",
        "My banking app shows nothing.",
        "Card refunds show as pending after 1 to 2 days and settle in 3 to 5 working days, so "
        "by Friday 22 March.",
        "Can you send me a proof of the refund?",
        "Yes: the refund reference is RF-30318, and I've emailed you the credit note as a PDF.",
        "Got it, thanks.",
        "You're welcome. Is there anything else?",
        "Actually yes. I'd still like an espresso machine.",
        "Happy to help. The Barista Pro again, or something different?",
        "Is the Barista Pro back in stock?",
        "Not yet: the new batch, with an improved pump hose, arrives around 15 April.",
        "What about the Barista Compact?",
        "The Barista Compact is in stock at 429.00 EUR; it has a different pump and hose.",
        "What's the difference besides the price?",
        "The Compact has a smaller tank (1.2 litres instead of 2) and no hot-water spout; the "
        "espresso is the same.",
        "Can I use my 25 EUR voucher on it?",
        "Yes, at checkout, so the Compact would cost you 404.00 EUR.",
        "And does it have the same warranty?",
        "Yes, two years from delivery, like every Brightwell machine.",
        "Let me think about whether I wait for the new Barista Pro batch.",
        "Sure. I'll note on your case that you're interested, and we'll email you when it's back.",
        "Please do.",
        "Noted on case #CS-90417: we'll email you when the Barista Pro is back in stock.",
        "One last thing: if I wait and order the Barista Pro in April, will my 25 EUR voucher "
        "still apply, and do I keep the old price of 549.00 EUR if it goes up?",
    ),
)


def write_long_chat(rng: random.Random) -> tuple[Script, list[int]]:
    """The long chat as a script, and the number of turns of each visit."""
    turns = [
        Turn("user" if number % 2 == 0 else "assistant", content)
        for visit in LONG_CHAT
        for number, content in enumerate(visit)
    ]
    script = Script(
        session_id=f"s-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}",
        user_id=LONG_CHAT_USER,
        order="#BW-48213",
        title=LONG_CHAT_TITLE,
        turns=tuple(turns),
    )
    return script, [len(visit) for visit in LONG_CHAT]


# -- the child processes ------------------------------------------------------------


@dataclass(frozen=True)
class Child:
    """A `chatlog run <name>` child process and the file its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def problem(self) -> str:
        """Why it may not have done its part, for a failure message."""
        if self.process.poll() is None:
            return (
                f"the {self.name} (pid {self.process.pid}) is running but did not keep up; "
                f"see {self.log_path}"
            )
        lines = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
        return f"the {self.name} exited with {self.process.returncode}: " + " / ".join(lines)


@contextmanager
def running_children(settings: Settings, names: Sequence[str]) -> Iterator[dict[str, Child]]:
    """`chatlog run <name>` for `settings`, each as a child; SIGTERM (then kill) on the way out."""
    env = dict(os.environ)
    for name in ("kafka_bootstrap", "redis_url", "topic", "dlq_topic", "redis_prefix"):
        env[Settings.env_name(name)] = str(getattr(settings, name))
    env[Settings.env_name("projector_group")] = settings.projector_group
    env[Settings.env_name("summarizer_group")] = settings.summarizer_group
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    children: dict[str, Child] = {}
    try:
        for name in names:
            log_path = settings.state_dir / f"demo-{name}.log"
            with log_path.open("wb") as log_file:
                # A session of its own: Ctrl-C in the terminal reaches the demo only, which
                # then stops the children in order instead of all of them racing.
                process = subprocess.Popen(  # noqa: S603 - our own CLI, names from this module
                    [sys.executable, "-m", "chatlog.cli", "run", name],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    start_new_session=True,
                )
            children[name] = Child(name, process, log_path)
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


def start_session(log: ChatLog, script: Script) -> Position:
    """Publish the script's `SessionStarted` (its title); its position."""
    started = new_event(
        script.session_id, user_id=script.user_id, payload=SessionStarted(title=script.title)
    )
    return log.producer.publish(started)


def publish_all(log: ChatLog, scripts: Sequence[Script], *, threads: int) -> dict[str, Position]:
    """Publish every script, `threads` chats at a time; the last position of each."""

    def publish(script: Script) -> tuple[str, Position]:
        position = start_session(log, script)
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


def wait_for_group(admin: AdminClient, child: Child, group: str, *, timeout: float) -> bool:
    """Wait until consumer group `group` is stable with partitions; False if it never was."""
    deadline = time.monotonic() + timeout
    while child.process.poll() is None and time.monotonic() < deadline:
        try:
            description = admin.describe_consumer_groups([group])[group].result(timeout)
        except KafkaException:
            description = None  # the coordinator is still loading the group: ask again
        if (
            description is not None
            and description.state == ConsumerGroupState.STABLE
            and any(member.assignment.topic_partitions for member in description.members)
        ):
            return True
        time.sleep(0.05)
    return False


@dataclass
class Visits:
    """How publishing the long chat went: its view at the end, the waits, what went wrong."""

    view: SessionView | None = None
    waits: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def publish_visits(
    log: ChatLog,
    store: RedisViewStore,
    script: Script,
    visits: Sequence[int],
    *,
    summarizer: Child,
    policy: WindowPolicy,
    threshold: int,
    timeout: float,
) -> Visits:
    """Publish `script` a visit at a time, turn by turn, as its user and agent wrote it.

    After each visit: its last append must be in the very next context read, and then the
    demo waits for the summarizer to fold the overflow (visits are days apart in the story).
    """
    start_session(log, script)
    done = Visits()
    turns = iter(script.turns)
    for number, size in enumerate(visits, start=1):
        for turn in itertools.islice(turns, size):
            position = log.append(
                script.session_id, user_id=script.user_id, role=turn.role, content=turn.content
            )
        ctx = log.context(
            script.session_id, user_id=script.user_id, after=position, timeout=timeout
        )
        if not ctx.messages or ctx.messages[-1].offset != position.offset:
            done.failures.append(
                f"{script.session_id}: the context read after visit {number} lacks its last turn"
            )
        waited = time.perf_counter()
        done.view = wait_for_summary(
            store,
            script.session_id,
            summarizer=summarizer,
            policy=policy,
            threshold=threshold,
            timeout=_SUMMARY_TIMEOUT_S,
        )
        done.waits.append(time.perf_counter() - waited)
        if done.view is None or len(done.view.overflow(policy)) >= threshold:
            done.failures.append(
                f"{script.session_id}: the overflow after visit {number} was not summarized "
                f"within {done.waits[-1]:.1f} s"
            )
            break
    return done


def wait_for_summary(
    store: RedisViewStore,
    session_id: str,
    *,
    summarizer: Child,
    policy: WindowPolicy,
    threshold: int,
    timeout: float,
) -> SessionView | None:
    """The session's view once its overflow is below `threshold`.

    That state is final: the summarizer asks for a summary only at `threshold` turns of
    overflow, and the projector drops the overflow a summary covers. After `timeout`
    seconds, or once the summarizer has exited, the view as it is.
    """
    deadline = time.monotonic() + timeout
    while True:
        view = store.load([session_id])[session_id]
        if view is not None and len(view.overflow(policy)) < threshold:
            return view
        if time.monotonic() > deadline or summarizer.process.poll() is not None:
            return view
        time.sleep(0.05)


def summary_events(settings: Settings, session_id: str, partition: int) -> list[SummaryUpdated]:
    """The session's `SummaryUpdated` events in the log, oldest first."""
    consumer = Consumer(
        {
            **settings.kafka,
            "bootstrap.servers": settings.kafka_bootstrap,
            # A reader, not a group member: nothing is committed, so a throwaway id is fine.
            "group.id": f"chatlog-demo-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "logger": _KAFKA_LOG,
        }
    )
    codec = wiring.codec(settings)
    key = session_id.encode("utf-8")
    found: list[SummaryUpdated] = []
    where = TopicPartition(settings.topic, partition)
    try:
        _, high = consumer.get_watermark_offsets(where, timeout=10)
        consumer.assign([TopicPartition(settings.topic, partition, OFFSET_BEGINNING)])
        deadline = time.monotonic() + _SUMMARY_TIMEOUT_S
        # Before the first fetch the position is a negative sentinel (OFFSET_INVALID).
        while consumer.position([where])[0].offset < high and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=0.2):
                if message.error() is not None or message.key() != key:
                    continue
                try:
                    event = codec.decode(message.value() or b"")
                except DecodeError:
                    continue  # the projector dead-letters it; not a summary either way
                if isinstance(event.payload, SummaryUpdated):
                    found.append(event.payload)
    except KafkaException as exc:
        raise BrokerUnavailable(
            f"reading {settings.topic}[{partition}] failed: {exc.args[0]}", topic=settings.topic
        ) from exc
    finally:
        consumer.close()
    return found


def summary_problems(
    script: Script, view: SessionView, events: Sequence[SummaryUpdated]
) -> list[str]:
    """Why the summary and the messages held do not add up to the chat, once each."""
    session = script.session_id
    held = [m.content for m in view.messages]
    problems = []
    published = len(script.turns)
    if view.summary_covered + len(held) != view.message_count or view.message_count != published:
        problems.append(
            f"{session}: {view.summary_covered} summarized + {len(held)} held is not the "
            f"{view.message_count} messages, or not the {published} published"
        )
    if view.overflow_dropped:
        problems.append(f"{session}: {view.overflow_dropped} turns dropped unsummarized")
    if held != [t.content for t in script.turns][published - len(held) :]:
        problems.append(f"{session}: the messages held are not the chat's newest, in order")
    if any(m.offset <= view.summary_through for m in view.messages):
        problems.append(f"{session}: a message held is also covered by the summary")
    # A late duplicate may follow it in the log; the projector keeps the newest only.
    newest = max(events, key=lambda e: e.through_offset, default=None)
    if newest is None and view.summary is not None:
        problems.append(f"{session}: the read-model has a summary the log lacks")
    elif newest is not None and (newest.through_offset, newest.covered_messages) != (
        view.summary_through,
        view.summary_covered,
    ):
        problems.append(f"{session}: the read-model's summary is not the newest in the log")
    return problems


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


def _wrapped(lines: Sequence[str], *, width: int) -> list[str]:
    """`lines` folded to `width`, continuation lines indented under their bullet."""
    folded: list[str] = []
    for line in lines:
        folded += textwrap.wrap(line, width, subsequent_indent="  ") or [""]
    return folded


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
    parser = argparse.ArgumentParser(prog="python -m dev.demo", description=__doc__)
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
    _KAFKA_LOG.setLevel(logging.ERROR)
    try:
        with _sigterm_as_exit():
            return _run(args)
    except ChatlogError as exc:
        print(f"demo: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted; the projector and the summarizer were stopped", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    run = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    name = f"chatlog.demo.{run}"
    settings = Settings.from_env(
        topic=name,
        dlq_topic=f"{name}.dlq",
        redis_prefix=name,
        projector_group=f"chatlog-projector.demo.{run}",
        summarizer_group=f"chatlog-summarizer.demo.{run}",
    )
    rng = random.Random(args.seed)
    width = max(80, min(shutil.get_terminal_size((120, 24)).columns, 120))
    print(
        f"chatlog demo: {args.sessions} customer-support chats of {args.users} users, "
        f"published concurrently, projected, and checked; then one long chat summarized\n"
    )
    reports = {r.name: r for r in wiring.create_topics(settings)}
    _say("kafka", f"{settings.kafka_bootstrap}  topic {settings.topic}")
    _say("", f"({reports[settings.topic].partitions} partitions, key = session id)")
    _say("redis", f"{settings.redis_url}  prefix {settings.redis_prefix}")
    with running_children(settings, ("projector", "summarizer")) as children:
        for child in children.values():
            _say(
                child.name,
                f"pid {child.process.pid}: chatlog run {child.name}  (log: {child.log_path})",
            )
        print()
        with ChatLog(
            producer=wiring.producer(settings),
            reader=wiring.reader(settings),
            read_timeout_s=settings.read_timeout_s,
        ) as log:
            outcome = _steps(log, args, settings, rng, width=width, children=children)
    for child in children.values():
        stopped = child.process.returncode
        _say(child.name, f"stopped by SIGTERM, exit status {stopped}")
        if stopped != 0:
            outcome.failures.append(
                f"the {child.name} exited with {stopped}, not 0; see {child.log_path}"
            )
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
    children: dict[str, Child],
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
        outcome.failures += [exc.message, children["projector"].problem()]
        return outcome
    _say(
        "projected",
        f"every session's last append was readable {_ms(time.perf_counter() - started)} later",
    )
    print()

    outcome.example = _show_contexts(scripts, contexts, settings, width=width)
    _show_sessions(log, scripts, width=width, outcome=outcome)
    try:
        summarized = _long_chat(log, settings, rng, width=width, children=children, outcome=outcome)
    except ChatlogError as exc:
        outcome.failures += [exc.message, children["summarizer"].problem()]
        summarized = "summary: not checked, the long chat could not be published or read"

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
    print(summarized)
    print()
    return outcome


def _long_chat(
    log: ChatLog,
    settings: Settings,
    rng: random.Random,
    *,
    width: int,
    children: dict[str, Child],
    outcome: Outcome,
) -> str:
    """Publish the long chat, wait for its rolling summary and show it; the check's line."""
    summarizer = children["summarizer"]
    script, visits = write_long_chat(rng)
    outcome.long_chat = script
    # Past `max_overflow` turns the read-model drops the oldest unsummarized: the chat
    # waits until the summarizer consumes (joining its group takes a second or two).
    group = settings.summarizer_group
    if not wait_for_group(_admin(settings), summarizer, group, timeout=_SUMMARY_TIMEOUT_S):
        outcome.failures += [
            f"the summarizer's consumer group {group} got no partitions within "
            f"{_SUMMARY_TIMEOUT_S:g} s",
            summarizer.problem(),
        ]
        return "summary: not checked, the summarizer did not start"

    policy = wiring.policy(settings)
    store = wiring.live_store(settings, log.reader.client)
    done = publish_visits(
        log,
        store,
        script,
        visits,
        summarizer=summarizer,
        policy=policy,
        threshold=settings.summary_threshold,
        timeout=settings.read_timeout_s,
    )
    view = done.view
    if view is None or done.failures:
        outcome.failures += [*done.failures, summarizer.problem()]
        return "summary: not checked, the summarizer did not catch up"
    events = summary_events(settings, script.session_id, view.partition)
    ctx = log.context(script.session_id, user_id=script.user_id)
    prompt = ctx.to_openai(max_tokens=_PROMPT_TOKENS)

    held = len(view.messages)
    overflow = len(view.overflow(policy))
    in_prompt = sum(ctx.count_tokens(m.get("content") or "") for m in prompt)
    whole = sum(ctx.count_tokens(t.content) for t in script.turns)
    _say(
        "long chat",
        f"{script.user_id}'s chat about one order: {len(script.turns)} messages over "
        f"{len(visits)} visits, appended turn by turn",
    )
    _say(
        "",
        f"{len(events)} summaries (SummaryUpdated events in the log); the waits for the "
        f"summarizer after each visit: {', '.join(map(_ms, done.waits))}",
    )
    _say("", "(the first wait includes its backlog: every chat above)")
    _say(
        "",
        f"{view.summary_covered} turns are covered by the summary, {held} kept in full "
        f"({held - overflow} window + {overflow} overflow)",
    )
    _say(
        "",
        f"to_openai(max_tokens={_PROMPT_TOKENS:,}): {len(prompt)} messages, ~{in_prompt:,} "
        f"tokens; the whole chat is ~{whole:,} ({in_prompt / whole:.0%})",
    )
    print()
    lines = context_lines(ctx, prompt)
    _indent([lines[0]], width=width)
    if view.summary is not None:
        _indent([f"[summary by {view.summary_model}]"], width=width)
        _indent(_wrapped(view.summary.splitlines(), width=width - _LABEL), width=width)
    turns = lines[2:] if view.summary is not None else lines[1:]
    _indent(_excerpt(turns, head=0, tail=3, what="messages"), width=width)
    print()

    problems = summary_problems(script, view, events)
    outcome.failures += problems
    if problems:
        return f"summary: the long chat's {len(script.turns)} turns do not add up (see below)"
    return (
        f"summary: {view.summary_covered} turns covered exactly once, {held} kept in full: "
        f"all {view.message_count} accounted for, {view.overflow_dropped} dropped"
    )


def _admin(settings: Settings) -> AdminClient:
    # Like `wiring.admin_client`, with librdkafka's log in the demo's quiet "chatlog.kafka".
    config: dict[str, str | int | float | bool] = {
        **settings.kafka,
        "bootstrap.servers": settings.kafka_bootstrap,
    }
    return AdminClient(config, logger=_KAFKA_LOG)


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
    if outcome.long_chat is not None:
        chat = outcome.long_chat
        print(f"  {cli} context {chat.session_id} --user {chat.user_id}   # the long chat")
    print(f"  {cli} run projector        # the projector this demo ran, in the foreground")
    print(f"  {cli} run summarizer       # and the summarizer")
    print("  README.md: 'Using it from Python', 'Command line', 'Guarantees'")
    print("stop the local stack with `make services-stop`")


if __name__ == "__main__":
    sys.exit(main())
