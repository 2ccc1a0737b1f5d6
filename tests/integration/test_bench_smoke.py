"""`python -m bench --quick` runs end to end and writes its table (numbers not judged)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.processes import ROOT

pytestmark = pytest.mark.integration


def test_the_quick_benchmark_runs_and_writes_every_scenario(tmp_path, kafka, redis_url):
    output = tmp_path / "bench.md"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLOG_")}
    env |= {"CHATLOG_KAFKA_BOOTSTRAP": kafka.bootstrap, "CHATLOG_REDIS_URL": redis_url}
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    table = output.read_text(encoding="utf-8")
    for scenario in (
        "| projection |",
        "| publish→visible |",
        "| context read |",
        "| summary throughput |",
        "| replay |",
        "## summary cost",
    ):
        assert scenario in table
    assert "n/a" not in table.split("Notes:")[0]
