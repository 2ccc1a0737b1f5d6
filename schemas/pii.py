"""Finding personal data and secrets in what a person wrote (issue 14, first step).

What does it find? Emails; phone numbers in international form (``+`` or ``00`` and a
country code) or, with a default region, in that region's national form
(`phonenumbers`, the port of Google's libphonenumber, decides what a valid number is);
payment card numbers (13 to 19 digits that pass the Luhn check and start as cards of
their length do); IBANs (a country's length and the mod-97 check); US social security
numbers (the ranges the SSA never issues are left alone); IP addresses (`ipaddress`
validates them); and secrets people paste into chats: ``sk-`` keys (OpenAI, Anthropic),
Stripe keys, AWS access key ids, GitHub, GitLab, Google and Slack tokens, bearer tokens
and PEM private key blocks. Custom patterns add kinds of their own, and an allow-list
keeps exact strings (a support desk's own phone number, say) as they are.

Why validated patterns and not bare regular expressions? Support chats are full of
numbers that look personal and are not: order numbers (``#BW-48213``), tracking ids
(``JJD0002249``), RMA numbers, prices, dates, postcodes. A digit run is a card only if its
checksum says so, an IBAN only if its mod-97 does: the checks keep false positives rare
without losing recall.

`Detector.find` answers the findings, sorted and never overlapping (the earlier, then
the longer one wins). Pure: no I/O; the producer applies it before sealing
(`chatlog.schemas.redaction`).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import phonenumbers

__all__ = ["Detector", "Finding", "Kind", "iban_valid", "luhn_valid"]


class Kind(enum.StrEnum):
    """What a finding is; its value names the placeholder (``[EMAIL]``)."""

    EMAIL = "EMAIL"
    PHONE = "PHONE"
    CARD = "CARD"
    IBAN = "IBAN"
    SSN = "SSN"
    IP = "IP"
    SECRET = "SECRET"  # noqa: S105 - the kind's name, not a password


@dataclass(frozen=True, slots=True)
class Finding:
    """`text[start:end]` is personal data of `kind` (a custom kind's name otherwise)."""

    kind: str
    start: int
    end: int
    text: str


_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,24}(?![\w-])"
)
# 13-19 digits, optionally grouped by single spaces or dashes (4 4 4 4, 4 6 5, ...). No
# card number starts with 0 (ISO/IEC 7812 gives that major industry id no cards), and a
# phone number written with the 00 international prefix often passes Luhn by chance.
_CARD = re.compile(r"(?<![\w-])[1-9](?:[ -]?\d){12,18}(?![\w-])")
_IBAN = re.compile(r"(?<![\w])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![\w])", re.IGNORECASE)
# Which first digits each card length is issued with (Visa 13 and 16-19 from 4; Diners
# 14 from 3; Amex 15 from 3, UATP from 1; Mastercard 2 and 5, Discover, UnionPay and
# Maestro 6, JCB 35...): a barcode or a customer number of the right length and checksum
# but another start is not a card (an EAN-13 from 5 often passes Luhn).
_CARD_FIRST_DIGITS = {13: "4", 14: "3", 15: "123", 16: "23456", 17: "3456", 18: "3456", 19: "3456"}
# 00 starting a number: not after a word, a '+' or a group of digits ("677 0095").
_DIAL_00 = re.compile(r"(?<![\w+])(?<!\d[ .-])00(?=[1-9])")
_SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w)(?!\.\d)")
# The last part may be an IPv4 address (``::ffff:192.0.2.128``, IPv4-mapped).
_IPV6 = re.compile(
    r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{0,4})(?![\w:])"
)
# Each secret's pattern, and the strings one of its matches must contain: a substring
# test is far cheaper than a scan with the pattern, and most chat turns hold no secret.
_SECRETS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    # OpenAI, Anthropic
    (re.compile(r"\bsk-(?:proj-|live-|test-)?[A-Za-z0-9_-]{20,}"), ("sk-",)),
    # Stripe secret and restricted keys
    (re.compile(r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"), ("k_live_", "k_test_")),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), ("AKIA", "ASIA")),  # AWS access key ids
    (
        re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),  # GitHub tokens
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
    ),
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,}"), ("github_pat_",)),  # GitHub fine-grained
    (re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}"), ("glpat-",)),  # GitLab access tokens
    (re.compile(r"\bAIza[0-9A-Za-z_-]{35}"), ("AIza",)),  # Google API keys
    (re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"), ("xox",)),  # Slack tokens
    # A JSON Web Token pasted bare: a header and a claims part, both base64url JSON.
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), ("eyJ",)),
    # A token never ends with a '.': one there ends the sentence. (Looked for in the
    # lower-cased text, as the pattern ignores case.)
    (
        re.compile(r"\bBearer\s+[A-Za-z0-9._~+/-]{19,}[A-Za-z0-9_~+/-]=*", re.IGNORECASE),
        ("bearer",),
    ),
    (
        re.compile(
            r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----.*?-----END (?:[A-Z]+ )?PRIVATE KEY-----",
            re.DOTALL,
        ),
        ("-----BEGIN ",),
    ),
)
# An AWS secret access key is 40 characters of base64 with no prefix of its own: only
# where the text names one is such a run taken for it (mixed case, so a SHA-1 is not).
_AWS_SECRET = re.compile(
    r"(?<![A-Za-z0-9/+])(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*[A-Z])[A-Za-z0-9/+]{40}"
    r"(?![A-Za-z0-9/+=])"
)
_AWS_SECRET_HINTS = ("aws_secret", "secret_access_key", "secret access key", "aws secret")


