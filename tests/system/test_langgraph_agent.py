"""A LangGraph agent on `ChatlogCheckpointSaver`, on the real Kafka and Redis with a real
projector: killed with SIGKILL mid-tool-call and resumed in a new process with nothing
lost or repeated; stopped on a human's approval and resumed in a new process; and taken
back in time (a replay and a fork from earlier checkpoints).

The agent (`tests.system.langgraph_agent`) runs langchain-openai's `ChatOpenAI` against
the tests' OpenAI-compatible stand-in, which plans the tool calls from the request
(`tests.llm_stub.planned`): every model call is a request the stand-in records, and every
booking a line in the ledger file, so a repeated step shows as a repeated request or line.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from chatlog.client import ChatLog
from chatlog.integrations.langgraph import ChatlogCheckpointSaver
from tests.llm_stub import LlmStub, planned
from tests.processes import (
    ROOT,
    chatlog_env,
    delete_prefix,
    running_projector,
    unique_settings,
    wait_until,
)
from tests.system.langgraph_agent import build_agent

pytestmark = pytest.mark.system

RUN_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def stack(kafka, redis_url):
    prefix = f"lga{uuid.uuid4().hex[:8]}"
    settings = unique_settings(kafka, redis_url, prefix, read_timeout_s=30.0)
    with running_projector(settings):
        yield settings
    delete_prefix(redis_url, prefix)


@pytest.fixture
def stub():
    with LlmStub() as server:
        server.default = planned()
        yield server


@pytest.fixture
def log(stack):
    log = ChatLog.from_settings(stack, flush_on_sigterm=False)
    yield log
    log.close()


class Agent:
    """The agent's files and how to run it as a process, on one thread of one user."""

    def __init__(self, settings, stub: LlmStub, folder: Path) -> None:
        self.settings = settings
        self.stub = stub
        self.thread = f"trip-{uuid.uuid4().hex[:10]}"
        self.user = f"traveller-{uuid.uuid4().hex[:6]}"
        self.ledger = folder / "ledger.txt"
        self.gates = folder / "gates"
        self.gates.mkdir()
        self.ledger.touch()
        self.config = {"configurable": {"thread_id": self.thread}}

    def command(self, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tests.system.langgraph_agent",
            *("--thread", self.thread, "--user", self.user, "--llm", self.stub.base_url),
            *("--ledger", str(self.ledger), "--gates", str(self.gates)),
            *args,
        ]

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            env=chatlog_env(self.settings),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, *args: str) -> dict:
        """Run the agent to its end; its outcome (messages, interrupts)."""
        process = self.start(*args)
        out, err = process.communicate(timeout=RUN_TIMEOUT_S)
        assert process.returncode == 0, err[-3000:]
        return json.loads(out.splitlines()[-1])

    def booked(self) -> list[str]:
        return self.ledger.read_text(encoding="utf-8").split()

    def graph(self, log: ChatLog):
        """The same agent in this process, for its state and history."""
        saver = ChatlogCheckpointSaver(log, user_id=self.user)
        return build_agent(
            llm_url=self.stub.base_url, ledger=self.ledger, gates=self.gates, checkpointer=saver
        )


def _contents(outcome: dict, kind: str) -> list[str]:
    return [m["content"] for m in outcome["messages"] if m["type"] == kind]


def _calls(messages) -> list[list[str]]:
    """The items each model turn booked, in order."""
    return [
        [c["args"]["item"] for c in m.tool_calls]
        for m in messages
        if isinstance(m, AIMessage) and m.tool_calls
    ]


def _assert_one_chain(history) -> None:
    """Checkpoints newest first, each the child of the next, steps counting down by one."""
    for newer, older in itertools.pairwise(history):
        assert (
            newer.parent_config["configurable"]["checkpoint_id"]
            == (older.config["configurable"]["checkpoint_id"])
        )
        assert newer.metadata["step"] == older.metadata["step"] + 1
    assert history[-1].metadata["source"] == "input"
    assert history[-1].parent_config is None


