"""Adapters that put chatmem behind the chat-history interfaces of agent
and LLM frameworks.

Each adapter is a module of its own and imports its framework, which is an
optional extra; ``import chatmem`` imports none of them:

- :mod:`chatmem.integrations.langchain` (``pip install 'chatmem[langchain]'``)
- :mod:`chatmem.integrations.openai_agents`
  (``pip install 'chatmem[openai-agents]'``)
- :mod:`chatmem.integrations.llama_index`
  (``pip install 'chatmem[llama-index]'``)

Every adapter takes a synchronous store (:func:`chatmem.open`) or an async
one (:func:`chatmem.open_async`) and stores tool calls the same way, so a
session written through one framework reads back in another, and
:meth:`~chatmem.BaseChatMessageMemory.history_window` keeps calls with
their results whichever wrote them: an assistant message that calls tools
carries ``metadata["tool_calls"]`` (a list of objects with an ``id``), a
tool result ``metadata["tool_call_id"]``, and a named author
``metadata["name"]``. What only one framework knows is kept under its own
metadata key and restored exactly by the adapter that wrote it.
"""
