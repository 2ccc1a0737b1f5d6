"""The one builder of groupless consumers: what it guarantees whatever the settings."""

from __future__ import annotations

import pytest

from chatlog.processors import kafka_consumer
from chatlog.processors.kafka_consumer import groupless_consumer
from chatlog.schemas.errors import ConfigError


@pytest.fixture
def built(monkeypatch):
    """The settings each consumer is built with, in order (no consumer is created)."""
    seen: list[dict] = []
    monkeypatch.setattr(kafka_consumer, "Consumer", lambda conf: seen.append(conf) or conf)
    return seen


def test_the_user_cannot_make_it_join_a_group_or_commit(built):
    groupless_consumer(
        "b:9092",
        {
            "group.id": "shared",
            "enable.auto.commit": True,
            "auto.offset.reset": "latest",
            "client.id": "mine",
        },
        purpose="history",
    )
    [conf] = built
    assert conf["bootstrap.servers"] == "b:9092"
    assert conf["group.id"].startswith("chatlog-history-")
    assert conf["enable.auto.commit"] is False
    assert conf["enable.auto.offset.store"] is False
    assert conf["auto.offset.reset"] == "earliest"  # out of range: reread, never skip
    assert conf["client.id"] == "mine"  # the user's other settings pass through


def test_each_consumer_gets_its_own_throwaway_group_id(built):
    groupless_consumer("b:9092", purpose="tail")
    groupless_consumer("b:9092", purpose="tail")
    assert built[0]["group.id"] != built[1]["group.id"]


def test_the_callers_tuning_wins_over_the_users_settings(built):
    groupless_consumer(
        "b:9092",
        {"fetch.max.bytes": 1, "max.partition.fetch.bytes": 1},
        purpose="replay",
        tuning={"fetch.max.bytes": 64},
    )
    [conf] = built
    assert (conf["fetch.max.bytes"], conf["max.partition.fetch.bytes"]) == (64, 1)


def test_an_unknown_setting_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match=r"no\.such\.property"):
        groupless_consumer("127.0.0.1:1", {"no.such.property": "1"}, purpose="tail")
