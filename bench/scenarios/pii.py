"""PII redaction (`pii`): how well it finds personal data, and what it costs per append.

Quality. Every string of the labelled corpus (`tests/pii_corpus.py`: support-chat
sentences with the personal data each holds, and hard negatives from support chats:
order, tracking and RMA numbers, dates, prices, times, postcodes) goes through three
detectors:

* chatlog's (`chatlog.schemas.pii.Detector`, as `CHATLOG_PII_MODE=redact` uses it);
* scrubadub 2.0.1's default `Scrubber` (offline, a bench-only dependency of the dev
  extra), its filth types mapped to chatlog's kinds (it has no IBAN or IP detector);
* a bare-regex baseline: one unvalidated pattern per kind, what a quick hand-written
  scrubber does, to show what the checksums and `phonenumbers` buy.

A labelled value counts as found when a finding of its kind covers it whole (the
redaction would hide all of it). Precision per kind: such findings over every finding of
that kind, in the positives (around the value: an order number, a date) and in the hard
negatives. The false-positive rate: hard negatives with any finding, of any kind.

Cost. The same events, a support chat with personal data in one turn in five, encoded
by `ConversationProducer.encode` (the path every append takes: redact, seal, Avro) of a
`wiring.producer` in each mode, and in mode off; the difference is what redaction adds
to an append. Beside it, scrubadub's `clean` of the same contents (what it would add).
Modes alternate event by event, so a busy neighbour favours none.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.infra import BenchStack
from bench.plan import Plan
from bench.report import Report, Table, say
from bench.workload import support_chat
from chatlog import wiring
from chatlog.producers.commands import append_message
from chatlog.schemas.events import ConversationEvent
from chatlog.schemas.pii import Detector
from tests.pii_corpus import HARD_NEGATIVES, KINDS, positives

__all__ = ["pii"]

SCRUBADUB = "scrubadub 2.0.1 Scrubber().clean"
# scrubadub's filth types as chatlog's kinds (the others it finds count as no kind).
_SCRUBADUB_KINDS = {
    "email": "EMAIL",
    "phone": "PHONE",
    "credit_card": "CARD",
    "social_security_number": "SSN",
    "credential": "SECRET",
}
# One unvalidated pattern per kind: no checksum, no numbering plan.
_BARE = {
    "EMAIL": r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+",
    "PHONE": r"\+?\d[\d ()./-]{7,}\d",
    "CARD": r"\b\d(?:[ -]?\d){12,18}\b",
    "IBAN": r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b",
    "SSN": r"\b\d{3}-\d{2}-\d{4}\b",
    "IP": r"\b(?:\d{1,3}\.){3}\d{1,3}\b|\b(?:[0-9a-fA-F]{0,4}:){2,7}[0-9a-fA-F]{0,4}\b",
    "SECRET": r"\b(?:sk-|sk_live_|AKIA|ghp_|xox[bp]-|Bearer )\S{10,}",
}
_MODES = ("off", "redact", "mask", "tokenize")
_PII_EVERY = 5  # one turn in five carries personal data


@dataclass(frozen=True, slots=True)
class _Span:
    kind: str
    start: int
    end: int


Finder = Callable[[str], list[_Span]]


def _chatlog_finder() -> Finder:
    detector = Detector()
    return lambda text: [_Span(str(f.kind), f.start, f.end) for f in detector.find(text)]


def _bare_finder() -> Finder:
    patterns = {kind: re.compile(pattern) for kind, pattern in _BARE.items()}

    def find(text: str) -> list[_Span]:
        return [
            _Span(kind, m.start(), m.end())
            for kind, pattern in patterns.items()
            for m in pattern.finditer(text)
        ]

    return find


def _scrubadub() -> tuple[Finder, Callable[[str], str]] | str:
    """scrubadub's finder and its `clean`, or why it cannot run here."""
    try:
        import scrubadub  # noqa: PLC0415 - bench-only peer
    except ImportError as exc:
        return f"not installed ({exc}); it is in the dev extra: pip install -e '.[dev]'"
    scrubber = scrubadub.Scrubber()

    def find(text: str) -> list[_Span]:
        return [
            _Span(_SCRUBADUB_KINDS.get(f.type, f.type), f.beg, f.end)
            for f in scrubber.iter_filth(text)
        ]

    return find, scrubber.clean


