"""The recall evaluation set: long multi-session support chats, and questions whose answers
were stated far back, each labelled with the ids of the turns that hold the answer.

What does it test? A user talks to a support desk over several visits (sessions) of 50 to
70 turns each. Early on, once, they or the agent state facts a later turn needs: an order
number and what it was for, the phone model, when something was bought, how they want to
be contacted, their plan, where parcels go; the agent gives a ticket number, a warranty
date, a refund amount. Everything else is the usual back and forth of troubleshooting, and
distractors: the same kind of fact about something else (a second order, a partner's
phone, an old plan), in the same words. In the last visit, questions ask for those facts,
mostly in other words than they were stated in ("which handset" for "the phone is a").

By construction no answer lies in the last 20 turns of the session the question is asked
in (the window), so the window alone recalls nothing; whether the rolling summary kept it
is measured by the bench (`bench.scenarios.recall_quality`). Everything is drawn from one
seeded `random.Random`: the same seed, the same set, on every machine. Ids are stable:
``u<user>-s<session>-t<turn>``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["WINDOW", "EvalSet", "Question", "Turn", "build"]

WINDOW = 20  # turns of the session in full: CHATLOG_WINDOW's default


@dataclass(frozen=True, slots=True)
class Turn:
    """One stored turn: what the embedder indexes."""

    message_id: str
    user_id: str
    session_id: str
    position: int  # within its session, from 0
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class Question:
    """A question asked in `session_id` (its last turns are the window), whose answer
    `answer` is stated in the turns `evidence`."""

    user_id: str
    session_id: str
    kind: str
    query: str
    answer: str
    evidence: tuple[str, ...]


@dataclass
class EvalSet:
    """Every user's turns, oldest first within a session, and the questions."""

    turns: list[Turn] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)

    def of_user(self, user_id: str) -> list[Turn]:
        """The user's turns, all sessions: what a recall for that user searches."""
        return [t for t in self.turns if t.user_id == user_id]

    def window(self, session_id: str, size: int = WINDOW) -> list[Turn]:
        """The last `size` turns of the session."""
        return [t for t in self.turns if t.session_id == session_id][-size:]


# --------------------------------------------------------------------------- vocabulary

_ITEMS = (
    "blender", "standing desk", "noise-cancelling headphones", "coffee grinder", "air fryer",
    "office chair", "robot vacuum", "electric kettle", "smart doorbell", "gaming monitor",
    "espresso machine", "air purifier", "mechanical keyboard", "baby monitor", "toaster oven",
)  # fmt: skip
_PHONES = (
    "Pixel 7 Pro", "Galaxy S21 FE", "iPhone 13 mini", "OnePlus 11", "Moto G Power",
    "Xperia 5 IV", "Nothing Phone 2", "iPhone SE", "Galaxy A54", "Pixel 6a",
)  # fmt: skip
_ROUTERS = (
    "Netgear Nighthawk R7000", "TP-Link Archer AX55", "Asus RT-AX86U", "Eero Pro 6",
    "Linksys Velop MX4200", "Fritz!Box 7590",
)  # fmt: skip
_PLANS = ("Family", "Premium", "Basic", "Student", "Business Pro", "Duo")
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
_CHANNELS = (
    ("email only", "email only, please don't ring me"),
    ("text message", "a text message, I never pick up unknown calls"),
    ("after 6 pm", "a phone call, but only after 6 pm on weekdays"),
    ("the chat in the app", "the chat in the app, emails end up in my spam"),
)
_DROPS = (
    ("neighbour at number 12", "leave parcels with the neighbour at number 12"),
    ("parcel locker", "put deliveries in the parcel locker by the entrance"),
    ("behind the garden gate", "drop packages behind the garden gate, not on the steps"),
    ("reception desk", "hand them to the reception desk downstairs"),
)

# What a fact says, how a question asks for it (mostly in other words), and what a
# distractor of the same kind says. `{v}` is the value, `{x}` the item it belongs to.
_USER, _AGENT = "user", "assistant"


@dataclass(frozen=True, slots=True)
class _Kind:
    name: str
    role: str  # who states the fact
    states: tuple[str, ...]
    asks: tuple[str, ...]
    distracts: tuple[str, ...]
    value: Callable[[random.Random], tuple[str, str]]  # (value, item)


def _order(rng: random.Random) -> tuple[str, str]:
    letter = rng.choice("ABCDEFGHKMNPRSTW")
    return f"#{letter}{rng.randint(1, 9)}-{rng.randint(1000, 9999)}", rng.choice(_ITEMS)


def _date(rng: random.Random) -> tuple[str, str]:
    return f"{rng.choice(_MONTHS)} {rng.randint(1, 28)}", rng.choice(_ITEMS)


def _pick(pool: tuple[str, ...]) -> Callable[[random.Random], tuple[str, str]]:
    return lambda rng: (rng.choice(pool), "")


