"""Readiness follows Redis: a projector whose Redis is stopped answers 503 on /readyz
(and `chatlog health` exits 1), then 200 once Redis is back."""

from __future__ import annotations

import signal

import pytest

from tests.integration.test_metrics import health, status
from tests.processes import free_port, running_projector, unique_settings, wait_until

pytestmark = pytest.mark.system


def test_readiness_goes_503_while_redis_is_stopped_and_200_when_it_is_back(
    kafka, private_redis, tmp_path
):
    settings = unique_settings(
        kafka, private_redis.url, "health", partitions=2, metrics_port=free_port()
    )
    base = f"http://127.0.0.1:{settings.metrics_port}"
    with running_projector(settings, log=tmp_path / "projector.log"):
        wait_until(lambda: status(base, "/readyz")[0] == 200, timeout=60, what="ready")
        private_redis.signal(signal.SIGSTOP)  # stalled: connections hang, then time out
        try:
            wait_until(lambda: status(base, "/readyz")[0] == 503, timeout=30, what="not ready")
            code, reason = status(base, "/readyz")
            assert code == 503
            assert "Redis" in reason
            assert health(settings).returncode == 1
            # Alive all the same: the loop waits for Redis, turning.
            assert status(base, "/livez")[0] == 200
        finally:
            private_redis.signal(signal.SIGCONT)
        wait_until(lambda: status(base, "/readyz")[0] == 200, timeout=60, what="ready again")
        assert health(settings).returncode == 0
