"""LangGraph's own conformance suite for checkpointers, run on `ChatlogCheckpointSaver`
against the real Kafka and Redis with a real projector (`chatlog run projector`).

`langgraph-checkpoint-conformance` registers a saver factory (`checkpointer_test`) and
runs one suite per capability (`validate`): every base capability (put, put_writes,
get_tuple, list, delete_thread) must pass, and of the extended ones copy_thread, the one
built (prune and delete_for_runs are not); the report of each run is printed (`pytest
-s` shows it).

The suite expects to read what it just wrote with no wait of its own: the saver gives
it that by waiting, bounded, for the projector to apply its own last write to the
thread (read-your-writes), so no test of the suite is changed or skipped.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import BASE_CAPABILITIES
from langgraph.checkpoint.conformance.report import ProgressCallbacks

from chatlog.client import ChatLog
from chatlog.integrations.langgraph import ChatlogCheckpointSaver
from tests.processes import delete_prefix, running_projector, unique_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(kafka, redis_url):
    """Settings on fresh topics and a fresh prefix, with a projector running on them."""
    prefix = f"lgc{uuid.uuid4().hex[:8]}"
    settings = unique_settings(kafka, redis_url, prefix)
    with running_projector(settings):
        yield settings
    delete_prefix(redis_url, prefix)


def test_every_base_capability_of_the_conformance_suite_passes(stack):
    # One user per run: the suite makes a hundred threads, all of one owner.
    user = f"lg-{uuid.uuid4().hex[:8]}"
    log = ChatLog.from_settings(stack, flush_on_sigterm=False)
    log.read_timeout_s = 30  # a projector on a busy test machine: bounded, not hurried

    @checkpointer_test(name="ChatlogCheckpointSaver")
    async def chatlog_saver():
        yield ChatlogCheckpointSaver(log, user_id=user)

    started = time.monotonic()
    try:
        report = asyncio.run(validate(chatlog_saver, progress=ProgressCallbacks.verbose()))
    finally:
        log.close()
    took = time.monotonic() - started
    report.print_report()
    print(f"conformance suite: {took:.1f} s")
    results = report.results
    failures = {
        cap.value: results[cap.value].failures
        for cap in BASE_CAPABILITIES
        if results[cap.value].passed is not True
    }
    assert failures == {}
    assert report.passed_all_base()
    # Every test of every base capability ran (none skipped for want of a method).
    assert all(results[cap.value].tests_passed > 0 for cap in BASE_CAPABILITIES)
    # The extended ones: copy_thread is built and passes; prune and delete_for_runs are
    # not (a log forgets nothing but by erasure: docs/langgraph.md says why).
    assert results["copy_thread"].passed is True, results["copy_thread"].failures
    assert not results["prune"].detected
    assert not results["delete_for_runs"].detected
