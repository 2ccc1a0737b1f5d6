"""The apt-get helper of the dev tools: what it finds, and what it says when it may not install."""

from __future__ import annotations

import pytest

from dev.services import debian
from dev.services.state import ServiceError


def test_programs_found_are_returned_without_installing(monkeypatch):
    def no_apt(*args, **kwargs):
        raise AssertionError("apt-get ran although every program was found")

    monkeypatch.setattr(debian, "_apt", no_apt)
    assert debian.ensure_programs(["sh"], packages=["dash"], service="test") == [
        debian.find_program("sh")
    ]


def test_a_missing_program_without_root_names_the_command_to_run(monkeypatch):
    monkeypatch.setattr(debian.os, "geteuid", lambda: 1000)
    with pytest.raises(ServiceError) as raised:
        debian.ensure_programs(
            ["sh", "chatlog-no-such-program"], packages=["chromium", "chromium-driver"], service="x"
        )
    message = str(raised.value)
    assert message.startswith("chatlog-no-such-program is not installed; install it with")
    assert "apt-get install -y chromium chromium-driver" in message
    assert raised.value.context == {"service": "x"}
