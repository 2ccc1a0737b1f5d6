"""The demo's chats (`dev/demo.py`): what the customers and the agents say.

Three hundred support chats are written from a few scenarios, each about one order whose
number (say ``#A7-1042``) appears in no other chat; the long chat is read from
``long_chat.txt``. Pure: nothing here publishes.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Script", "Turn", "read_long_chat", "write_scripts"]

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


def read_long_chat(rng: random.Random) -> tuple[Script, list[int]]:
    """The long chat of ``long_chat.txt`` as a script, and the number of turns of each visit.

    A line ``## ...`` starts a visit; in a visit, turns alternate user then assistant.
    """
    visits: list[list[str]] = []
    for line in Path(__file__).with_name("long_chat.txt").read_text().splitlines():
        if line.startswith("## "):
            visits.append([])
        elif line and not line.startswith("#"):
            visits[-1].append(line)
    turns = [
        Turn("user" if number % 2 == 0 else "assistant", content)
        for visit in visits
        for number, content in enumerate(visit)
    ]
    script = Script(
        session_id=f"s-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}",
        user_id="hannah",
        order="#BW-48213",
        title="Leaking espresso machine #BW-48213",
        turns=tuple(turns),
    )
    return script, [len(visit) for visit in visits]
