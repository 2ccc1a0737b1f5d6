"""A LangGraph agent with a tool, checkpointed by `ChatlogCheckpointSaver`, run as a process
of its own by tests/system/test_langgraph_agent.py (killed mid-run, resumed in another).

    python -m tests.system.langgraph_agent --thread T --user U --llm URL --ledger FILE \\
        --gates DIR start "plan: flight, hotel | dinner"
    python -m tests.system.langgraph_agent ... resume       # carry on: invoke(None)
    python -m tests.system.langgraph_agent ... answer yes   # invoke(Command(resume="yes"))

The agent is what an application writes: a chat model (langchain-openai's `ChatOpenAI`,
against the tests' OpenAI-compatible stand-in, `tests.llm_stub.planned`, so no key and no
network) that calls the tool `book`, and a node per tool call (`Send`): two calls in one
turn are two tasks of one superstep, whose writes LangGraph saves apart as each ends
(`put_writes`), so a task that ended before a crash is not run again.

`book(item)` is the side effect the tests count: it appends the item to the ledger file
once it is done. Before that, an item whose name starts with "suite" asks a human
(`interrupt`), and while ``<gates>/<item>.hold`` exists it writes ``<item>.waiting`` and
waits: that is where a test kills the process, mid-tool-call.

Prints the run's outcome as one JSON line: the messages, and the interrupts if it stopped
on one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, TypedDict

from langchain_core.messages import AnyMessage, HumanMessage, ToolCall
from langchain_core.tools import BaseTool, tool
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, Send, interrupt

from chatlog.client import ChatLog
from chatlog.integrations.langgraph import ChatlogCheckpointSaver

GATE_POLL_S = 0.02


class ToolTask(TypedDict):
    """What a `Send` hands the tool node: one tool call of the model's last message."""

    call: ToolCall


def booking_tool(ledger: Path, gates: Path) -> BaseTool:
    """The tool `book`: see the module docstring."""

    @tool
    def book(item: str) -> str:
        """Book one item of the trip."""
        if item.startswith("suite"):
            answer = interrupt({"approve": item})
            if answer != "yes":
                return f"{item} declined"
        hold = gates / f"{item}.hold"
        if hold.exists():
            (gates / f"{item}.waiting").touch()
            while hold.exists():
                time.sleep(GATE_POLL_S)
        with ledger.open("a", encoding="utf-8") as out:
            out.write(item + "\n")
        return f"{item} booked"

    return book


def build_agent(
    *, llm_url: str, ledger: Path, gates: Path, checkpointer: BaseCheckpointSaver[Any]
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """The agent graph: the model, then one task per tool call, back to the model."""
    book = booking_tool(ledger, gates)
    # A placeholder key: the stand-in asks for none, and no real endpoint is ever named.
    model = ChatOpenAI(model="stub", base_url=llm_url, api_key="not-a-key", max_retries=0)
    model_with_tools = model.bind_tools([book])

    def agent(state: MessagesState) -> dict[str, list[AnyMessage]]:
        return {"messages": [model_with_tools.invoke(state["messages"])]}

    def route(state: MessagesState) -> list[Send] | str:
        calls = getattr(state["messages"][-1], "tool_calls", [])
        return [Send("tool", ToolTask(call=call)) for call in calls] or END

    def run_tool(task: ToolTask) -> dict[str, list[Any]]:
        return {"messages": [book.invoke(task["call"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tool", run_tool, input_schema=ToolTask)
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", route, ["tool", END])
    builder.add_edge("tool", "agent")
    return builder.compile(checkpointer=checkpointer)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.system.langgraph_agent")
    parser.add_argument("--thread", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--llm", required=True, help="the stand-in's base URL")
    parser.add_argument("--ledger", required=True, type=Path)
    parser.add_argument("--gates", required=True, type=Path)
    parser.add_argument("command", choices=["start", "resume", "answer"])
    parser.add_argument("text", nargs="?", default="")
    args = parser.parse_args()
    # A loaded test machine's projector may lag: reads wait for it up to 30 s.
    with ChatLog.from_env(read_timeout_s=30.0) as log:
        graph = build_agent(
            llm_url=args.llm,
            ledger=args.ledger,
            gates=args.gates,
            checkpointer=ChatlogCheckpointSaver(log, user_id=args.user),
        )
        config = {"configurable": {"thread_id": args.thread}}
        given: Any = {
            "start": {"messages": [HumanMessage(args.text)]},
            "resume": None,
            "answer": Command(resume=args.text),
        }[args.command]
        # "sync": each checkpoint is stored before the next step starts.
        result = graph.invoke(given, config, durability="sync")
    print(
        json.dumps(
            {
                "messages": [m.model_dump(mode="json") for m in result["messages"]],
                "interrupts": [i.value for i in result.get("__interrupt__", [])],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
