"""The documentation's examples run: every ```python block and every `$ chatlog` line.

The files are README.md and every docs/*.md. Python blocks run one test each, against a
fresh topic and key prefix with a real projector, through the same environment variables a
user would set, so an example that drifts from the code fails. The `$ chatlog ...` lines of
```console blocks run in one test, in file order (README first, then docs/ by name), so a
read can follow the publish before it; their output lines are not checked. ```sh blocks
are setup commands for people (make, export, servers that run until stopped): not run.

A python block that must not run says so where the reader sees it: its first line is
`# docs-test: skip: <reason>`. The test reports the reason; a skip with no reason fails.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time

import pytest

from tests.processes import ROOT, chatlog_env, running_projector, unique_settings

pytestmark = pytest.mark.integration

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TEXTS = {path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8") for path in DOCS}
SKIP = re.compile(r"#\s*docs-test:\s*skip\b:?\s*(?P<reason>.*)")


def _blocks(language: str, text: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


PYTHON_BLOCKS = [
    pytest.param(name, code, id=f"{name}:{number}")
    for name, text in TEXTS.items()
    for number, code in enumerate(_blocks("python", text), start=1)
]
CONSOLE_LINES = [
    (name, line.removeprefix("$ "))
    for name, text in TEXTS.items()
    for block in _blocks("console", text)
    for line in block.splitlines()
    if line.startswith("$ chatlog ")
]


@pytest.fixture
def settings(kafka, redis_url, redis_prefix, monkeypatch):
    settings = unique_settings(kafka, redis_url, redis_prefix)
    env = chatlog_env(settings)
    for name in [n for n in os.environ if n.startswith("CHATLOG_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("CHATLOG_"):
            monkeypatch.setenv(name, value)
    return settings


def test_the_docs_have_examples_to_run():
    assert _blocks("python", TEXTS["README.md"]), "the README shows one Python example"
    assert len(PYTHON_BLOCKS) >= 6
    assert any(line.startswith("chatlog context") for _, line in CONSOLE_LINES)


def test_every_skip_gives_its_reason():
    for param in PYTHON_BLOCKS:
        name, code = param.values
        first = code.splitlines()[0] if code.strip() else ""
        skip = SKIP.match(first)
        if skip:
            assert skip["reason"].strip(), f"{name}: a skipped block must say why"


# LangChain deprecated RunnableWithMessageHistory (docs/langchain.md says so); the example
# still shows the drop-in for the code that uses it today.
@pytest.mark.filterwarnings("ignore:RunnableWithMessageHistory is deprecated")
@pytest.mark.parametrize(("name", "code"), PYTHON_BLOCKS)
def test_python_example_runs(settings, name, code):
    skip = SKIP.match(code.splitlines()[0]) if code.strip() else None
    if skip:
        pytest.skip(f"{name}: {skip['reason'].strip()}")
    with running_projector(settings):
        exec(compile(code, f"{name} python block", "exec"), {})


def test_console_examples_run(settings):
    env = chatlog_env(settings)
    with running_projector(settings):
        for name, line in CONSOLE_LINES:
            command = [sys.executable, "-m", "chatlog.cli", *shlex.split(line)[1:]]
            # Reads right after a publish may run ahead of the projector: allow it a moment.
            deadline = time.monotonic() + 15
            while True:
                result = subprocess.run(
                    command, capture_output=True, text=True, env=env, timeout=60, check=False
                )
                if result.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert result.returncode == 0, f"{name}: `{line}` failed: {result.stderr}"
            if line.startswith("chatlog context"):
                assert "Where is my order 7731?" in result.stdout
