"""The CLI's pure paths: settings display and refusals that need no server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from chatlog.cli import main
from chatlog.cli.common import exit_status
from chatlog.schemas.errors import (
    BrokerUnavailable,
    ConfigError,
    DataLoss,
    Incomplete,
    Interrupted,
    PublishTimeout,
    ReadTimeout,
    StoreUnavailable,
    TopicMissing,
)


def test_config_prints_the_effective_settings_as_json(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CHATLOG_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("CHATLOG_KAFKA_BOOTSTRAP", "k:9092")
    monkeypatch.setenv("CHATLOG_KAFKA__SASL_PASSWORD", "hunter2")
    assert main(["config", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["CHATLOG_KAFKA_BOOTSTRAP"] == "k:9092"
    assert shown["CHATLOG_KAFKA__SASL_PASSWORD"] == "***"


def test_an_unknown_setting_stops_every_command_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("CHATLOG_TOPICS", "x")
    assert main(["config"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "chatlog: error: unknown setting CHATLOG_TOPICS: did you mean CHATLOG_TOPIC? "
        "(Kafka properties go in CHATLOG_KAFKA__<NAME>)"
    )


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (BrokerUnavailable("no broker answered"), 75),
        (StoreUnavailable("Redis did not answer"), 75),
        (ReadTimeout("the projection did not reach 0:5"), 75),
        (Interrupted("replay interrupted"), 75),
        (Incomplete("a replay worker failed"), 75),
        (DataLoss("Redis lost the projection of partition 0"), 1),
        (ConfigError("bad setting"), 1),
        (TopicMissing("topic chatlog.events does not exist"), 1),
        (PublishTimeout("may or may not be stored"), 1),
        (RuntimeError("a bug"), 1),
    ],
)
def test_exit_status_says_whether_running_again_may_work(error, status):
    assert exit_status(error) == status


def test_a_command_that_finds_no_server_exits_75_restart_me(monkeypatch, capsys):
    def unavailable() -> None:
        raise BrokerUnavailable("no Kafka broker answered at k:9092")

    monkeypatch.setattr("chatlog.cli.Settings.from_env", unavailable)
    assert main(["config"]) == 75
    assert capsys.readouterr().err.strip() == ("chatlog: error: no Kafka broker answered at k:9092")


STOP_WHILE_WAITING = """
import os, signal, sys
from chatlog.cli.common import stop_on_signals
with stop_on_signals(deadline_s=None) as stop:
    # The main thread holds the event's lock, as it does inside `stop.wait()`, when
    # SIGTERM arrives: the handler runs right here, on this thread.
    with stop._cond:
        os.kill(os.getpid(), signal.SIGTERM)
    sys.exit(0 if stop.wait(5) else 3)
"""


def test_a_stop_signal_arriving_inside_the_wait_is_seen_not_a_hang():
    done = subprocess.run(
        [sys.executable, "-c", STOP_WHILE_WAITING], check=False, capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stderr.decode()
