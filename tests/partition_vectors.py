"""The partition test vectors of docs/other-languages.md: session ids, their murmur2 hash, the
partition Kafka's Java partitioner gives them, and the partitions two wrong ones give.

`python -m tests.partition_vectors` prints the table the doc holds. A unit test checks that
the doc's table is this one (`tests/unit/test_partitioning.py`), and an integration test
that the broker agrees with the doc (`tests/integration/test_partition_vectors.py`).
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

from chatlog.producers.partitioning import murmur2, partition_for

DOC = Path(__file__).resolve().parent.parent / "docs" / "other-languages.md"
# The doc's table sits between these two comments (markdown does not show them).
BEGIN, END = "<!-- partition-vectors -->", "<!-- /partition-vectors -->"

# Ids chosen so that the wrong partitioners visibly differ: negative hashes (where taking
# the hash unsigned goes wrong), an id of one byte (murmur2's tail), a uuid, an email.
SESSION_IDS = (
    "session-42",
    "session-1",
    "alice-1",
    "carol@example.com",
    "order-7731",
    "3f2b9c1e-8d4a-4f6b-9e21-7c5d0a1b2c3d",
    "a",
)
HEADER = (
    "session id",
    "murmur2, signed",
    "murmur2, hex",
    "partition of 6",
    "partition of 12",
    "wrong: CRC32, of 6",
    "wrong: unsigned murmur2, of 6",
)


def crc32_partition(session_id: str, partitions: int) -> int:
    """librdkafka's default for a keyed record (``consistent_random``): CRC32 of the key."""
    return zlib.crc32(session_id.encode("utf-8")) % partitions


def unsigned_murmur2_partition(session_id: str, partitions: int) -> int:
    """murmur2 taken as an unsigned 32-bit number, as @platformatic/kafka's default does."""
    return (murmur2(session_id.encode("utf-8")) & 0xFFFFFFFF) % partitions


def rows() -> list[tuple[str, ...]]:
    """The table's rows, computed."""
    out = []
    for session_id in SESSION_IDS:
        hashed = murmur2(session_id.encode("utf-8"))
        out.append(
            (
                f"`{session_id}`",
                str(hashed),
                f"`{hashed & 0xFFFFFFFF:08x}`",
                str(partition_for(session_id, 6)),
                str(partition_for(session_id, 12)),
                str(crc32_partition(session_id, 6)),
                str(unsigned_murmur2_partition(session_id, 6)),
            )
        )
    return out


def table() -> str:
    """The markdown table, as the doc holds it."""
    lines = [_line(HEADER), _line(("---",) + ("---:",) * (len(HEADER) - 1))]
    lines += [_line(row) for row in rows()]
    return "\n".join(lines)


def documented() -> dict[str, dict[str, int]]:
    """The doc's table: each session id's numbers by column name."""
    text = DOC.read_text(encoding="utf-8")
    block = text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip().splitlines()
    found = {}
    for line in block[2:]:
        cells = [cell.strip().strip("`") for cell in line.strip("|").split("|")]
        found[cells[0]] = {
            name: int(cell)
            for name, cell in zip(HEADER[1:], cells[1:], strict=True)
            if re.fullmatch(r"-?\d+", cell) and name != "murmur2, hex"
        }
    return found


def _line(cells: tuple[str, ...]) -> str:
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    print(table())