@dataclass
class _Quality:
    found: Counter[str]
    labelled: Counter[str]
    claimed: Counter[str]  # findings of each kind, positives and negatives
    correct: Counter[str]  # of those, the ones that cover their labelled value
    flagged_negatives: int
    negatives: int


def _quality(find: Finder) -> _Quality:
    found, labelled, claimed, correct = (
        Counter[str](),
        Counter[str](),
        Counter[str](),
        Counter[str](),
    )
    for text, kind, value in positives():
        labelled[kind] += 1
        start = text.index(value)
        end = start + len(value)
        hit = False
        for span in find(text):
            claimed[span.kind] += 1
            if span.kind == kind and span.start <= start and span.end >= end and not hit:
                hit = True
                correct[kind] += 1
        found[kind] += hit
    flagged = 0
    for text in HARD_NEGATIVES:
        spans = find(text)
        flagged += bool(spans)
        for span in spans:
            claimed[span.kind] += 1
    return _Quality(found, labelled, claimed, correct, flagged, len(HARD_NEGATIVES))


def _cell(numerator: int, denominator: int) -> str:
    return "—" if denominator == 0 else f"{numerator / denominator:.3f}"


def _quality_table(results: dict[str, _Quality]) -> Table:
    names = list(results)
    table = Table(
        title="pii redaction quality: recall and precision per kind (counted, one run)",
        columns=[
            "kind",
            "labelled",
            *[f"{name}: recall" for name in names],
            *[f"{name}: precision" for name in names],
            "goal (recall)",
        ],
    )
    goals = {"EMAIL": ">= 0.99", "CARD": ">= 0.99", "IBAN": ">= 0.99", "SECRET": ">= 0.99"}
    goals["PHONE"] = ">= 0.95"
    any_quality = next(iter(results.values()))
    for kind in KINDS:
        table.rows.append(
            [
                kind,
                f"{any_quality.labelled[kind]:,}",
                *[_cell(q.found[kind], q.labelled[kind]) for q in results.values()],
                *[_cell(q.correct[kind], q.claimed[kind]) for q in results.values()],
                goals.get(kind, "—"),
            ]
        )
    table.rows.append(
        [
            "hard negatives flagged",
            f"{any_quality.negatives:,}",
            *[
                f"{q.flagged_negatives} ({q.flagged_negatives / q.negatives:.1%})"
                for q in results.values()
            ],
            *["" for _ in results],
            "<= 1%",
        ]
    )
    return table


def _events(count: int) -> list[ConversationEvent]:
    """A support chat, one turn in five carrying a corpus sentence with personal data."""
    chat = support_chat(count, seed=14)
    samples = [text for text, _, _ in positives()]
    events = []
    for n, (role, turn) in enumerate(chat):
        extra = f" {samples[(n // _PII_EVERY * 37) % len(samples)]}" if n % _PII_EVERY == 0 else ""
        events.append(
            append_message(
                f"pii-{n % 50}", user_id=f"pii-user-{n % 50}", role=role, content=turn + extra
            )
        )
    return events


def _timed(encode: Callable[[ConversationEvent], bytes], event: ConversationEvent) -> float:
    """µs of one call."""
    started = time.perf_counter()
    encode(event)
    return (time.perf_counter() - started) * 1e6


