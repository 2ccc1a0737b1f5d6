"""The apt-get helper of the dev tools: what it finds, and what it says when it may not install."""

from __future__ import annotations

import pytest

from dev.services import debian, redis_stack_local
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


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (
            "debian.sources",  # deb822, as bookworm writes it
            "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n\n"
            "Types: deb\nURIs: http://mirror.example/debian-security\n"
            "Suites: bookworm-security\nComponents: main\n",
        ),
        (
            "sources.list",  # one line a source; a commented one is not used
            "# deb http://old.example/debian-security bookworm-security main\n"
            "deb [arch=amd64] http://mirror.example/debian-security/ bookworm-security main\n",
        ),
    ],
)
def test_the_security_archive_is_the_one_the_apt_sources_name(tmp_path, monkeypatch, name, text):
    (tmp_path / name).write_text(text)
    monkeypatch.setattr(redis_stack_local, "_APT_SOURCES", (tmp_path / "absent", tmp_path))
    assert redis_stack_local.security_archive() == "http://mirror.example/debian-security"


def test_no_security_archive_is_named_in_the_error(tmp_path, monkeypatch):
    (tmp_path / "debian.sources").write_text("Types: deb\nURIs: http://mirror.example/debian\n")
    monkeypatch.setattr(redis_stack_local, "_APT_SOURCES", (tmp_path,))
    with pytest.raises(ServiceError, match=r"no Debian security archive .* libssl1\.1"):
        redis_stack_local.security_archive()
