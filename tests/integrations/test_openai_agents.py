"""ChatMemorySession: the OpenAI Agents SDK's Session protocol on chatmem."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar, cast

import pytest

pytest.importorskip("agents")

from agents import Agent, ModelResponse, RunConfig, Runner, Usage, function_tool
from agents.agent_output import AgentOutputSchemaBase
from agents.handoffs import Handoff
from agents.items import TResponseInputItem, TResponseOutputItem, TResponseStreamEvent
from agents.memory import Session, SessionSettings
from agents.model_settings import ModelSettings
from agents.models.interface import Model, ModelTracing
from agents.tool import Tool
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)
from openai.types.responses.response_prompt_param import ResponsePromptParam

import chatmem
from chatmem import BaseChatMessageMemory, InvalidMessage
from chatmem.aio import AsyncChatMemory
from chatmem.integrations._common import read_tool_calls
from chatmem.integrations.openai_agents import ChatMemorySession

T = TypeVar("T")

Item = dict[str, Any]


def every_kind_of_item() -> list[Item]:
    """One item of each kind the SDK stores, with awkward values."""
    return [
        {"role": "system", "content": "You track parcels."},
        {"role": "developer", "content": "Be brief.", "type": "message"},
        {"role": "user", "content": "Where is X1? 包裹在哪里？"},
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Is this it?"},
                {
                    "type": "input_image",
                    "image_url": "https://example.com/p.png",
                    "detail": "auto",
                },
            ],
        },
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [{"type": "summary_text", "text": "Look it up."}],
            "encrypted_content": "gAAAA==",
        },
        {
            "type": "reasoning",
            "id": "rs_2",
            "summary": [
                {"type": "summary_text", "text": "First."},
                {"type": "summary_text", "text": "Second."},
            ],
        },
        {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_1",
            "name": "track",
            "arguments": '{"parcel": "X1"}',
            "status": "completed",
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "In Lyon"},
        {
            "type": "function_call_output",
            "call_id": "call_1",
            "output": [{"type": "input_text", "text": "In Lyon, again"}],
        },
        {
            "type": "computer_call",
            "id": "cu_1",
            "call_id": "call_2",
            "action": {"type": "click", "x": 10, "y": 20, "button": "left"},
            "pending_safety_checks": [],
            "status": "completed",
        },
        {
            "type": "computer_call_output",
            "call_id": "call_2",
            "output": {
                "type": "computer_screenshot",
                "image_url": "data:image/png;base64,iVBORw0KGgo=",
            },
        },
        {
            "type": "shell_call",
            "call_id": "call_3",
            "action": {"commands": ["ls -l"], "timeout_ms": 1000},
            "status": "completed",
        },
        {
            "type": "shell_call_output",
            "call_id": "call_3",
            "output": [
                {
                    "stdout": "a\nb\n",
                    "stderr": "",
                    "outcome": {"type": "exit", "exit_code": 0},
                }
            ],
        },
        {
            "type": "local_shell_call",
            "id": "ls_1",
            "call_id": "call_4",
            "action": {"type": "exec", "command": ["echo", "hi"], "env": {}},
            "status": "completed",
        },
        {"type": "local_shell_call_output", "id": "call_4", "output": "hi\n"},
        {
            "type": "apply_patch_call",
            "call_id": "call_5",
            "operation": {"type": "delete_file", "path": "old.txt"},
            "status": "completed",
        },
        {
            "type": "apply_patch_call_output",
            "call_id": "call_5",
            "status": "completed",
            "output": "deleted",
        },
        {
            "type": "custom_tool_call",
            "call_id": "call_6",
            "name": "grammar",
            "input": "SELECT 1",
        },
        {"type": "custom_tool_call_output", "call_id": "call_6", "output": "1"},
        {
            "type": "mcp_list_tools",
            "id": "ml_1",
            "server_label": "parcels",
            "tools": [{"name": "track", "input_schema": {"type": "object"}}],
        },
        {
            "type": "mcp_approval_request",
            "id": "mr_1",
            "name": "track",
            "arguments": "{}",
            "server_label": "parcels",
        },
        {
            "type": "mcp_approval_response",
            "approval_request_id": "mr_1",
            "approve": True,
        },
        {
            "type": "mcp_call",
            "id": "mc_1",
            "name": "track",
            "arguments": "{}",
            "server_label": "parcels",
            "output": "In Lyon",
        },
        {
            "type": "web_search_call",
            "id": "ws_1",
            "status": "completed",
            "action": {"type": "search", "query": "parcel X1"},
        },
        {
            "type": "file_search_call",
            "id": "fs_1",
            "queries": ["X1"],
            "status": "completed",
            "results": None,
        },
        {
            "type": "image_generation_call",
            "id": "ig_1",
            "result": None,
            "status": "completed",
        },
        {
            "type": "code_interpreter_call",
            "id": "ci_1",
            "code": "print(1)",
            "container_id": "cn_1",
            "outputs": [{"type": "logs", "logs": "1"}],
            "status": "completed",
        },
        {
            "type": "program",
            "id": "pg_1",
            "call_id": "call_7",
            "code": "x = 1",
            "fingerprint": "f1",
        },
        {
            "type": "program_output",
            "id": "po_1",
            "call_id": "call_7",
            "result": "ok",
            "status": "completed",
        },
        {"type": "tool_search_call", "call_id": "call_8", "arguments": {"q": "x"}},
        {"type": "compaction", "encrypted_content": "gAAAB=="},
        {"type": "item_reference", "id": "msg_0"},
        {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "status": "completed",
            "content": [
                {"type": "output_text", "text": "It is in Lyon.", "annotations": []}
            ],
        },
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "x", "extra": [1, 2.5, None, True, {"k": []}]},
    ]


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


@pytest.fixture(params=["sync", "async"])
def store(
    request: pytest.FixtureRequest, memory: BaseChatMessageMemory
) -> BaseChatMessageMemory | AsyncChatMemory:
    """The fresh store, as it is or behind the async API."""
    if request.param == "sync":
        return memory
    return AsyncChatMemory(memory)


def test_is_an_agents_sdk_session(memory: BaseChatMessageMemory) -> None:
    # The assignment is the structural check (mypy --strict runs on the
    # tests); isinstance is the SDK's runtime one.
    session: Session = ChatMemorySession(memory, "s1")
    assert isinstance(session, Session)
    assert session.session_id == "s1"
    assert session.session_settings == SessionSettings()


def test_every_item_type_round_trips(
    store: BaseChatMessageMemory | AsyncChatMemory,
) -> None:
    sent = every_kind_of_item()
    session = ChatMemorySession(store, "s1")
    run(session.add_items(cast(list[TResponseInputItem], sent)))

    got = run(ChatMemorySession(store, "s1").get_items())
    assert got == sent
    assert [json.dumps(i, sort_keys=True) for i in got] == [
        json.dumps(i, sort_keys=True) for i in sent
    ]


def test_each_item_is_one_message_with_its_text_stored_once(
    memory: BaseChatMessageMemory,
) -> None:
    sent = every_kind_of_item()
    session = ChatMemorySession(memory, "s1")
    run(session.add_items(cast(list[TResponseInputItem], sent)))

    stored = memory.history("s1")
    assert len(stored) == len(sent)
    by_content = {m.content: m for m in stored}
    texts = ("Where is X1? 包裹在哪里？", "Look it up.", "In Lyon", "SELECT 1")
    for text in texts:
        assert text not in json.dumps(by_content[text].metadata, ensure_ascii=False)
    # Several parts keep their text in place; the content joins it.
    assert "First.\nSecond." in by_content
    assert "Is this it?" in by_content


def test_roles_and_tool_calls_use_the_shared_keys(
    memory: BaseChatMessageMemory,
) -> None:
    items = every_kind_of_item()
    session = ChatMemorySession(memory, "s1")
    run(session.add_items(cast(list[TResponseInputItem], items)))
    stored = memory.history("s1")

    assert [m.role for m in stored[:4]] == ["system", "system", "user", "user"]
    call, output = stored[6], stored[7]
    assert (call.role, call.content) == ("assistant", "")
    assert call.metadata["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "track", "arguments": '{"parcel": "X1"}'},
        }
    ]
    # Any chatmem adapter reads it as a named call with parsed arguments.
    [parsed] = read_tool_calls(call.metadata["tool_calls"])
    assert parsed == ("call_1", "track", {"parcel": "X1"})
    assert (output.role, output.metadata["tool_call_id"]) == ("tool", "call_1")

    computer, screenshot = stored[9], stored[10]
    assert computer.metadata["tool_calls"] == [
        {"id": "call_2", "type": "computer_call"}
    ]
    assert screenshot.role == "tool"
    assert screenshot.metadata["tool_call_id"] == "call_2"
    request, response = stored[20], stored[21]
    assert request.metadata["tool_calls"][0]["id"] == "mr_1"
    assert response.metadata["tool_call_id"] == "mr_1"
    assert stored[4].role == "assistant"  # reasoning


def test_window_keeps_calls_with_their_outputs(memory: BaseChatMessageMemory) -> None:
    session = ChatMemorySession(memory, "s1")
    items: list[Item] = [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "q"},
        {
            "type": "function_call",
            "call_id": "c1",
            "name": "track",
            "arguments": "{}",
        },
        {"type": "function_call_output", "call_id": "c1", "output": "a"},
        {"type": "function_call_output", "call_id": "c1", "output": "b"},
    ]
    run(session.add_items(cast(list[TResponseInputItem], items)))

    def ten(message: Any) -> int:
        return 10

    # 30 tokens hold the system message and two more, but the two newest
    # are outputs whose call would be cut off.
    window = memory.history_window("s1", 30, token_counter=ten)
    assert [m.content for m in window] == ["rules"]
    window = memory.history_window("s1", 40, token_counter=ten)
    assert [m.role for m in window] == ["system", "assistant", "tool", "tool"]


def test_get_items_with_a_limit(store: BaseChatMessageMemory | AsyncChatMemory) -> None:
    items: list[Item] = [{"role": "user", "content": str(i)} for i in range(6)]
    session = ChatMemorySession(store, "s1")
    run(session.add_items(cast(list[TResponseInputItem], items)))

    assert run(session.get_items(limit=2)) == items[-2:]
    assert run(session.get_items(limit=100)) == items
    assert run(session.get_items(limit=0)) == []
    with pytest.raises(InvalidMessage, match="limit"):
        run(session.get_items(limit=-1))

    limited = ChatMemorySession(store, "s1", session_settings={"limit": 3})
    assert limited.session_settings == SessionSettings(limit=3)
    assert run(limited.get_items()) == items[-3:]
    assert run(limited.get_items(limit=1)) == items[-1:]


def test_pop_item_removes_the_newest(
    store: BaseChatMessageMemory | AsyncChatMemory,
) -> None:
    items = every_kind_of_item()[:3]
    session = ChatMemorySession(store, "s1")
    run(session.add_items(cast(list[TResponseInputItem], items)))

    assert run(session.pop_item()) == items[2]
    assert run(session.get_items()) == items[:2]
    assert run(session.pop_item()) == items[1]
    assert run(session.pop_item()) == items[0]
    assert run(session.pop_item()) is None
    assert run(session.get_items()) == []


def test_concurrent_pops_each_get_a_different_item(store_url: str) -> None:
    items: list[Item] = [{"role": "user", "content": str(i)} for i in range(12)]

    async def main() -> list[TResponseInputItem | None]:
        async with await chatmem.open_async(store_url, max_concurrency=4) as memory:
            session = ChatMemorySession(memory, "s1")
            await session.add_items(cast(list[TResponseInputItem], items))
            popped = await asyncio.gather(*(session.pop_item() for _ in range(16)))
            assert await session.get_items() == []
            return popped

    popped = run(main())
    got = [cast(Item, item) for item in popped if item is not None]
    assert sorted(got, key=lambda i: int(i["content"])) == items
    assert popped.count(None) == 4


def test_clear_session_touches_one_session(
    store: BaseChatMessageMemory | AsyncChatMemory,
) -> None:
    one = ChatMemorySession(store, "s1")
    two = ChatMemorySession(store, "s2")
    run(one.add_items([{"role": "user", "content": "a"}]))
    run(two.add_items([{"role": "user", "content": "b"}]))

    run(one.clear_session())
    assert run(one.get_items()) == []
    assert run(two.get_items()) == [{"role": "user", "content": "b"}]


def test_a_bad_item_stores_nothing(memory: BaseChatMessageMemory) -> None:
    session = ChatMemorySession(memory, "s1")
    fine: Item = {"role": "user", "content": "fine"}
    for bad in (
        {"role": "user", "content": "x", "extra": {1, 2}},
        {"role": "user", "content": "x", "score": float("nan")},
        {"role": "user", "content": "\ud800"},
        "not an item",
    ):
        with pytest.raises(InvalidMessage, match="1 of the batch"):
            run(session.add_items(cast(list[TResponseInputItem], [fine, bad])))
    assert memory.count() == 0

    with pytest.raises(InvalidMessage, match="session id"):
        ChatMemorySession(memory, "")


def test_user_id_is_written_so_erasure_reaches_the_session(
    memory: BaseChatMessageMemory,
) -> None:
    session = ChatMemorySession(memory, "s1", user_id="u7")
    run(session.add_items([{"role": "user", "content": "a"}]))
    assert [m.user_id for m in memory.history("s1")] == ["u7"]
    assert memory.delete_user("u7") == 1
    assert run(session.get_items()) == []


def test_messages_written_by_other_clients(memory: BaseChatMessageMemory) -> None:
    memory.add("s1", "system", "rules")
    memory.add("s1", "user", "Track X1.")
    memory.add(
        "s1",
        "assistant",
        "Looking.",
        metadata={
            "tool_calls": [
                {"name": "track", "args": {"parcel": "X1"}, "id": "call_9"},
                {"id": "call_10", "function": {"name": "eta", "arguments": "{}"}},
            ]
        },
    )
    memory.add("s1", "tool", "In transit", metadata={"tool_call_id": "call_9"})
    session = ChatMemorySession(memory, "s1")

    assert run(session.get_items()) == [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "Track X1."},
        {"role": "assistant", "content": "Looking."},
        {
            "type": "function_call",
            "call_id": "call_9",
            "name": "track",
            "arguments": '{"parcel": "X1"}',
        },
        {
            "type": "function_call",
            "call_id": "call_10",
            "name": "eta",
            "arguments": "{}",
        },
        {"type": "function_call_output", "call_id": "call_9", "output": "In transit"},
    ]
    assert len(run(session.get_items(limit=3))) == 3

    # Popping inside the three-item message keeps the other two.
    run(session.pop_item())
    assert run(session.pop_item()) == {
        "type": "function_call",
        "call_id": "call_10",
        "name": "eta",
        "arguments": "{}",
    }
    assert [i.get("call_id") for i in run(session.get_items())] == [
        None,
        None,
        None,
        "call_9",
    ]
    assert memory.count(session_id="s1") == 4


# -- a real run, with a model that needs no network ---------------------


class CannedModel(Model):
    """Returns prepared responses in turn and records what it was sent."""

    def __init__(self, responses: list[list[TResponseOutputItem]]) -> None:
        self.responses = list(responses)
        self.inputs: list[list[TResponseInputItem]] = []

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> ModelResponse:
        if isinstance(input, str):
            input = [{"role": "user", "content": input}]
        self.inputs.append(json.loads(json.dumps(input)))
        return ModelResponse(
            output=self.responses.pop(0), usage=Usage(), response_id=None
        )

    def stream_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> AsyncIterator[TResponseStreamEvent]:
        raise NotImplementedError("The tests do not stream.")


def reply(text: str, item_id: str) -> ResponseOutputMessage:
    return ResponseOutputMessage(
        id=item_id,
        type="message",
        role="assistant",
        status="completed",
        content=[ResponseOutputText(type="output_text", text=text, annotations=[])],
    )


def parcel_agent(model: Model) -> Agent[Any]:
    @function_tool
    def track(parcel: str) -> str:
        """Say where a parcel is."""
        return f"{parcel} is in Lyon"

    return Agent(
        name="parcels", instructions="Track parcels.", model=model, tools=[track]
    )


NO_TRACING = RunConfig(tracing_disabled=True)


async def two_turns(
    memory: BaseChatMessageMemory | AsyncChatMemory,
) -> tuple[CannedModel, list[str]]:
    call = ResponseFunctionToolCall(
        id="fc_1",
        call_id="call_1",
        type="function_call",
        name="track",
        arguments='{"parcel": "X1"}',
    )
    model = CannedModel(
        [[call], [reply("It is in Lyon.", "msg_1")], [reply("Tomorrow.", "msg_2")]]
    )
    agent = parcel_agent(model)
    outputs = []
    for question in ("Where is X1?", "When will it arrive?"):
        session = ChatMemorySession(memory, "s1")
        result = await Runner.run(
            agent, question, session=session, run_config=NO_TRACING
        )
        outputs.append(str(result.final_output))
    return model, outputs


def check_two_turns(model: CannedModel, outputs: list[str]) -> None:
    assert outputs == ["It is in Lyon.", "Tomorrow."]
    # The second turn's model call saw the whole first turn, read back
    # from chatmem: question, tool call, tool output, answer.
    seen = model.inputs[2]
    assert [i.get("type", "message") for i in seen] == [
        "message",
        "function_call",
        "function_call_output",
        "message",
        "message",
    ]
    call_ids = seen[1]["call_id"], seen[2]["call_id"]  # type: ignore[typeddict-item]
    assert call_ids == ("call_1", "call_1")
    assert seen[2]["output"] == "X1 is in Lyon"  # type: ignore[typeddict-item]
    assert seen[4]["content"] == "When will it arrive?"  # type: ignore[typeddict-item]


def check_stored(memory: BaseChatMessageMemory) -> None:
    stored = memory.history("s1")
    assert [(m.role, m.content) for m in stored] == [
        ("user", "Where is X1?"),
        ("assistant", ""),
        ("tool", "X1 is in Lyon"),
        ("assistant", "It is in Lyon."),
        ("user", "When will it arrive?"),
        ("assistant", "Tomorrow."),
    ]
    assert stored[1].metadata["tool_calls"][0]["function"]["name"] == "track"
    assert stored[2].metadata["tool_call_id"] == "call_1"


def test_runner_keeps_the_conversation_on_a_sync_store(
    memory: BaseChatMessageMemory,
) -> None:
    model, outputs = run(two_turns(memory))
    check_two_turns(model, outputs)
    check_stored(memory)


def test_runner_keeps_the_conversation_on_an_async_store(store_url: str) -> None:
    async def main() -> tuple[CannedModel, list[str]]:
        async with await chatmem.open_async(store_url) as memory:
            found = await two_turns(memory)
            check_stored(memory.sync)
            return found

    check_two_turns(*run(main()))


def test_runner_respects_the_session_limit(memory: BaseChatMessageMemory) -> None:
    model = CannedModel([[reply("One.", "m1")], [reply("Two.", "m2")]])
    agent = parcel_agent(model)

    async def main() -> None:
        session = ChatMemorySession(memory, "s1", session_settings={"limit": 1})
        await Runner.run(agent, "first", session=session, run_config=NO_TRACING)
        await Runner.run(agent, "second", session=session, run_config=NO_TRACING)

    run(main())
    # With limit 1 the model sees the newest stored item and the question.
    second = model.inputs[1]
    assert second[0] == {
        "id": "m1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "One.", "annotations": []}],
    }
    assert second[1] == {"role": "user", "content": "second"}
    assert len(second) == 2
    assert memory.count(session_id="s1") == 4
