"""The CLI's pure paths: settings display and refusals that need no server."""

from __future__ import annotations

import json

from chatlog.cli import main


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