def pii(stack: BenchStack, plan: Plan, report: Report) -> None:
    """The pii scenario: see the module docstring."""
    scrub = _scrubadub()
    finders: dict[str, Finder] = {"chatlog": _chatlog_finder()}
    if isinstance(scrub, tuple):
        finders["scrubadub"] = scrub[0]
    finders["bare regex"] = _bare_finder()
    started = time.perf_counter()
    results = {name: _quality(find) for name, find in finders.items()}
    table = _quality_table(results)
    say(f"pii quality counted in {time.perf_counter() - started:.1f} s")
    ours = report.measure("pii", "hard negatives flagged", "share")
    ours.add(results["chatlog"].flagged_negatives / results["chatlog"].negatives)
    if "scrubadub" in results:
        theirs = report.measure("pii", "scrubadub", "share")
        theirs.add(results["scrubadub"].flagged_negatives / results["scrubadub"].negatives)
        report.compare(
            "pii", "hard negatives flagged (share)", ours, "scrubadub 2.0.1", theirs, better="lower"
        )

    settings = stack.scenario("pii")
    producers = {
        mode: wiring.producer(
            settings.model_copy(update={"pii_mode": mode}), flush_on_sigterm=False
        )
        for mode in _MODES
    }
    events = _events(plan.pii_events)
    encode_us = {
        mode: report.metric("pii", f"encode per append, mode {mode}", "µs") for mode in _MODES
    }
    added = {
        mode: report.measure("pii", f"redaction per append, {mode}", "µs") for mode in _MODES[1:]
    }
    scrub_us = report.measure("pii", SCRUBADUB, "µs")
    try:
        for producer in producers.values():  # the warm-up: every user's key made and cached
            for event in events[:50]:
                producer.encode(event)
        for n in range(plan.repeat):
            order = _MODES if n % 2 == 0 else tuple(reversed(_MODES))
            took = {mode: 0.0 for mode in _MODES}
            for event in events:
                for mode in order:
                    took[mode] += _timed(producers[mode].encode, event)
            means = {mode: took[mode] / len(events) for mode in _MODES}
            for mode in _MODES:
                encode_us[mode].add(means[mode])
            for mode in _MODES[1:]:
                added[mode].add(means[mode] - means["off"])
            if isinstance(scrub, tuple):
                clean = scrub[1]
                contents = [e.payload.content for e in events]
                began = time.perf_counter()
                for content in contents:
                    clean(content)
                scrub_us.add((time.perf_counter() - began) / len(contents) * 1e6)
            say(
                f"pii repetition {n + 1}: encode µs "
                + ", ".join(f"{m} {means[m]:.0f}" for m in _MODES)
            )
    finally:
        for producer in producers.values():
            producer.close()
    report.compare(
        "pii",
        "redaction added per append (redact mode), µs",
        added["redact"],
        SCRUBADUB if isinstance(scrub, tuple) else "—",
        scrub_us if isinstance(scrub, tuple) else None,
        better="lower",
    )
    off = encode_us["off"]
    for mode in _MODES[1:]:
        report.compare(
            "pii",
            f"encode per append ({mode}), µs",
            encode_us[mode],
            "the same, redaction off",
            off,
            better="lower",
            itself=True,
        )
    table.notes += _notes(plan, events, results, scrub)
    report.tables.append(table)


def _notes(
    plan: Plan,
    events: Sequence[ConversationEvent],
    results: dict[str, _Quality],
    scrub: tuple[Finder, Callable[[str], str]] | str,
) -> list[str]:
    labelled = next(iter(results.values())).labelled
    notes = [
        f"Corpus: tests/pii_corpus.py, {sum(labelled.values()):,} labelled positives "
        f"({', '.join(f'{k} {v}' for k, v in labelled.items())}) and "
        f"{len(HARD_NEGATIVES)} hard negatives. A value counts as found when a finding of "
        f"its kind covers it whole; precision counts every finding of the kind, in the "
        f"positives' sentences and the negatives.",
        f"Cost: {len(events):,} events of a support chat (one turn in {_PII_EVERY} with a "
        f"corpus sentence appended), each encoded by a `wiring.producer` of every mode in "
        f"turn (`ConversationProducer.encode`: redact, seal, Avro), {plan.repeat} "
        f"repetition(s); the added cost is the mode's mean minus mode off's.",
        "Bare regex: one unvalidated pattern per kind (no Luhn, mod-97 or numbering "
        "plan), for what validation buys.",
    ]
    if isinstance(scrub, str):
        notes.append(f"scrubadub: {scrub}")
    else:
        notes.append(
            "scrubadub 2.0.1: `Scrubber()` with its default detectors (credential, "
            "credit_card, email, phone, twitter, url, social_security_number; locale en_US, "
            "so national US numbers count), offline; it has no IBAN or IP detector (recall "
            "0), and its url and twitter findings count as no kind. Its cost is `clean` of "
            "each content, beside what chatlog's redaction adds to the whole encode."
        )
    return notes
