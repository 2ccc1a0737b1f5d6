"""A producer in another language: the Node.js example (`examples/node/`) publishes events to a
real broker, a real projector folds them, and chatlog's Python library reads them back.

The example's dependencies come from the npm registry by its lockfile (`npm ci`), once per
lockfile: a stamp in node_modules records which lockfile it was installed from, so a
second run costs nothing. Only a machine with no `node` skips these tests.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from chatlog.producers.partitioning import partition_for
from chatlog.schemas.codec import schema_versions
from chatlog.schemas.position import Position
from tests.processes import ROOT, chatlog_env, full_chatlog, running_projector

NODE = shutil.which("node")
EXAMPLE = ROOT / "examples" / "node"
STAMP = EXAMPLE / "node_modules" / ".chatlog-installed-from"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        NODE is None, reason="node is not installed: the Node.js example cannot run"
    ),
]


@pytest.fixture(scope="module")
def node_example() -> Path:
    """examples/node with its dependencies installed from its lockfile."""
    lock = hashlib.sha256((EXAMPLE / "package-lock.json").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text(encoding="utf-8") == lock:
        return EXAMPLE
    npm = shutil.which("npm")
    assert npm is not None, "node is installed but npm is not: install npm (Debian: npm)"
    run(npm, "ci", "--no-audit", "--no-fund", "--loglevel=error", timeout=600)
    STAMP.write_text(lock, encoding="utf-8")
    return EXAMPLE


def node(*args: str, env: dict[str, str] | None = None) -> str:
    """`node args...` in the example; its stdout."""
    assert NODE is not None
    return run(NODE, *args, env=env, timeout=120)


def run(*command: str, env: dict[str, str] | None = None, timeout: float) -> str:
    """`command` in the example's folder; its stdout, or a failure showing its stderr."""
    done = subprocess.run(
        command,
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    shown = " ".join(command[:3])
    assert done.returncode == 0, f"{shown} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


def test_the_node_example_encodes_every_vector_as_the_python_codec(node_example):
    version = schema_versions()[-1].version
    vectors = json.loads((ROOT / f"tests/vectors/ConversationEvent.v{version}.json").read_text())
    report = node("--test", "test/")
    # One test per vector, plus the fingerprint, the event builder and the refusals.
    assert f"# pass {len(vectors) + 3}\n" in report
    assert "# fail 0\n" in report


def test_a_node_published_message_is_projected_and_read_back(
    node_example, kafka, settings, tmp_path
):
    # "session-1" and "order-7731" have negative murmur2 hashes: the partitions a client
    # that read the hash unsigned would pick differ (docs/other-languages.md).
    sessions = ["session-1", "order-7731", f"node-{uuid.uuid4()}"]
    env = chatlog_env(settings)  # CHATLOG_KAFKA_BOOTSTRAP and CHATLOG_TOPIC among them
    published = {}
    for session in sessions:
        content = f"Hello from Node.js in {session}: ✓ 日本語 🙂"
        line = node(
            "publish.mjs",
            *("--session", session, "--user", "alice-node", "--content", content),
            env=env,
        )
        published[session] = {"content": content, **json.loads(line)}

    for session, sent in published.items():
        assert sent["topic"] == settings.topic
        assert sent["partition"] == partition_for(session, 6), session  # unique_settings: 6

    with (
        running_projector(settings, log=tmp_path / "projector.log"),
        full_chatlog(settings) as chat,
    ):
        for session, sent in published.items():
            after = Position(sent["partition"], sent["offset"])
            [message] = chat.context(session, user_id="alice-node", after=after).messages
            assert (message.message_id, message.role, message.content) == (
                sent["message_id"],
                "user",
                sent["content"],
            )
            assert message.offset == sent["offset"]

        # chatlog's own producer puts the same key on the same partition, and the session
        # goes on: the Node event (clear) and the Python one (sealed) read as one chat.
        session = sessions[0]
        reply = chat.append(session, user_id="alice-node", role="assistant", content="Hi, Python")
        assert reply.partition == published[session]["partition"]
        context = chat.context(session, user_id="alice-node", after=reply)
        assert [m.content for m in context.messages] == [
            published[session]["content"],
            "Hi, Python",
        ]

    # What docs/other-languages.md warns of: the Node event is not sealed, chatlog's is.
    values = [m.value() for m in kafka.consume_all(settings.topic)]
    assert any(published[session]["content"].encode() in value for value in values)
    assert not any(b"Hi, Python" in value for value in values)
