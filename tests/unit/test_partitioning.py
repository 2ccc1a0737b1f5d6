"""The partitioner matches Java's, so every language puts a session on one partition."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatlog.producers.partitioning import murmur2, partition_for

# Kafka's own test vectors (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest).
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("data", "expected"), JAVA_MURMUR2.items())
def test_murmur2_matches_java(data, expected):
    assert murmur2(data) == expected


@given(st.binary(max_size=64))
def test_murmur2_is_a_signed_32_bit_int(data):
    assert -(2**31) <= murmur2(data) < 2**31


@given(st.text(min_size=1, max_size=40), st.integers(min_value=1, max_value=500))
def test_partition_is_in_range_and_stable(session_id, partitions):
    first = partition_for(session_id, partitions)
    assert 0 <= first < partitions
    assert partition_for(session_id, partitions) == first


def test_partition_for_refuses_zero_partitions():
    with pytest.raises(ValueError, match="at least 1"):
        partition_for("s1", 0)
