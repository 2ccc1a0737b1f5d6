"""Which partition a session lives on: Kafka's Java murmur2 partitioner, in pure Python.

Every producer of `chatlog.events`, in any language, must put a session on the same
partition, or the session's order is lost. Java clients hash the key with murmur2 and
take it modulo the partition count; librdkafka's ``murmur2_random`` partitioner does the
same for non-empty keys. This module lets readers and tests compute the partition without
asking the broker, and lets a test check that the producer agrees with Java.
"""

from __future__ import annotations

__all__ = ["murmur2", "partition_for"]

_MASK = 0xFFFFFFFF
_SEED = 0x9747B28C
_M = 0x5BD1E995
_R = 24


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2``: a signed 32-bit hash, byte-for-byte as in Java."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length & ~3
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> _R
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    tail = length & 3
    if tail:
        # Java's switch falls through from case 3 to case 1.
        if tail == 3:
            h ^= data[whole + 2] << 16
        if tail >= 2:
            h ^= data[whole + 1] << 8
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(session_id: str, partitions: int) -> int:
    """The partition Java's default partitioner picks for key `session_id`."""
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    return (murmur2(session_id.encode("utf-8")) & 0x7FFFFFFF) % partitions