def test_an_agent_killed_mid_tool_call_resumes_in_a_new_process_with_nothing_lost_or_repeated(
    stack, stub, log, tmp_path
):
    agent = Agent(stack, stub, tmp_path)
    (agent.gates / "hotel.hold").touch()
    # Turn 1 books flight and hotel as two tasks of one superstep; the hotel's waits.
    process = agent.start("start", "plan: flight, hotel | dinner")
    try:
        wait_until(
            lambda: process.poll() is not None or (agent.gates / "hotel.waiting").exists(),
            timeout=RUN_TIMEOUT_S,
            what="the hotel's booking to start",
        )
        assert process.poll() is None, process.communicate()[1][-3000:]
        # The flight's task ended: its writes are stored against the checkpoint the
        # superstep started from, before the kill.
        saver = ChatlogCheckpointSaver(log, user_id=agent.user)

        def flight_written() -> bool:
            found = saver.get_tuple(agent.config)
            return found is not None and any(
                isinstance(m, ToolMessage) and m.content == "flight booked"
                for _, channel, value in found.pending_writes
                if channel == "messages"
                for m in value
            )

        wait_until(flight_written, timeout=30, what="the flight's writes to be stored")
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert agent.booked() == ["flight"]
    assert len(stub.requests) == 1

    (agent.gates / "hotel.hold").unlink()
    outcome = agent.run("resume")

    # Each booking once: the flight's task was not run again, the hotel's ran once.
    assert agent.booked() == ["flight", "hotel", "dinner"]
    # The model was asked three times in all: turn 1 was not asked again.
    assert len(stub.requests) == 3
    assert _contents(outcome, "human") == ["plan: flight, hotel | dinner"]
    assert _contents(outcome, "tool") == ["flight booked", "hotel booked", "dinner booked"]
    assert _contents(outcome, "ai")[-1] == "done: flight booked; hotel booked; dinner booked"

    graph = agent.graph(log)
    state = graph.get_state(agent.config)
    assert state.next == ()
    assert _calls(state.values["messages"]) == [["flight", "hotel"], ["dinner"]]
    history = list(graph.get_state_history(agent.config))
    _assert_one_chain(history)
    # input, agent, the two tool tasks, agent, the dinner's task, agent: one checkpoint
    # before each, and the last.
    assert [h.metadata["step"] for h in history] == [5, 4, 3, 2, 1, 0, -1]
    assert [h.next for h in history] == [
        (),
        ("agent",),
        ("tool",),
        ("agent",),
        ("tool", "tool"),
        ("agent",),
        ("__start__",),
    ]


def test_an_agent_stopped_for_approval_resumes_in_a_new_process(stack, stub, log, tmp_path):
    agent = Agent(stack, stub, tmp_path)
    graph = agent.graph(log)
    asked = graph.invoke(
        {"messages": [HumanMessage("plan: taxi, suite")]}, agent.config, durability="sync"
    )
    # The suite waits for a human; the taxi, its sibling task, is booked meanwhile.
    assert [i.value for i in asked["__interrupt__"]] == [{"approve": "suite"}]
    assert agent.booked() == ["taxi"]

    # What a process that never ran the thread reads: the interrupt, and the work left.
    waiting = graph.get_state(agent.config)
    assert waiting.next == ("tool",)
    assert [i.value for task in waiting.tasks for i in task.interrupts] == [{"approve": "suite"}]

    # The answer, given in a new process: the graph carries on from the stored checkpoint.
    outcome = agent.run("answer", "yes")
    assert outcome["interrupts"] == []
    assert agent.booked() == ["taxi", "suite"]  # the taxi's task did not run again
    assert len(stub.requests) == 2
    assert _contents(outcome, "ai")[-1] == "done: taxi booked; suite booked"
    assert graph.get_state(agent.config).next == ()


def test_time_travel_replays_and_forks_from_earlier_checkpoints(stack, stub, log, tmp_path):
    agent = Agent(stack, stub, tmp_path)
    graph = agent.graph(log)
    first = graph.invoke(
        {"messages": [HumanMessage("plan: flight | dinner")]}, agent.config, durability="sync"
    )
    assert agent.booked() == ["flight", "dinner"]
    original = graph.get_state(agent.config)
    history = list(graph.get_state_history(agent.config))
    _assert_one_chain(history)

    # Replay from the checkpoint before the model's second turn: that turn and what
    # follows run again (the dinner is booked again); what came before is not.
    before_turn_2 = next(
        h
        for h in history
        if h.next == ("agent",) and h.values["messages"][-1].content == "flight booked"
    )
    replayed = graph.invoke(None, before_turn_2.config, durability="sync")
    assert agent.booked() == ["flight", "dinner", "dinner"]
    assert len(stub.requests) == 3 + 2
    assert [m.content for m in replayed["messages"]] == [m.content for m in first["messages"]]

    # Fork from the checkpoint before the model's first turn, with the request changed.
    before_turn_1 = history[-2]
    assert before_turn_1.next == ("agent",)
    asked = before_turn_1.values["messages"][0]
    fork = graph.update_state(
        before_turn_1.config, {"messages": [HumanMessage("plan: train", id=asked.id)]}
    )
    forked = graph.invoke(None, fork, durability="sync")
    assert agent.booked() == ["flight", "dinner", "dinner", "train"]
    assert [m.content for m in forked["messages"]][-1] == "done: train booked"

    # Three branches now: the original one is still there, unchanged, by its id.
    assert graph.get_state(original.config).values == original.values
    latest = graph.get_state(agent.config)
    assert latest.values["messages"][0].content == "plan: train"
    everything = list(graph.get_state_history(agent.config))
    children = [
        h
        for h in everything
        if h.parent_config is not None
        and h.parent_config["configurable"]["checkpoint_id"]
        == before_turn_2.config["configurable"]["checkpoint_id"]
    ]
    assert len(children) == 2  # the original second turn and its replay
    fork_point = [
        h
        for h in everything
        if h.parent_config is not None
        and h.parent_config["configurable"]["checkpoint_id"]
        == before_turn_1.config["configurable"]["checkpoint_id"]
    ]
    assert sorted(h.metadata["source"] for h in fork_point) == ["loop", "update"]
