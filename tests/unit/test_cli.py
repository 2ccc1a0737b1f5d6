"""The CLI's pure paths: settings display and refusals that need no server."""

from __future__ import annotations

import json
import os
import stat

import pytest

from chatlog import wiring
from chatlog.cli import main
from chatlog.cli.common import exit_status
from chatlog.processors.audit import AuditTrail
from chatlog.schemas.errors import (
    BrokerUnavailable,
    ConfigError,
    DataLoss,
    Incomplete,
    Interrupted,
    OwnershipError,
    PublishTimeout,
    ReadTimeout,
    StoreUnavailable,
    TopicMissing,
)
from chatlog.schemas.events import ProducerInfo
from chatlog.schemas.master_keys import LocalKeyProvider, new_master_key
from chatlog.schemas.position import Position
from tests.unit.test_audit import ListLog


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


def test_redact_is_recorded_in_the_audit_trail(monkeypatch, capsys, tmp_path):
    """`chatlog redact` is an operation the audit trail lists (docs/privacy.md): the
    redaction and its refusals, under the CLI's principal."""

    class Producer:
        info = ProducerInfo()

        def publish(self, event: object) -> Position:
            return Position(0, 7)

        def close(self) -> None:
            pass

    class Reader:
        class client:  # noqa: N801 - what ChatLog closes
            @staticmethod
            def close() -> None:
                pass

        def context(self, session_id: str, *, user_id: str, timeout: float) -> None:
            if user_id != "ann":
                raise OwnershipError(f"session {session_id} belongs to another user")

    trail = ListLog()
    provider = LocalKeyProvider.from_spec(new_master_key("k1"))
    monkeypatch.setenv("CHATLOG_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(wiring, "producer", lambda settings: Producer())
    monkeypatch.setattr(wiring, "reader", lambda settings: Reader())
    monkeypatch.setattr(wiring, "kafka_history", lambda settings: None)
    monkeypatch.setattr(
        wiring,
        "audit_trail",
        lambda settings, **_: AuditTrail(trail, provider, "ops@host"),
    )
    assert main(["redact", "--session", "s-1", "--message", "m-1", "--user", "ann"]) == 0
    assert main(["redact", "--session", "s-1", "--message", "m-1", "--user", "eve"]) == 1
    capsys.readouterr()
    records = [(r.action, r.outcome, r.session_id, dict(r.details)) for r in trail.records()]
    assert records == [
        ("message_redacted", "ok", "s-1", {"message_id": "m-1", "position": "0:7"}),
        ("message_redacted", "refused", "s-1", {"message_id": "m-1", "error": "OwnershipError"}),
    ]


def test_export_writes_a_file_only_its_owner_can_read(monkeypatch, capsys, tmp_path):
    """The export holds a person's every message in clear: not for other local users."""

    class Exporter:
        def export(self, user_id: str, *, tenant: str, audit: object) -> dict:
            return {"sessions": [{"messages": [{"content": "card 4111 1111 1111 1111"}]}]}

    monkeypatch.setenv("CHATLOG_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(wiring, "exporter", lambda settings: Exporter())
    monkeypatch.setattr(
        wiring,
        "audit_trail",
        lambda settings, **_: AuditTrail(
            ListLog(), LocalKeyProvider.from_spec(new_master_key("k1")), "ops"
        ),
    )
    out = tmp_path / "ann.json"
    out.write_text("an older export")  # replaced, and made private too
    out.chmod(0o644)
    umask = os.umask(0o022)  # the usual default: files readable by everyone
    try:
        assert main(["export", "--user", "ann", "--output", str(out), "--json"]) == 0
    finally:
        os.umask(umask)
    assert json.loads(out.read_text())["sessions"][0]["messages"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
