"""The curl examples of docs/http.md run, as written, against a real gateway.

Every ```sh block of the page that calls ``curl`` is run by bash (``-euo pipefail``) with
the real ``curl``, ``GATEWAY`` set to a running gateway's URL and ``chatlog`` on the
``PATH`` (so ``chatlog token`` mints tokens it accepts). A shim in front of ``curl``
records the HTTP status of every call: each must be a 2xx, unless the line of the call
ends with a comment naming the status it shows (``# 401: no token``). A block that
streams must bound itself (``--max-time``, or a request that ends the stream), as a
reader's terminal would not. How a block that continues another, or one that starts
servers, is taken: `curl_blocks`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gateways import Gateway
from tests.processes import ROOT, chatlog_env

pytestmark = pytest.mark.integration

PAGE = ROOT / "docs" / "http.md"
# A call of curl as a command: at the start of a line, after `$(`, a pipe, `;` or `&&`.
CURL_CALL = re.compile(r"(?:^|\$\(|\||;|&&)\s*curl\s")
EXPECTED_STATUS = re.compile(r"#\s*(\d{3})\b")
SHIM = """#!/usr/bin/env bash
# Records the status of each call (the last one if curl followed a redirect).
headers=$(mktemp)
status=0
"$REAL_CURL" -D "$headers" "$@" || status=$?
awk '/^HTTP\\//{code=$2} END{print (code == "" ? "none" : code)}' "$headers" >> "$CURL_LOG"
rm -f "$headers"
exit $status
"""


CONTINUES = "# continues the block above"
STARTS_SERVERS = re.compile(r"^\s*chatlog (serve|run)\b", re.MULTILINE)


def curl_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of every ```sh block of `text` that calls curl.

    A block whose first line is `CONTINUES` runs after the block before it (it uses its
    variables). A block that starts servers itself (``chatlog serve``, ``chatlog run``) is
    a terminal session, not a request against a running gateway: it is left to the test
    of what it starts (the chat page's)."""
    found = []
    previous = ""
    for match in re.finditer(r"^```sh\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        code = match.group(1)
        if code.startswith(CONTINUES):
            code = previous + code
        previous = code
        if STARTS_SERVERS.search(code):
            continue
        if any(CURL_CALL.search(line.split("#")[0]) for line in code.splitlines()):
            found.append((text.count("\n", 0, match.start()) + 1, code))
    return found


def expected_statuses(code: str) -> list[str]:
    """What each curl call of `code` must answer, in order: `2xx` or the status its
    line's comment names."""
    logical = re.sub(r"\\\n", " ", code).splitlines()
    expected = []
    for line in logical:
        command, _, comment = line.partition("#")
        calls = len(CURL_CALL.findall(command))
        named = EXPECTED_STATUS.match("#" + comment) if comment else None
        expected += [named.group(1) if named else "2xx"] * calls
    return expected


BLOCKS = curl_blocks(PAGE.read_text(encoding="utf-8"))


def test_the_page_has_curl_examples():
    assert len(BLOCKS) >= 1
    assert all(expected_statuses(code) for _, code in BLOCKS)


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"http.md:{n}" for n, _ in BLOCKS])
def test_a_curl_example_of_the_docs_runs(gateway: Gateway, tmp_path: Path, line: int, code: str):
    real = shutil.which("curl")
    assert real is not None, "the curl examples need curl (apt-get install curl)"
    shim = tmp_path / "bin" / "curl"
    shim.parent.mkdir()
    shim.write_text(SHIM, encoding="utf-8")
    shim.chmod(0o755)
    log = tmp_path / "statuses"
    env = chatlog_env(gateway.settings)
    env |= {"GATEWAY": gateway.url, "REAL_CURL": real, "CURL_LOG": str(log)}
    # The shim first, then `chatlog` as installed beside this interpreter, as a reader's
    # shell would find it.
    env["PATH"] = os.pathsep.join([str(shim.parent), str(Path(sys.executable).parent), env["PATH"]])
    ran = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, f"docs/http.md:{line} failed:\n{ran.stderr}"
    statuses = log.read_text().split() if log.exists() else []
    expected = expected_statuses(code)
    assert len(statuses) == len(expected), f"calls of curl: {statuses}, expected {expected}"
    for got, want in zip(statuses, expected, strict=True):
        assert got == want if want != "2xx" else got.startswith("2"), (statuses, expected)
    assert ran.stdout.strip(), "the example printed nothing"
