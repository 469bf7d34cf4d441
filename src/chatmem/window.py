"""Token windows: the newest messages of a session that fit a prompt.

:func:`history_window` (also :meth:`BaseChatMessageMemory.history_window`)
returns the longest run of a session's newest messages whose tokens fit
``max_tokens``, in acceptance order, with three guarantees:

- **Tool calls stay whole.** An assistant message that calls tools
  (metadata ``tool_calls``, a list of objects with an ``id``) and the tool
  messages answering it (metadata ``tool_call_id``) are in the window
  together or not at all. A tool message without a ``tool_call_id``
  belongs to the nearest earlier message that calls tools. A tool
  message whose call is no longer stored (it was deleted) ends the window
  there, unless the whole session fits.
- **The system message stays.** With ``keep_system`` the session's system
  message (its first one) opens the window and its tokens are taken from
  the budget first. A system message longer than ``max_tokens`` on its own
  is left out, and the whole budget goes to the newest messages.
- **Reads are pushed down.** The session is read backwards in pages
  (``history(before=cursor, limit=k)``) with growing page sizes, and
  reading stops once the budget is spent: the cost follows the window, not
  the session. The system message costs one or two small reads more
  (``history(limit=1)``, then ``query(role="system", limit=1)`` when the
  session does not open with one).

Counting tokens
---------------
A token counter is any callable taking a :class:`~chatmem.Message` and
returning a whole number; pass a real tokenizer when the budget must be
exact, for example with tiktoken::

    enc = tiktoken.get_encoding("o200k_base")
    window = memory.history_window(
        "s1", 8000, token_counter=lambda m: len(enc.encode(m.content)) + 4
    )

The default, :func:`estimate_tokens`, needs no download and costs about
0.3 microseconds a message. It counts a quarter token per byte of ASCII
text and one token per wider character (CJK, accented letters, emoji),
plus the tool calls' JSON and :data:`MESSAGE_OVERHEAD` tokens per message.
Measured against OpenAI's cl100k_base encoding it overestimates English
prose and source code by about 10 % at the median (5th to 95th percentile:
0.7x to 1.4x of the true count) and CJK text by about 0 to 5 %; it
underestimates text dense with digits (number lists, tables of figures)
by up to half. Leave headroom in ``max_tokens`` accordingly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chatmem.errors import InvalidMessage, MessageNotFound
from chatmem.message import Message

if TYPE_CHECKING:
    from chatmem.base import BaseChatMessageMemory

__all__ = ["MESSAGE_OVERHEAD", "TokenCounter", "estimate_tokens", "history_window"]

log = logging.getLogger(__name__)

TokenCounter = Callable[[Message], int]

#: Tokens a chat format spends on each message besides its text: the
#: role and the separators around it (three to four in OpenAI's formats).
MESSAGE_OVERHEAD = 4

# The first page is sized from the budget (a message rarely costs less
# than this many tokens), later pages double up to the cap: a window of
# n messages costs about log2(n) reads and at most twice n messages read.
TOKENS_PER_MESSAGE_GUESS = 64
FIRST_PAGE_MIN = 8
FIRST_PAGE_MAX = 128
PAGE_MAX = 1024

# A message deleted while the window is read (by another client, or by a
# retention purge reaching the oldest page) invalidates the paging
# cursor; the read starts again this many times before giving up.
ATTEMPTS = 3


def estimate_tokens(message: Message) -> int:
    """Estimate the prompt tokens of a message without a tokenizer.

    Counts the content, the JSON of ``metadata["tool_calls"]`` and
    :data:`MESSAGE_OVERHEAD`; see the module docstring for accuracy.

    >>> from chatmem import Message
    >>> estimate_tokens(Message(session_id="s", role="user", content="hi"))
    5
    """
    tokens = MESSAGE_OVERHEAD + _text_tokens(message.content)
    calls = message.metadata.get("tool_calls")
    if calls:
        tokens += _text_tokens(json.dumps(calls, separators=(",", ":")))
    return tokens


def _text_tokens(text: str) -> int:
    # Wide characters take two or three UTF-8 bytes and, in BPE
    # vocabularies trained mostly on English, about one token each. A
    # regular-expression word count was as accurate on English but a
    # hundred times slower, which would cost more than the read itself.
    chars = len(text)
    wide = (len(text.encode("utf-8", "surrogatepass")) - chars) // 2
    return (chars - wide + 3) // 4 + wide


def history_window(
    memory: BaseChatMessageMemory,
    session_id: str,
    max_tokens: int,
    *,
    token_counter: TokenCounter | None = None,
    keep_system: bool = True,
) -> list[Message]:
    """Return the newest messages of a session that fit ``max_tokens``.

    See :meth:`chatmem.BaseChatMessageMemory.history_window` and the
    module docstring. Raises :class:`InvalidMessage` (a ``ValueError``)
    for a malformed session id, a negative ``max_tokens``, or a counter
    that returns something other than a whole number >= 0.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise InvalidMessage(
            f"max_tokens must be a whole number >= 0, not {max_tokens!r}."
        )
    if max_tokens < 0:
        raise InvalidMessage(f"max_tokens must be >= 0, not {max_tokens}.")
    if token_counter is not None and not callable(token_counter):
        raise InvalidMessage(
            "token_counter must be a callable taking a Message and "
            f"returning an int, not {type(token_counter).__name__}."
        )
    counter = _checked(token_counter or estimate_tokens)

    attempt = 1
    while True:
        try:
            return _window(memory, session_id, max_tokens, counter, keep_system)
        except MessageNotFound:
            # Only a paging cursor can be missing: the session changed
            # under the read. The last attempt lets the error through.
            if attempt == ATTEMPTS:
                raise
            attempt += 1
            log.debug("history_window: cursor vanished, reading again")


