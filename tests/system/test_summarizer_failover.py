"""The summarizer is a static group member too: a restart takes the dead worker's place.

A dynamic member restarted after a crash joins beside its dead self, and the group waits
for the dead one's session to expire before anyone gets a partition. A static one
(aiokafka's group_instance_id) replaces it, so the broker never sees two members.
"""

from __future__ import annotations

import signal
import time
import uuid

import pytest

from tests.processes import running_processor, start_processor, stop, unique_settings, wait_until

pytestmark = pytest.mark.system


def _members(kafka, group: str) -> list[tuple[str, str, int]]:
    """(member id, group.instance.id, partitions) of each member the broker lists."""
    described = kafka.admin().describe_consumer_groups([group])[group].result(10)
    return [
        (m.member_id, m.group_instance_id, len(m.assignment.topic_partitions))
        for m in described.members
    ]


def test_a_summarizer_restarted_at_once_replaces_its_dead_self_in_the_group(
    kafka, redis_url, redis_prefix, tmp_path
):
    settings = unique_settings(
        kafka,
        redis_url,
        redis_prefix,
        partitions=3,
        summarizer_group=f"summarizer-{uuid.uuid4().hex[:8]}",
    )
    group, log = settings.summarizer_group, tmp_path / "summarizer.log"
    first = start_processor("summarizer", settings, log=log)
    try:
        wait_until(
            lambda: [m[2] for m in _members(kafka, group)] == [3],
            timeout=60,
            what="the summarizer to own every partition",
        )
        [(dead_member, _, _)] = _members(kafka, group)
    finally:
        assert stop(first, sig=signal.SIGKILL) == -signal.SIGKILL
    restarted = time.monotonic()
    seen: list[list[tuple[str, str, int]]] = []

    def replaced() -> bool:
        seen.append(_members(kafka, group))
        return any(m[0] != dead_member and m[2] == 3 for m in seen[-1])

    with running_processor("summarizer", settings, log=log):
        wait_until(replaced, timeout=60, what="the restarted summarizer to own the partitions")
        print(f"the restarted summarizer owned its partitions {time.monotonic() - restarted:.2f} s")
    assert all(len(members) <= 1 for members in seen), "the dead member was waited for"
    assert seen[-1][0][1] == settings.instance_id
