"""The wheel a release ships, and what a core-only install of it can do.

The wheel is built as a release builds it (`python -m build --wheel`, in an isolated
build environment) from a copy of the source tree, so the build leaves nothing in the
checkout. A fresh venv then installs it with no extras from the package index, and runs
`chatlog` from that venv against the real Kafka and Redis: the core appends and reads
with no extra, and a feature that needs one says which in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest

import chatlog
from tests.processes import ROOT, master_key_file

# Building and installing take a minute or two on a loaded machine, more with a cold cache.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

# Not the library: in the checkout beside it, never in the wheel.
_NOT_SHIPPED = {"dev", "bench", "tests"}
# Copied for the build: the source tree a release checks out, without local state.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", ".chatlog", "*_cache", ".hypothesis", "build", "dist", "*.egg-info"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    # symlinks=True keeps chatlog/schemas -> ../schemas a link, as in a checkout.
    shutil.copytree(ROOT, source, symlinks=True, ignore=_NOT_SOURCE)
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(work / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    [path] = (work / "dist").glob("*.whl")
    return path


def _dist_info(archive: zipfile.ZipFile, name: str) -> str:
    [entry] = [n for n in archive.namelist() if n.endswith(f".dist-info/{name}")]
    return archive.read(entry).decode()


def test_the_wheel_holds_the_chatlog_package_and_nothing_else(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        record = [line.split(",")[0] for line in _dist_info(archive, "RECORD").splitlines()]
        top_level = _dist_info(archive, "top_level.txt").split()
        metadata = HeaderParser().parsestr(_dist_info(archive, "METADATA"))

    def imports(paths: list[str]) -> set[str]:
        tops = {p.split("/")[0] for p in paths if p and ".dist-info/" not in p}
        return {t.removesuffix(".py") for t in tops}

    assert imports(names) == {"chatlog"}
    assert imports(record) == {"chatlog"}
    assert sorted(record) == sorted(names)
    assert top_level == ["chatlog"]
    assert "chatlog/schemas/avro/ConversationEvent.v1.avsc" in names
    assert "chatlog/py.typed" in names
    # The chat page the gateway serves at / (package data, no build step).
    for page_file in ("index.html", "app.js", "style.css", "favicon.svg"):
        assert f"chatlog/gateway/static/{page_file}" in names
    # The layers are files inside chatlog/, not links out of it.
    assert "chatlog/projections/view.py" in names
    shipped_tools = [n for n in names if _NOT_SHIPPED & set(n.split("/")[:-1])]
    assert shipped_tools == []
    assert metadata["Name"] == "chatlog-memory"
    assert metadata["Version"] == chatlog.__version__


@pytest.fixture(scope="module")
def core_venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed, no extras: the path of its bin/."""
    venv = tmp_path_factory.mktemp("core") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run(
        [
            venv / "bin" / "python",
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            wheel,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    return venv / "bin"


@pytest.fixture
def core_env(kafka, redis_url, redis_prefix, tmp_path) -> dict[str, str]:
    """The environment of the venv's commands: a topic, DLQ, Redis prefix and group of
    their own; nothing of this checkout or of the caller's CHATLOG_* settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CHATLOG_") and k not in {"PYTHONPATH", "VIRTUAL_ENV"}
    }
    topic = f"core.{uuid.uuid4().hex[:10]}"
    kafka.created.extend([topic, f"{topic}.dlq", f"{topic}.keys"])
    return env | {
        "CHATLOG_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "CHATLOG_REDIS_URL": redis_url,
        "CHATLOG_TOPIC": topic,
        "CHATLOG_DLQ_TOPIC": f"{topic}.dlq",
        "CHATLOG_KEYS_TOPIC": f"{topic}.keys",
        "CHATLOG_MASTER_KEY_FILE": str(master_key_file()),
        "CHATLOG_REDIS_PREFIX": redis_prefix,
        "CHATLOG_PROJECTOR_GROUP": f"core-{uuid.uuid4().hex[:8]}",
        "CHATLOG_STATE_DIR": str(tmp_path / "state"),
    }


def _run(command: list[object], env: dict[str, str], cwd: Path, timeout: float = 60):
    # cwd outside the checkout: `python -c` would otherwise import chatlog from it.
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


APPEND_AND_READ = textwrap.dedent(
    """
    import json, sys
    import chatlog
    from chatlog import ChatLog

    with ChatLog.from_env(read_timeout_s=30) as log:
        position = log.append("s-core", user_id="ada", role="user", content="Hi from the core")
        context = log.context("s-core", user_id="ada", after=position)
    print(json.dumps({
        "file": chatlog.__file__,
        "position": str(position),
        "contents": [m.content for m in context.messages],
        "loaded": sorted(m for m in ("faust", "aiokafka", "openai") if m in sys.modules),
    }))
    """
)


def test_the_core_appends_and_reads_with_no_extra_and_names_the_extra_it_lacks(
    core_venv, core_env, tmp_path
):
    cwd = tmp_path
    extras_only = ["faust", "aiokafka", "openai", "langchain_core"]
    found = f"[m for m in {extras_only!r} if importlib.util.find_spec(m)]"
    probe = _run(
        [core_venv / "python", "-c", f"import importlib.util; print({found})"], core_env, cwd
    )
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr

    topics = _run([core_venv / "chatlog", "topics", "create"], core_env, cwd)
    assert topics.returncode == 0, topics.stdout + topics.stderr
    with open(tmp_path / "projector.log", "wb") as log:
        projector = subprocess.Popen(
            [str(core_venv / "chatlog"), "run", "projector"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=core_env,
            cwd=cwd,
        )
    try:
        script = _run([core_venv / "python", "-c", APPEND_AND_READ], core_env, cwd, timeout=90)
    finally:
        if projector.poll() is None:
            projector.send_signal(signal.SIGTERM)
        try:
            stopped = projector.wait(30)
        except subprocess.TimeoutExpired:
            projector.kill()
            stopped = projector.wait(10)
    projector_log = (tmp_path / "projector.log").read_text(errors="replace")
    assert script.returncode == 0, script.stderr + projector_log
    shown = json.loads(script.stdout)
    assert Path(shown["file"]).is_relative_to(core_venv.parent)
    assert shown["contents"] == ["Hi from the core"]
    assert shown["loaded"] == []
    assert stopped == 0, projector_log

    summarizer = _run([core_venv / "chatlog", "run", "summarizer"], core_env, cwd)
    assert summarizer.returncode == 1, summarizer.stdout + summarizer.stderr
    [line] = summarizer.stderr.strip().splitlines()
    assert line.startswith("chatlog: error: ")
    assert "pip install 'chatlog-memory[summarizer]'" in line

    # The gateway's commands name the server extra, as the summarizer names its own.
    for command in (["serve"], ["token", "--user", "alice"]):
        ran = _run([core_venv / "chatlog", *command], core_env, cwd)
        assert ran.returncode == 1, ran.stdout + ran.stderr
        [line] = ran.stderr.strip().splitlines()
        assert line.startswith("chatlog: error: ")
        assert "pip install 'chatlog-memory[server]'" in line