def _any_of(needles: Iterable[str]) -> re.Pattern[str]:
    """One pattern that finds any of `needles` (as they are): a single scan of a text
    answers "does any needle occur" for every secret at once."""
    return re.compile("|".join(re.escape(needle) for needle in needles))


# Which haystack each secret's needles are looked for in: the lower-cased text when its
# pattern ignores case, the text itself otherwise (decided once, not per text).
_SECRET_CHECKS = tuple(
    (pattern, needles, bool(pattern.flags & re.IGNORECASE)) for pattern, needles in _SECRETS
)
# Most chat turns hold no needle at all: one scan of the text and one of its lower-cased
# form rule every secret out (the same test as each needle's own `in`, all at once).
_NEEDLES_IN_TEXT = _any_of(
    n for _, needles, folded in _SECRET_CHECKS if not folded for n in needles
)
_NEEDLES_IN_FOLDED = _any_of(
    (*(n for _, needles, folded in _SECRET_CHECKS if folded for n in needles), *_AWS_SECRET_HINTS)
)
# Every match of the card, IBAN, SSN and IPv4 patterns holds a decimal digit (`\d`, as
# they use it): a text without one skips their scans.
_DIGIT = re.compile(r"\d")

# Each country's IBAN length (ISO 13616 registry): a wrong length is no IBAN, whatever
# its checksum.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24,
    "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def luhn_valid(digits: str) -> bool:
    """Whether the digit string passes the Luhn check (every payment card does)."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    """Whether `text` (spaces allowed) is an IBAN: its country's length and mod 97 == 1."""
    iban = text.replace(" ", "").upper()
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isalnum():
        return False
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(char, 36)) for char in moved)) % 97 == 1


def _iban_prefix(candidate: str) -> str | None:
    """The start of `candidate` as long as its country's IBAN, spaces kept; None if it
    names no IBAN country or is too short."""
    length = _IBAN_LENGTHS.get(candidate[:2].upper())
    if length is None:
        return None
    seen = 0
    for index, char in enumerate(candidate):
        seen += char != " "
        if seen == length:
            return candidate[: index + 1]
    return None


