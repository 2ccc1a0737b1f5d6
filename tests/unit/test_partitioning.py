"""The partitioner matches Java's, so every language puts a session on one partition."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatlog.producers.partitioning import murmur2, partition_for
from tests import partition_vectors

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


def test_the_documented_partition_vectors_are_what_partition_for_computes():
    text = partition_vectors.DOC.read_text(encoding="utf-8")
    begin, end = partition_vectors.BEGIN, partition_vectors.END
    documented = text[text.index(begin) + len(begin) : text.index(end)].strip()
    assert documented == partition_vectors.table(), (
        "the table of docs/other-languages.md is not what the code computes: replace it "
        "with the output of `python -m tests.partition_vectors`"
    )
    # The parser the integration test reads the table with sees every row and column.
    rows = partition_vectors.documented()
    assert list(rows) == list(partition_vectors.SESSION_IDS)
    assert all(len(numbers) == 5 for numbers in rows.values())
