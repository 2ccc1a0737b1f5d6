"""Structured logs from the real processes: with CHATLOG_LOG_FORMAT=json every line the
projector, the summarizer (faust's lines included) and the gateway write is one JSON
object with the same fields, no colour codes, and no message content."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from chatlog import wiring
from chatlog.logs import CONTEXT_FIELDS
from tests.processes import (
    full_chatlog,
    opened,
    running_gateway,
    running_processor,
    running_projector,
    unique_settings,
    wait_until,
)

pytestmark = pytest.mark.integration

REQUIRED = {"time", "level", "logger", "process", "message"}
SESSION = "logged-session"


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a process's output (stdout and stderr), each parsed as JSON and
    checked for the fields every line carries."""
    lines = path.read_text().splitlines()
    assert lines, f"{path.name} is empty"
    records = []
    for line in lines:
        assert "\x1b" not in line, f"a colour or cursor code in {line!r}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"{path.name}: not a JSON line: {line!r}")
        assert record.keys() >= REQUIRED, f"{path.name}: fields missing in {line!r}"
        assert set(record) <= REQUIRED | set(CONTEXT_FIELDS) | {"exception"}, line
        records.append(record)
    return records


def test_projector_and_summarizer_write_json_lines_with_the_fields_and_no_content(
    kafka, redis_url, redis_prefix, tmp_path
):
    settings = unique_settings(
        kafka,
        redis_url,
        redis_prefix,
        log_format="json",
        partitions=2,
        window=4,
        summary_threshold=2,
        summarizer_group=f"summarizer-{uuid.uuid4().hex[:8]}",
    )
    canary = f"canary-{uuid.uuid4().hex}"
    projector_log, summarizer_log = tmp_path / "projector.log", tmp_path / "summarizer.log"
    with (
        running_projector(settings, log=projector_log),
        running_processor("summarizer", settings, log=summarizer_log),
    ):
        with full_chatlog(settings) as chat:
            for n in range(12):
                role = "user" if n % 2 == 0 else "assistant"
                chat.append(SESSION, user_id="alice", role=role, content=f"{canary} turn {n}")
        # A record that is no event: dead-lettered, and its line names its partition.
        producer = Producer({"bootstrap.servers": kafka.bootstrap})
        producer.produce(settings.topic, key=b"junk", value=b"not an event", partition=1)
        assert producer.flush(10) == 0

        def summarized() -> bool:
            stored = wiring.live_store(settings).load([SESSION])[SESSION]
            view = opened(settings, stored)
            return view is not None and view.summary is not None

        wait_until(summarized, timeout=60, what="the summarizer to summarize the session")
        wait_until(
            lambda: "dead-lettering" in projector_log.read_text(),
            timeout=30,
            what="the projector to dead-letter the junk record",
        )

    projector, summarizer = json_lines(projector_log), json_lines(summarizer_log)
    assert {r["process"] for r in projector} == {"projector"}
    assert {r["process"] for r in summarizer} == {"summarizer"}
    assert any(r["message"].startswith("projecting ") for r in projector)
    # The start line, logged before faust's worker starts, is kept (mode cleared it).
    assert any(r["message"].startswith("summarizing ") for r in summarizer)
    # faust's and mode's own lines come out in the same format.
    assert any(r["logger"].startswith(("faust", "mode")) for r in summarizer)
    [dead] = [r for r in projector if r["message"].startswith("dead-lettering")]
    assert dead["partition"] == 1
    assert dead["level"] == "WARNING"
    for path in (projector_log, summarizer_log):
        assert canary not in path.read_text(), f"message content in {path.name}"


def test_the_gateway_and_uvicorn_write_json_lines(kafka, redis_url, redis_prefix, tmp_path):
    settings = unique_settings(
        kafka, redis_url, redis_prefix, log_format="json", auth_secret="s" * 32
    )
    log = tmp_path / "serve.log"
    with running_gateway(settings, log=log) as url:
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    records = json_lines(log)
    assert {r["process"] for r in records} == {"gateway"}
    # uvicorn's start line and its access log, through chatlog's handler.
    assert any(r["logger"] == "uvicorn.error" for r in records)
    assert any(r["logger"] == "uvicorn.access" and "/healthz" in r["message"] for r in records)
