"""The README's examples run: every ```python block and every `$ chatlog` line.

They run against a fresh topic and key prefix with a real projector, through the same
environment variables a user would set, so an example that drifts from the code fails.
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

README = (ROOT / "README.md").read_text(encoding="utf-8")
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
CONSOLE_LINES = [
    line.removeprefix("$ ")
    for block in re.findall(r"```console\n(.*?)```", README, flags=re.DOTALL)
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


def test_the_readme_has_examples_to_run():
    assert len(PYTHON_BLOCKS) >= 3
    assert any(line.startswith("chatlog context") for line in CONSOLE_LINES)


# LangChain deprecated RunnableWithMessageHistory (the README says so); the example still
# shows the drop-in for the code that uses it today.
@pytest.mark.filterwarnings("ignore:RunnableWithMessageHistory is deprecated")
@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_example_runs(settings, index):
    with running_projector(settings):
        exec(compile(PYTHON_BLOCKS[index], f"README.md python block {index + 1}", "exec"), {})


def test_console_examples_run(settings):
    env = chatlog_env(settings)
    with running_projector(settings):
        for line in CONSOLE_LINES:
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
            assert result.returncode == 0, f"`{line}` failed: {result.stderr}"
            if line.startswith("chatlog context"):
                assert "Where is my order 7731?" in result.stdout