class Detector:
    """Finds personal data in text (see the module docstring)."""

    def __init__(
        self,
        *,
        region: str | None = None,
        custom: Mapping[str, str] | None = None,
        allow: Iterable[str] = (),
    ) -> None:
        """`region`: the ISO country whose national phone format counts (None: only
        international numbers); `custom`: kind name -> regular expression; `allow`:
        exact strings never reported. A pattern that does not compile raises
        `re.error`, naming it."""
        if region is not None and region.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown phone region {region!r}: use an ISO code such as 'DE'")
        self.region = region.upper() if region else None
        self.custom = {name: re.compile(pattern) for name, pattern in (custom or {}).items()}
        self.allow = frozenset(allow)

    def find(self, text: str) -> list[Finding]:
        """Every finding in `text`, by position, none overlapping another."""
        found = sorted(self._candidates(text), key=lambda f: (f.start, -(f.end - f.start)))
        kept: list[Finding] = []
        for finding in found:
            if finding.text in self.allow:
                continue
            if kept and finding.start < kept[-1].end:
                continue  # inside (or across) the one kept: the earlier, longer one wins
            kept.append(finding)
        return kept

    def _candidates(self, text: str) -> Iterator[Finding]:
        # Each kind is looked for only in a text that holds what every match of it must
        # (an '@', a '-', a '+'...): the common chat turn costs substring tests only.
        folded = text.lower()
        if _NEEDLES_IN_TEXT.search(text) or _NEEDLES_IN_FOLDED.search(folded):
            for pattern, needles, in_folded in _SECRET_CHECKS:
                haystack = folded if in_folded else text
                if any(needle in haystack for needle in needles):
                    yield from _matches(Kind.SECRET, pattern, text)
            if any(hint in folded for hint in _AWS_SECRET_HINTS):
                yield from _matches(Kind.SECRET, _AWS_SECRET, text)
        if "@" in text:
            yield from _matches(Kind.EMAIL, _EMAIL, text)
        if _DIGIT.search(text) is not None:
            yield from self._numbers(text)
        yield from self._ipv6(text)
        yield from self._phones(text)
        for name, pattern in self.custom.items():
            yield from _matches(name, pattern, text)

    @staticmethod
    def _numbers(text: str) -> Iterator[Finding]:
        """IBANs, cards, SSNs and IPv4 addresses: every one holds a digit."""
        for match in _IBAN.finditer(text):
            iban = _iban_prefix(match.group())  # the pattern may run into the next words
            if iban and iban_valid(iban):
                yield Finding(Kind.IBAN, match.start(), match.start() + len(iban), iban)
        for match in _CARD.finditer(text):
            digits = re.sub(r"[ -]", "", match.group())
            if (
                digits[0] in _CARD_FIRST_DIGITS.get(len(digits), "")
                and luhn_valid(digits)
                and len(set(digits)) > 1
            ):
                yield Finding(Kind.CARD, match.start(), match.end(), match.group())
        if "-" in text:
            yield from _matches(Kind.SSN, _SSN, text)
        if "." in text:
            yield from _addresses(_IPV4, text)

    def _phones(self, text: str) -> Iterator[Finding]:
        # Without a region only numbers written with their country code are recognised:
        # "+49 30 901820", not "030 901820", which could be anything in a support chat.
        # The code may follow the 00 most of the world dials first ("0044 20 ..."), read
        # as a '+' (one space before it keeps every position where it was).
        region = self.region or "ZZ"
        dialled = _DIAL_00.sub(" +", text) if "00" in text else text
        if self.region is None and "+" not in dialled:
            return  # no country code, and no region to read a national number with
        for match in phonenumbers.PhoneNumberMatcher(dialled, region, phonenumbers.Leniency.VALID):
            start = match.start
            if dialled[start] == "+" and text[start - 1 : start + 1] == "00":
                start -= 1
            yield Finding(Kind.PHONE, start, match.end, text[start : match.end])

    @staticmethod
    def _ipv6(text: str) -> Iterator[Finding]:
        # Not among the numbers: an IPv6 address may hold no digit ("fe80::abcd").
        if text.count(":") >= 2:
            yield from _addresses(_IPV6, text)


def _addresses(pattern: re.Pattern[str], text: str) -> Iterator[Finding]:
    """The IP addresses among `pattern`'s matches (`ipaddress` decides)."""
    for match in pattern.finditer(text):
        try:
            address = ipaddress.ip_address(match.group())
        except ValueError:
            continue
        if address.version == 6 and match.group().count(":") < 2:
            continue
        yield Finding(Kind.IP, match.start(), match.end(), match.group())


def _matches(kind: str, pattern: re.Pattern[str], text: str) -> Iterator[Finding]:
    for match in pattern.finditer(text):
        if match.end() > match.start():  # an empty match (a custom `x?`) finds nothing
            yield Finding(kind, match.start(), match.end(), match.group())