def _pair(pool: tuple[tuple[str, str], ...]) -> Callable[[random.Random], tuple[str, str]]:
    # (the answer, how the user puts it, which holds the answer).
    return lambda rng: rng.choice(pool)


_KINDS = (
    _Kind(
        "order number",
        _USER,
        (
            "The order I'm writing about is {v}, it's the {x}.",
            "Quick note, order {v} is for the {x} I got from you.",
            "My order number for the {x} is {v}.",
        ),
        (
            "What was the order number of the {x} again?",
            "Can you remind me which order the {x} was?",
            "I've lost the reference for the {x} purchase, what was it?",
        ),
        (
            "I also have order {v} open, but that one is fine.",
            "Unrelated, but order {v} arrived yesterday without trouble.",
        ),
        _order,
    ),
    _Kind(
        "phone model",
        _USER,
        (
            "I'm using a {v}, fully updated.",
            "The phone is a {v}, bought it refurbished.",
            "This is all happening on my {v}.",
        ),
        (
            "Which handset did I tell you I have?",
            "What model is my mobile, did I mention it?",
            "Do you have my device model on file from earlier?",
        ),
        (
            "My partner has a {v} and the app works fine there.",
            "I used to have a {v} years ago, never had this problem.",
        ),
        _pick(_PHONES),
    ),
    _Kind(
        "purchase date",
        _USER,
        (
            "I bought the {x} on {v}, so it's fairly new.",
            "The {x} arrived on {v}, I think, it was a birthday present.",
        ),
        (
            "When did I purchase the {x}?",
            "How long ago did the {x} come, what date did I say?",
        ),
        ("My last delivery was on {v}, nothing to do with this.",),
        _date,
    ),
    _Kind(
        "contact preference",
        _USER,
        (
            "For follow-ups, I'd prefer {x}.",
            "Just so you know, the best way to reach me is {x}.",
        ),
        (
            "How did I say I want to be contacted?",
            "What's my preferred way for you to get in touch?",
        ),
        ("Your colleague called me last week, that was fine I guess.",),
        _pair(_CHANNELS),
    ),
    _Kind(
        "subscription plan",
        _USER,
        (
            "I'm on the {v} plan, billed yearly.",
            "We switched to the {v} subscription in spring.",
        ),
        (
            "Which tier am I subscribed to?",
            "What membership level did I say we have?",
        ),
        ("Before that we had the {v} plan but it was too small.",),
        _pick(_PLANS),
    ),
    _Kind(
        "delivery instruction",
        _USER,
        (
            "For any replacement, please {x}.",
            "If you send something, {x}, I'm often out.",
        ),
        (
            "Where should the courier leave the replacement?",
            "What did I ask about dropping off packages?",
        ),
        ("The last courier left a card in the mailbox, which was annoying.",),
        _pair(_DROPS),
    ),
    _Kind(
        "router model",
        _USER,
        (
            "My router is a {v}, the one the provider sent.",
            "At home the Wi-Fi comes from a {v}.",
        ),
        (
            "What networking gear do I have at home?",
            "Which access point did I tell you about?",
        ),
        ("My office uses a {v}, but I'm not there often.",),
        _pick(_ROUTERS),
    ),
    _Kind(
        "ticket number",
        _AGENT,
        (
            "I've opened a case for you, the ticket number is {v}.",
            "Your reference for this case is {v}, please quote it if you call.",
        ),
        (
            "What was the case reference you gave me?",
            "Which ticket did you open for me back then?",
        ),
        ("That older case {v} was closed last month.",),
        lambda rng: (f"TK-{rng.randint(100000, 999999)}", ""),
    ),
    _Kind(
        "warranty end",
        _AGENT,
        (
            "I checked, your {x} is under warranty until {v}.",
            "The manufacturer's cover for the {x} runs until {v}.",
        ),
        (
            "Until when is the {x} covered?",
            "How long does my guarantee on the {x} last?",
        ),
        ("Extended cover is available until {v} if you want it.",),
        lambda rng: (f"{rng.choice(_MONTHS)} {rng.randint(2026, 2029)}", rng.choice(_ITEMS)),
    ),
    _Kind(
        "refund amount",
        _AGENT,
        (
            "I've issued a refund of ${v} to your card, it takes 3 to 5 days.",
            "A credit of ${v} is on its way back to you.",
        ),
        (
            "How much money did you send back to me?",
            "What was the amount you credited to my account?",
        ),
        ("Shipping costs ${v} for express, if you need it faster.",),
        lambda rng: (f"{rng.randint(12, 480)}.{rng.choice(('00', '50', '99', '49'))}", ""),
    ),
)

