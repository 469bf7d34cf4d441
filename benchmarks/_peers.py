"""Workload turns as the peer libraries' messages.

The benchmark scripts set chatmem beside LangChain and the OpenAI Agents
SDK; each peer stores the same turns as the message an application
would build for it. This module needs ``langchain-core`` (the ``bench``
extra), which :mod:`_harness` does not, so it lives apart. Importing it
silences the peers' deprecation notices, as the scripts do.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

from _harness import Turn

warnings.simplefilter("ignore")  # LangChain's deprecation notices

from langchain_core.messages import (  # noqa: E402
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

__all__ = ["agents_item", "lc_message"]


def lc_message(turn: Turn) -> BaseMessage:
    """Return a turn as the LangChain message an application would build."""
    role = turn.role
    if role == "user":
        return HumanMessage(content=turn.content)
    if role == "assistant":
        calls = turn.metadata.get("tool_calls")
        if calls:
            return AIMessage(
                content=turn.content,
                tool_calls=[
                    {
                        "name": call["function"]["name"],
                        "args": json.loads(call["function"]["arguments"]),
                        "id": call["id"],
                    }
                    for call in calls
                ],
            )
        return AIMessage(content=turn.content)
    if role == "tool":
        return ToolMessage(
            content=turn.content,
            tool_call_id=turn.metadata["tool_call_id"],
            name=turn.metadata["name"],
        )
    return SystemMessage(content=turn.content)


def agents_item(turn: Turn) -> dict[str, Any]:
    """Return a turn as an Agents SDK input item, tool calls included."""
    if turn.role == "tool":
        return {
            "type": "function_call_output",
            "call_id": turn.metadata["tool_call_id"],
            "output": turn.content,
        }
    calls = turn.metadata.get("tool_calls")
    if calls:
        call = calls[0]
        return {
            "type": "function_call",
            "call_id": call["id"],
            "name": call["function"]["name"],
            "arguments": call["function"]["arguments"],
        }
    return {"role": turn.role, "content": turn.content}
