"""The one log format: the same fields in plain and JSON lines, secrets masked in both."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator

import pytest

from chatlog.logs import context, setup_logging
from chatlog.schemas.errors import ConfigError
from chatlog.settings import Settings


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """`setup_logging` replaces the root's handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def test_a_json_line_has_the_fields_and_the_context_known(restore_logging):
    out = io.StringIO()
    setup_logging("projector", log_format="json", stream=out)
    logging.getLogger("chatlog.projector").warning(
        "dead-lettering %s", "x", extra=context(partition=3, session_id="s-1")
    )
    record = json.loads(out.getvalue())
    assert record["time"].endswith("Z")
    assert record["time"][10] == "T"
    assert {k: record[k] for k in ("level", "logger", "process", "message")} == {
        "level": "WARNING",
        "logger": "chatlog.projector",
        "process": "projector",
        "message": "dead-lettering x",
    }
    assert (record["partition"], record["session_id"]) == (3, "s-1")
    assert "event_id" not in record  # not known: not written


def test_a_plain_line_has_the_same_fields(restore_logging):
    out = io.StringIO()
    setup_logging("summarizer", stream=out)
    logging.getLogger("chatlog.summarizer").info("loaded", extra=context(event_id="e-9"))
    _time, level, process, rest = out.getvalue().split(" ", 3)
    assert (level, process) == ("INFO", "summarizer")
    assert rest == "chatlog.summarizer: loaded [event_id=e-9]\n"


def test_secrets_are_masked_and_colour_codes_dropped_in_json(restore_logging):
    out = io.StringIO()
    setup_logging("gateway", log_format="json", stream=out)
    logging.getLogger("httpx").info("GET %s", "redis://app:hunter2@redis:6379/0")
    logging.getLogger("faust").info("\x1b[32mready\x1b[0m")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert "hunter2" not in out.getvalue()
    assert first["message"] == "GET redis://app:***@redis:6379/0"
    assert second["message"] == "ready"


def test_a_second_setup_replaces_the_first_and_warnings_become_records(restore_logging):
    first, second = io.StringIO(), io.StringIO()
    setup_logging("replay", stream=first)
    setup_logging("replay", log_format="json", stream=second)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["logger"] == "py.warnings"


def test_the_log_format_setting_is_validated():
    assert Settings.from_env({"CHATLOG_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ConfigError, match=r"CHATLOG_LOG_FORMAT='yaml'.*'plain' or 'json'"):
        Settings.from_env({"CHATLOG_LOG_FORMAT": "yaml"})


def test_an_access_line_names_the_path_never_the_query(restore_logging):
    # uvicorn's access line, as uvicorn logs it: the query is the user's words.
    out = io.StringIO()
    setup_logging("gateway", stream=out)
    access = logging.getLogger("uvicorn.access")
    line = '%s - "%s %s HTTP/%s" %d'
    access.info(line, "127.0.0.1:1", "GET", "/v1/recall?q=my+PIN+is+4321&k=5", "1.1", 200)
    access.info(line, "127.0.0.1:1", "GET", "/v1/sessions/s-1/context", "1.1", 200)
    logged = out.getvalue()
    assert "4321" not in logged
    assert '"GET /v1/recall?… HTTP/1.1" 200' in logged
    assert '"GET /v1/sessions/s-1/context HTTP/1.1" 200' in logged