def _checked(counter: TokenCounter) -> TokenCounter:
    def count(message: Message) -> int:
        tokens = counter(message)
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise InvalidMessage(
                f"token_counter returned {tokens!r} for message "
                f"{message.id!r}; it must return a whole number >= 0."
            )
        return tokens

    return count


def _window(
    memory: BaseChatMessageMemory,
    session_id: str,
    max_tokens: int,
    count: TokenCounter,
    keep_system: bool,
) -> list[Message]:
    first_size = max_tokens // TOKENS_PER_MESSAGE_GUESS
    first_size = min(max(first_size, FIRST_PAGE_MIN), FIRST_PAGE_MAX)
    page = memory.history(session_id, last=first_size)
    if max_tokens == 0 or not page:
        return []
    complete = len(page) < first_size

    # The system message is paid for first, whatever its place.
    system = None
    budget = max_tokens
    if keep_system:
        system = _system_message(memory, session_id, page, complete)
        if system is not None:
            cost = count(system)
            if cost <= max_tokens:
                budget -= cost
            else:
                system = None

    walk = _Walk(budget, count, None if system is None else system.id)
    size = first_size
    while True:
        if not walk.take(page):
            break
        if complete:
            walk.reached_start()
            break
        size = min(size * 2, PAGE_MAX)
        cursor = page[0].id
        assert cursor is not None  # stored messages carry ids
        page = memory.history(session_id, before=cursor, limit=size)
        complete = len(page) < size
        if not page:
            walk.reached_start()
            break

    chosen = walk.chosen()
    if system is not None and not walk.holds_system:
        chosen.insert(0, system)
    return chosen


def _system_message(
    memory: BaseChatMessageMemory,
    session_id: str,
    newest: list[Message],
    complete: bool,
) -> Message | None:
    if complete:
        return next((m for m in newest if m.role == "system"), None)
    # A system prompt nearly always opens its session; checking the first
    # message is one indexed read on every backend, while the role query
    # may cost a scan of the session on some of them.
    head = memory.history(session_id, limit=1)
    if head and head[0].role == "system":
        return head[0]
    found = memory.query(session_id=session_id, role="system", limit=1)
    return found[0] if found else None


class _Walk:
    """The backward walk: tokens spent, open tool calls, the last cut.

    Messages arrive newest first. A cut (the window's first message) is
    valid when every tool result after it has its call after it too; the
    walk keeps the longest valid cut whose tokens fit the budget.
    """

    def __init__(self, budget: int, count: TokenCounter, system_id: str | None):
        self.budget = budget
        self.count = count
        self.system_id = system_id
        self.spent = 0
        self.seen: list[Message] = []  # newest first
        self.cut = 0  # len(seen) at the last valid cut
        self.open_ids: set[str] = set()
        self.open_anonymous = False
        self.holds_system = False

    def take(self, page: list[Message]) -> bool:
        """Walk a page (oldest first); return False once the budget is spent."""
        for message in reversed(page):
            if message.id != self.system_id:
                self.spent += self.count(message)
            if self.spent > self.budget:
                return False
            self.seen.append(message)
            self._track(message)
            if not self.open_ids and not self.open_anonymous:
                self.cut = len(self.seen)
        return True

    def reached_start(self) -> None:
        """Accept everything walked: the session has nothing older.

        Tool results whose call is not in the session (it was deleted)
        cannot be separated from it any more, so they do not block.
        """
        self.cut = len(self.seen)

    def chosen(self) -> list[Message]:
        window = self.seen[: self.cut]
        window.reverse()
        self.holds_system = self.system_id is not None and any(
            m.id == self.system_id for m in window
        )
        return window

    def _track(self, message: Message) -> None:
        metadata = message.metadata
        if message.role == "tool":
            call_id = metadata.get("tool_call_id")
            if isinstance(call_id, str) and call_id:
                self.open_ids.add(call_id)
            else:
                self.open_anonymous = True
            return
        calls = metadata.get("tool_calls")
        if not calls or not isinstance(calls, list):
            return
        self.open_ids.difference_update(_call_ids(calls))
        self.open_anonymous = False


def _call_ids(calls: list[Any]) -> list[str]:
    return [
        call["id"]
        for call in calls
        if isinstance(call, dict) and isinstance(call.get("id"), str)
    ]