# The back and forth that fills a visit; some of it uses the words the facts use.
_USER_FILLER = (
    "It started again this morning, same as before.",
    "I tried turning it off and on, no change.",
    "The light is blinking orange now.",
    "Okay, give me a minute to check.",
    "That didn't work either, unfortunately.",
    "Is there a firmware update I should install?",
    "The app says 'something went wrong' and closes.",
    "I checked the order status page but it shows nothing new.",
    "My phone keeps dropping the connection to it.",
    "Thanks, that's helpful so far.",
    "Sorry, I had to step away. I'm back now.",
    "It makes a clicking noise when it starts.",
    "Do I need the original box to send it back?",
    "The number on the display keeps changing.",
    "I reset it to factory settings last night.",
    "Should I contact the manufacturer instead?",
    "The battery seems to drain much faster than before.",
    "Can you check whether anything shipped yet?",
    "I've had to restart it three times today.",
    "The update finished but the problem is still there.",
)
_AGENT_FILLER = (
    "Thanks for the details, let me look into it.",
    "Could you restart the device and tell me whether the light changes?",
    "I understand, that must be frustrating.",
    "Let's try a factory reset: hold the button for ten seconds.",
    "Can you confirm the app version under Settings, About?",
    "I'm checking with our technical team now.",
    "Please make sure the device is within range of your Wi-Fi.",
    "That's useful, thank you. One more question.",
    "I see a known issue with that update; a fix is being rolled out.",
    "Could you send a photo of the error message?",
    "I've added a note to your account.",
    "Is the cable firmly connected on both ends?",
    "Let me know if the problem comes back after this.",
    "No order changes are needed for that, don't worry.",
    "We can arrange a replacement if the reset doesn't help.",
    "Please try clearing the app's cache and signing in again.",
    "Which colour is the status light now?",
    "It may take a few minutes to sync.",
    "Our records show the last sync was two days ago.",
    "I'll stay on the chat while you try that.",
)
_OPENERS = ("Hi, it's me again.", "Hello, I need help with something.", "Hi there.")
_SESSIONS = 3
_FACTS_PER_USER = 6


def _fill(template: str, value: str, item: str) -> str:
    return template.replace("{v}", value).replace("{x}", item)


def build(users: int = 40, *, seed: int = 17) -> EvalSet:
    """The set for `users` users (3 visits of 50-70 turns each, 6 facts and 6 questions
    a user, 3 distractors); the same `users` and `seed` give the same set."""
    rng = random.Random(seed)
    out = EvalSet()
    for u in range(users):
        user = f"u{u:03d}"
        lengths = [rng.randint(50, 70) for _ in range(_SESSIONS)]
        # Turns as (role, content) per session, fillers first; facts are placed over them.
        sessions: list[list[tuple[str, str]]] = []
        for length in lengths:
            turns = [(_USER, rng.choice(_OPENERS))]
            while len(turns) < length:
                role = _AGENT if turns[-1][0] == _USER else _USER
                turns.append((role, rng.choice(_USER_FILLER if role == _USER else _AGENT_FILLER)))
            sessions.append(turns)
        last = _SESSIONS - 1
        # Slots a fact may take: any earlier visit, or the last visit's turns before its
        # window (and 10 more, so the answer is well outside it); the right role.
        free = {
            (s, p)
            for s, turns in enumerate(sessions)
            for p in range(1, len(turns) - (WINDOW + 10 if s == last else 0))
        }
        evidence: list[tuple[_Kind, str, str, tuple[int, int]]] = []
        for kind in rng.sample(_KINDS, _FACTS_PER_USER):
            value, item = kind.value(rng)
            slot = _slot(rng, free, sessions, kind.role)
            sessions[slot[0]][slot[1]] = (kind.role, _fill(rng.choice(kind.states), value, item))
            evidence.append((kind, value, item, slot))
            if kind.distracts and len(evidence) % 2 == 1:
                other = value
                while other == value:  # a distractor states another value
                    other, _ = kind.value(rng)
                dslot = _slot(rng, free, sessions, kind.role)
                text = _fill(rng.choice(kind.distracts), other, item)
                sessions[dslot[0]][dslot[1]] = (kind.role, text)
        for s, turns in enumerate(sessions):
            for p, (role, content) in enumerate(turns):
                out.turns.append(
                    Turn(f"{user}-s{s}-t{p:02d}", user, f"{user}-s{s}", p, role, content)
                )
        for kind, value, item, (s, p) in evidence:
            query = _fill(rng.choice(kind.asks), value, item)
            evidence_id = f"{user}-s{s}-t{p:02d}"
            out.questions.append(
                Question(user, f"{user}-s{last}", kind.name, query, value, (evidence_id,))
            )
    return out


def _slot(
    rng: random.Random, free: set[tuple[int, int]], sessions: list[list[tuple[str, str]]], role: str
) -> tuple[int, int]:
    """A free slot whose turn has `role`, taken out of `free`."""
    fitting = sorted(slot for slot in free if sessions[slot[0]][slot[1]][0] == role)
    slot = rng.choice(fitting)
    free.discard(slot)
    return slot
