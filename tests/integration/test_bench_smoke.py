"""`python -m bench --quick` runs end to end, writing its tables and chart (numbers not judged)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.processes import ROOT

pytestmark = pytest.mark.integration


# Every scenario, quick: about 3 minutes alone, over 4 beside the other tests (make test
# runs it on one of three workers), more on a loaded machine.
@pytest.mark.timeout(630)
def test_the_quick_benchmark_runs_and_writes_every_scenario(
    tmp_path, kafka, redis_url, recall_redis_url
):
    output = tmp_path / "bench.md"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLOG_")}
    env |= {"CHATLOG_KAFKA_BOOTSTRAP": kafka.bootstrap, "CHATLOG_REDIS_URL": redis_url}
    # The checkpoint scenario's Redis saver needs the JSON and search modules.
    env["CHATLOG_RECALL_REDIS_URL"] = recall_redis_url
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    table = output.read_text(encoding="utf-8")
    for scenario in (
        "| append |",
        "| context read |",
        "| publish→visible |",
        "| projection |",
        "| replay |",
        "| memory |",
        "| summary throughput |",
        "| sealing |",
        "| pii |",
        "| recall_quality |",
        "| recall_cost |",
        "| gateway sse |",
        "| gateway |",
        "| checkpoint |",
        "## summary cost",
        "## pii redaction quality",
        "## recall quality: evidence recall",
        "## recall quality by kind of fact",
        "## recall index: memory per 1,000 turns",
        "## capacity: measured",
        "## capacity: worked example for 10,000 messages/s",
        "| 3 projectors: backlog drained |",
        "LLM slots at 0.2 s a call",
    ):
        assert scenario in table
    beside = table.split("## Details")[0]
    for peer in (
        "Kafka ProducerPerformance",
        "LangChain RedisChatMessageHistory.add_message",
        "plain Redis list: RPUSH + EXPIRE",
        "LangChain RedisChatMessageHistory.messages",
        "Kafka EndToEndLatency",
        "Kafka ConsumerPerformance",
        "the same, not sealed (no keyring)",
        "scrubadub 2.0.1 Scrubber().clean",
        "AsyncChatLog.append in process",
        "AsyncChatLog.context in process",
        "LangGraph InMemorySaver",
        "RedisSaver (langgraph-checkpoint-redis)",
        "redisvl SearchIndex.load of the same hashes",
        "redisvl SearchIndex.query(VectorQuery)",
    ):
        assert peer in beside
    for size in ("2 KB state", "200 KB state"):
        assert f"| checkpoint | put p99, {size}" in beside
        assert f"| checkpoint | get_tuple p99, {size}" in beside
    for size in ("20-message session", "100-message session", "1,000-message session"):
        assert size in beside
    for rate in ("500 events/s", "2,000 events/s", "4,000 events/s"):
        assert rate in beside
    for offered in (
        "offered 200/s (achieved",
        "offered 500/s (achieved",
        "offered 1,000/s (achieved",
    ):
        assert offered in beside
    assert "## gateway overhead" in table
    for sealing in ("projection, events/s", "replay, events/s", "context read p50", "erase_user"):
        assert f"| sealing | {sealing}" in beside
    # `--sealing both` is the default: the headline rows again with sealing off, beside.
    twins = table.split("## Sealing on and off")[1].split("## Details")[0]
    for size in ("20-message session", "100-message session", "1,000-message session"):
        assert f"| context read | p99, {size} |" in twins
    for row in (
        "| append | p50 of one call, one at a time",
        "| append | events/s, one at a time",
        "| append | events/s, batched",
        "| publish→visible | p50 at 2,000 events/s |",
        "| publish→visible | p99 at 2,000 events/s |",
        "| publish→visible | p99 at 4,000 events/s |",
        "| publish→visible | saturation: ",
        "| projection | events/s, one projector process",
        "| replay | events/s, `chatlog replay --workers",
    ):
        assert row in twins
    # A gateway row may say n/a: on a loaded machine, a quick run at 1,000/s may see none
    # of its measured requests answered before the drain ends (the notes count them).
    measured = [line for line in table.split("Notes:")[0].splitlines() if "| gateway |" not in line]
    assert "n/a" not in "\n".join(measured)
    assert "blocked" not in beside
    assert (tmp_path / "bench.png").read_bytes().startswith(b"\x89PNG")
    # The README part is between its markers, for `--update-readme`.
    assert beside.count("<!-- readme:start -->") == beside.count("<!-- readme:end -->") == 1
