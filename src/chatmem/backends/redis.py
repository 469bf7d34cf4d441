"""RedisMemory: chat memory in the Redis server an application already runs.

Reference card
--------------
URL        ``redis://[[user]:password@]host[:port][/db]``; ``rediss://`` for
           TLS with the system's CA store. Port 6379 and database 0 unless
           given. Percent-escape a password holding ``@``, ``:`` or ``/``.
           Needs Redis 7.0 or later (``pip install 'chatmem[redis]'``).
Options    ``timeout`` seconds for connecting and for each reply (default
           5); ``retries`` after a refused or dropped connection (default
           3, backing off from 50 ms, never past ``timeout`` since the
           first try); ``max_connections`` in the pool the handle's threads
           share (default 32; a thread waits up to ``timeout`` for one);
           and every option of :func:`chatmem.open`.
Durability What the server's persistence keeps: with ``appendonly yes`` and
           ``appendfsync always`` an acknowledged write survives a crash of
           the server; with the default snapshots a crash loses what came
           after the last snapshot, while a clean shutdown keeps everything.
           A write retried by chatmem after a dropped connection is stored
           once: each write carries a ticket (writer, number) that the
           server remembers for the writer's latest write. A write that
           raised :class:`BackendUnavailable` was not acknowledged; when
           its reply timed out it may still have been stored.
Ordering   Ids come from one counter per store (``INCRBY``), inside the
           function that writes: a session's history is in acceptance order
           across every process sharing the server, and ids are never reused.
Atomicity  Every operation that touches more than one key is one call of
           chatmem's Lua function library, which each handle loads when it
           opens (and again if the server forgot it): a batch, with the
           retention trim, the budget check and any eviction, is stored
           whole or not at all, and processes sharing the server stay
           within the budget together. A long batch or a large
           ``delete_session`` holds the server for its duration (several
           microseconds per message).
Keys       ``chatmem:<namespace>:<kind>[:<id>]``, every namespace, session
           and user id percent-escaped so that ``:``, ``*``, ``{``, ``?``,
           spaces and newlines never reach a key's structure or a pattern.
           No command lists keys by pattern. Redis Cluster is not supported:
           the functions touch keys they compute.
Indexes    Per session a sorted set of message bodies scored by id, so
           ``history(last=20)`` is one ``ZREVRANGE``; per namespace a hash
           id -> session for ``get`` and deletes, a sorted set in id order
           for ``evict-oldest``, lexicographic sorted sets by (time, id) for
           time and user queries, and one of sessions by last use. Reads
           cost O(log n + result).
Retention  Messages older than ``retention`` are hidden from every read at
           once. Each write first trims up to 256 of them; ``count`` and
           ``sessions`` trim them all first. Besides, a session's key has a
           sliding expiry at its newest message's time plus ``retention``,
           so sessions nobody writes to leave memory on their own. Their
           index entries, and their bytes in ``stats()``, stay until the
           namespace is next written or counted. Open every handle of a
           namespace with the same retention.
Deletion   Immediate: memory is given back to the server at once.
Budget     ``used_bytes`` is the store-wide total of content, metadata, ids
           and :attr:`message_overhead` per message, kept in the same
           call as every write. ``allocate`` reserves space in the
           handle's process only. ``fragmentation`` is the allocator's share
           of the server's memory holding no live data, all databases.
Asyncio    :func:`chatmem.open_async` serves writes, reads, counts and
           deletes natively with redis.asyncio, sending the same commands
           as this class (both run its operation plans); see
           :mod:`chatmem.backends._redis_async`.
LRU        Writes mark a session used; reads do too on a handle opened with
           ``evict-lru-session`` (one more write to the server per read).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

from redis import Redis
from redis.backoff import NoBackoff
from redis.connection import BlockingConnectionPool, Connection, SSLConnection
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from chatmem.base import BaseChatMessageMemory
from chatmem.errors import (
    BackendUnavailable,
    CapacityExceeded,
    InvalidMessage,
    MessageNotFound,
)
from chatmem.message import ROLE_CODES, ROLES, Message, Prepared, to_micros, with_id

if TYPE_CHECKING:
    from chatmem.aio import AsyncChatMemory

__all__ = ["RedisMemory", "parse_url"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: An operation as a generator: it yields commands (lists of arguments),
#: receives their replies and returns the operation's result.
Plan = Generator[list[Any], Any, T]

STORE_PREFIX = "chatmem:"

# Time keys are fixed-width decimal microseconds counted from the year 1,
# so that byte order is time order for every datetime Python can hold.
# A sorted-set score would not do: a double loses microseconds beyond
# about 285 years from 1970.
TIME_OFFSET = 62_135_596_800_000_000

# Ids stay below 2**53 so that a score holds them exactly.
MAX_ID = 1 << 53

RETRY_FIRST_DELAY = 0.05
RETRY_MAX_DELAY = 0.5

# Where the add operation's arguments say that this try is a retry, and
# where that lands in its command, after FCALL, the function's name, the
# key count, the operation, the two prefixes and the cutoff.
RETRY_FLAG = 6
RETRY_AT = 7 + RETRY_FLAG

# Reads with retention trim expired messages in chunks of this many.
PURGE_CHUNK = 1024

MIN_SERVER = (7, 0)

_PLAIN = re.compile(r"[A-Za-z0-9_.~-]*\Z")

LIBRARY_CODE = """\
#!lua name=@NAME@
-- chatmem's Redis function library: every multi-key operation of
-- RedisMemory.
--
-- A library of functions rather than EVAL scripts: the helpers below are
-- built once when the library loads, not on every call, which saves a
-- few microseconds per operation; and one library keeps the removal
-- helpers shared by delete, purge and eviction, so the indexes cannot
-- drift apart. Its name carries a hash of its code, so chatmem versions
-- sharing a server never replace each other's.
--
-- Arguments: [1] operation, [2] store prefix ("chatmem:"), [3] namespace
-- prefix ("chatmem:<ns>:"), [4] retention cutoff as a time key or "".
-- Every user-supplied part of a key arrives escaped by the client.
--
-- Store keys:     S..'seq' (ids and the LRU clock), S..'stats' (hash:
--                 bytes, count), S..'w:'..writer (last write of a writer)
-- Namespace keys: N..'o' zset of entries scored by id (acceptance order
--                 and id -> session), N..'t' lex zset time..id,
--                 N..'u:'..user lex zset time..id, N..'h:'..session zset
--                 of bodies scored by id, N..'l' zset of sessions by last
--                 use, N..'b' bytes of the namespace.
-- Entry:          id|role|timekey|size|session|user
-- Body:           [id,session,role,created,content,user(,metadata)]

-- Set at the start of every call; redis.call cannot be read at load time.
local S, N, cutoff, call
local OPS = {}
local PURGE_CHUNK = 256

local function id_of(number)
  return string.format('%d', number)
end

local function index_member(timekey, id)
  return timekey .. string.format('%016d', tonumber(id))
end

local function id_in(member)
  return id_of(tonumber(string.sub(member, 19)))
end

local function parse(entry)
  return string.match(entry, '^(%d+)|(%d)|(%d+)|(%d+)|([^|]*)|(.*)$')
end

local function entry_of(id)
  return call('ZRANGE', N .. 'o', id, id, 'BYSCORE')[1]
end

local function account(nbytes, nmessages)
  if nmessages ~= 0 then
    call('HINCRBY', S .. 'stats', 'bytes', nbytes)
    call('HINCRBY', S .. 'stats', 'count', nmessages)
    call('INCRBY', N .. 'b', nbytes)
  end
end

-- Remove a message from every namespace index; the caller removes its
-- body and settles the counters. Returns its size and session.
local function unindex(entry)
  local id, _, timekey, size, session, user = parse(entry)
  local member = index_member(timekey, id)
  call('ZREM', N .. 'o', entry)
  call('ZREM', N .. 't', member)
  if user ~= '' then
    call('ZREM', N .. 'u:' .. user, member)
  end
  return tonumber(size), session, id
end

-- Delete messages by entry; returns how many and their bytes.
local function drop(entries)
  local freed, sessions = 0, {}
  for _, entry in ipairs(entries) do
    local size, session, id = unindex(entry)
    call('ZREMRANGEBYSCORE', N .. 'h:' .. session, id, id)
    sessions[session] = true
    freed = freed + size
  end
  for session in pairs(sessions) do
    if call('EXISTS', N .. 'h:' .. session) == 0 then
      call('ZREM', N .. 'l', session)
    end
  end
  account(-freed, -#entries)
  return #entries, freed
end

local function drop_ids(ids)
  local entries = {}
  for _, id in ipairs(ids) do
    local entry = entry_of(id)
    if entry then
      entries[#entries + 1] = entry
    end
  end
  return drop(entries)
end

local function drop_session(session)
  local key = N .. 'h:' .. session
  local count, freed = 0, 0
  for _, body in ipairs(call('ZRANGE', key, 0, -1)) do
    local entry = entry_of(string.match(body, '^%[(%d+),'))
    if entry then
      freed = freed + unindex(entry)
      count = count + 1
    end
  end
  call('DEL', key)
  call('ZREM', N .. 'l', session)
  account(-freed, -count)
  return count, freed
end

-- Delete up to `limit` messages older than the cutoff; true when no
-- expired message is left.
local function purge(limit)
  if cutoff == '' then
    return true
  end
  local members = call(
    'ZRANGE', N .. 't', '-', '(' .. cutoff, 'BYLEX', 'LIMIT', 0, limit)
  if #members == 0 then
    return true
  end
  local ids = {}
  for i, member in ipairs(members) do
    ids[i] = id_in(member)
  end
  drop_ids(ids)
  -- Never expected to remove anything; keeps a stray entry from making
  -- every later purge stop at it.
  call('ZREM', N .. 't', unpack(members))
  return #members < limit
end

local function evict_oldest(short)
  local freed = 0
  while freed < short do
    local entries = call('ZRANGE', N .. 'o', 0, 63)
    if #entries == 0 then
      break
    end
    local chosen = {}
    for _, entry in ipairs(entries) do
      chosen[#chosen + 1] = entry
      local _, _, _, size = parse(entry)
      freed = freed + tonumber(size)
      if freed >= short then
        break
      end
    end
    drop(chosen)
  end
  return freed
end

local function evict_lru(short)
  local freed = 0
  while freed < short do
    local sessions = call('ZRANGE', N .. 'l', 0, 15)
    if #sessions == 0 then
      break
    end
    for _, session in ipairs(sessions) do
      local _, size = drop_session(session)
      freed = freed + size
      if freed >= short then
        break
      end
    end
  end
  -- Messages whose session key expired are reachable only by id order.
  if freed < short then
    freed = freed + evict_oldest(short - freed)
  end
  return freed
end

-- Free `short` bytes of this namespace, or return nil when it holds too
-- little; nothing is deleted in that case.
local function evict(policy, short)
  local mine = tonumber(call('GET', N .. 'b') or '0')
  if mine < short then
    return nil
  end
  if policy == 'evict-lru-session' then
    return evict_lru(short)
  end
  return evict_oldest(short)
end

local function push(list, score, member)
  list[#list + 1] = score
  list[#list + 1] = member
end

-- ZADD score/member pairs in slices that fit Lua's argument limit.
local function zadd(key, pairs_)
  for from = 1, #pairs_, 4000 do
    call('ZADD', key, unpack(pairs_, from, math.min(from + 3999, #pairs_)))
  end
end

local function touch(session)
  call('ZADD', N .. 'l', 'XX', call('INCR', S .. 'seq'), session)
end

OPS.add = function(ARGV)
  -- ARGV[5] room (-1: no budget), [6] incoming bytes, [7] policy,
  -- [8] writer, [9] ticket, [10] ticket lifetime ms, [11] '1' on a
  -- retry, [12] count, then 7 per message: session, user, role,
  -- timekey, size, body tail, expiry ms (0: none).
  local room, incoming = tonumber(ARGV[5]), tonumber(ARGV[6])
  local writer, ticket = ARGV[8], ARGV[9]
  local wkey = S .. 'w:' .. writer
  -- Only a retry can find its own ticket; a first try skips the read.
  if writer ~= '' and ARGV[11] == '1' then
    local done = call('GET', wkey)
    if done then
      local seen, first = string.match(done, '^([^:]*):(%d+)$')
      if seen == ticket then
        return {'ok', first, '0', '1'}
      end
    end
  end

  purge(PURGE_CHUNK)
  local evicted = 0
  if room >= 0 then
    local used = tonumber(call('HGET', S .. 'stats', 'bytes') or '0')
    local short = used + incoming - room
    if short > 0 then
      if ARGV[7] == 'reject' then
        return {'full', id_of(used)}
      end
      evicted = evict(ARGV[7], short)
      if not evicted then
        return {'little', id_of(used)}
      end
    end
  end

  local count = tonumber(ARGV[12])
  local first = call('INCRBY', S .. 'seq', count) - count + 1
  -- Members are gathered per key and added with one ZADD each: a batch
  -- costs a few commands per session and user, not four per message.
  local sessions, users, order, times, total = {}, {}, {}, {}, 0
  local session_list = {}
  for i = 0, count - 1 do
    local at = 13 + i * 7
    local session, user, role = ARGV[at], ARGV[at + 1], ARGV[at + 2]
    local timekey, size = ARGV[at + 3], ARGV[at + 4]
    local expires = tonumber(ARGV[at + 6])
    local seq = first + i
    local id = id_of(seq)
    local info = sessions[session]
    if not info then
      info = {expires = 0, bodies = {}}
      info.fresh = expires > 0
        and call('EXISTS', N .. 'h:' .. session) == 0
      sessions[session] = info
      session_list[#session_list + 1] = session
    end
    push(info.bodies, seq, '[' .. id .. ARGV[at + 5])
    push(order, seq, table.concat({id, role, timekey, size, session, user}, '|'))
    local member = index_member(timekey, id)
    push(times, 0, member)
    if user ~= '' then
      users[user] = users[user] or {}
      push(users[user], 0, member)
    end
    total = total + tonumber(size)
    info.last = seq
    if expires > info.expires then
      info.expires = expires
    end
  end

  zadd(N .. 'o', order)
  zadd(N .. 't', times)
  for user, members in pairs(users) do
    zadd(N .. 'u:' .. user, members)
  end
  local last_use = {}
  for _, session in ipairs(session_list) do
    local info = sessions[session]
    local key = N .. 'h:' .. session
    zadd(key, info.bodies)
    push(last_use, info.last, session)
    -- The sliding expiry only ever moves later, and never lands on a key
    -- that a writer without retention made persistent.
    if info.expires > 0 then
      if info.fresh then
        call('PEXPIREAT', key, info.expires)
      else
        local current = call('PEXPIRETIME', key)
        if current > 0 and current < info.expires then
          call('PEXPIREAT', key, info.expires)
        end
      end
    end
  end
  zadd(N .. 'l', last_use)
  account(total, count)
  if writer ~= '' then
    call('SET', wkey, ticket .. ':' .. id_of(first), 'PX', ARGV[10])
  end
  return {'ok', id_of(first), id_of(evicted), '0'}
end

OPS.get = function(ARGV)
  -- ARGV[5] id, [6] '1' to mark the session used
  local entry = entry_of(ARGV[5])
  if not entry then
    return false
  end
  local id, _, _, _, session = parse(entry)
  local body = call('ZRANGE', N .. 'h:' .. session, id, id, 'BYSCORE')[1]
  if body and ARGV[6] == '1' then
    touch(session)
  end
  return body or false
end

OPS.history = function(ARGV)
  -- ARGV[5] session, [6] after id or '', [7] before id or '',
  -- [8] count (-1: all), [9] '1' newest first, [10] '1' check cursors,
  -- [11] '1' mark the session used
  local session, after, before = ARGV[5], ARGV[6], ARGV[7]
  local key = N .. 'h:' .. session
  local low, high = '-inf', '+inf'
  for _, cursor in ipairs({after, before}) do
    if cursor ~= '' and ARGV[10] == '1'
        and call('ZCOUNT', key, cursor, cursor) == 0 then
      return {'missing', cursor}
    end
  end
  if after ~= '' then
    low = '(' .. after
  end
  if before ~= '' then
    high = '(' .. before
  end
  local rows
  if ARGV[9] == '1' then
    rows = call('ZRANGE', key, high, low, 'BYSCORE', 'REV', 'LIMIT', 0, ARGV[8])
  else
    rows = call('ZRANGE', key, low, high, 'BYSCORE', 'LIMIT', 0, ARGV[8])
  end
  if ARGV[11] == '1' and #rows > 0 then
    touch(session)
  end
  return {'ok', rows}
end

OPS.query = function(ARGV)
  -- ARGV[5] index ('t' or 'u:'..user), [6] session or '', [7] role code
  -- or '', [8] low lex bound, [9] high lex bound, [10] limit (0: none)
  local index, session, role = N .. ARGV[5], ARGV[6], ARGV[7]
  local low, high, limit = ARGV[8], ARGV[9], tonumber(ARGV[10])
  local found = {}
  while true do
    local members = call('ZRANGE', index, low, high, 'BYLEX', 'LIMIT', 0, 256)
    for _, member in ipairs(members) do
      local entry = entry_of(id_in(member))
      if entry then
        local id, code, _, _, owner = parse(entry)
        if (session == '' or owner == session)
            and (role == '' or code == role) then
          local body = call(
            'ZRANGE', N .. 'h:' .. owner, id, id, 'BYSCORE')[1]
          if body then
            found[#found + 1] = body
            if limit > 0 and #found >= limit then
              return found
            end
          end
        end
      end
    end
    if #members < 256 then
      return found
    end
    low = '(' .. members[#members]
  end
end

OPS.purge = function(ARGV)
  -- ARGV[5] how many to delete at most; returns 1 when none is left
  if purge(tonumber(ARGV[5])) then
    return 1
  end
  return 0
end

OPS.evict = function(ARGV)
  -- ARGV[5] bytes to free, [6] policy; returns bytes freed or -1
  return evict(ARGV[6], tonumber(ARGV[5])) or -1
end

OPS.delete = function(ARGV)
  -- ARGV[5] id
  local count = drop_ids({ARGV[5]})
  return count
end

OPS.delete_session = function(ARGV)
  -- ARGV[5] session
  local count = drop_session(ARGV[5])
  return count
end

OPS.delete_user = function(ARGV)
  -- ARGV[5] user
  local ids = {}
  for i, member in ipairs(call('ZRANGE', N .. 'u:' .. ARGV[5], 0, -1)) do
    ids[i] = id_in(member)
  end
  local count = drop_ids(ids)
  return count
end

local function by_user(ARGV, op)
  -- ARGV[5] user, [6] session (count_both only)
  local seen, sessions, count = {}, {}, 0
  for _, member in ipairs(call('ZRANGE', N .. 'u:' .. ARGV[5], 0, -1)) do
    local entry = entry_of(id_in(member))
    if entry then
      local _, _, _, _, session = parse(entry)
      if op == 'count_both' then
        if session == ARGV[6] then
          count = count + 1
        end
      elseif not seen[session] then
        seen[session] = true
        sessions[#sessions + 1] = session
      end
    end
  end
  if op == 'count_both' then
    return count
  end
  return sessions
end

OPS.user_sessions = function(ARGV)
  return by_user(ARGV, 'user_sessions')
end

OPS.count_both = function(ARGV)
  return by_user(ARGV, 'count_both')
end

redis.register_function('@NAME@', function(_, ARGV)
  call = redis.call
  S, N, cutoff = ARGV[2], ARGV[3], ARGV[4]
  local op = OPS[ARGV[1]]
  if not op then
    return redis.error_reply('chatmem: unknown operation ' .. ARGV[1])
  end
  return op(ARGV)
end)
"""

FUNCTION = "chatmem_" + hashlib.sha1(LIBRARY_CODE.encode()).hexdigest()[:16]
LIBRARY = LIBRARY_CODE.replace("@NAME@", FUNCTION)


def mark_retry(request: list[Any]) -> None:
    """Mark a command about to be sent again as a retry.

    Only the add operation cares: on a retry it first looks for its own
    ticket, so that a write whose reply was lost is not stored twice.
    """
    if request[0] == "FCALL" and request[3] == "add":
        request[RETRY_AT] = "1"


def library_missing(request: list[Any], exc: ResponseError) -> bool:
    """Tell whether a function call failed because the server forgot
    chatmem's library (restarted without persistence, or FUNCTION FLUSH)."""
    return request[0] == "FCALL" and "Function not found" in str(exc)


def already_loaded(exc: ResponseError) -> bool:
    """Tell whether FUNCTION LOAD failed only because another handle won."""
    return "already exists" in str(exc)


def pool_options(
    *,
    host: str,
    port: int,
    db: int,
    username: str | None,
    password: str | None,
    timeout: float,
    max_connections: int,
) -> dict[str, Any]:
    """Return the options a handle's connection pools share.

    The blocking pool and the asyncio one take the same keywords, besides
    their own connection class and retry policy.
    """
    return {
        "max_connections": max_connections,
        "timeout": timeout,
        "host": host,
        "port": port,
        "db": db,
        "username": username,
        "password": password,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "socket_keepalive": True,
        "client_name": "chatmem",
    }


@lru_cache(maxsize=8192)
def key_part(text: str) -> str:
    """Return ``text`` escaped for use inside a Redis key.

    Letters, digits and ``_.~-`` stay as they are; every other byte of the
    UTF-8 form becomes ``%XX``. The result never holds ``:`` (the key
    separator), ``|`` (the functions' field separator) or a glob character,
    and different ids never escape alike.
    """
    if _PLAIN.match(text):
        return text
    return quote(text, safe="")


def time_key(micros: int) -> str:
    """Return the fixed-width key that sorts like the time it encodes."""
    return f"{micros + TIME_OFFSET:018d}"


def parse_url(url: str) -> dict[str, Any]:
    """Return the connection settings of a ``redis://`` or ``rediss://`` URL.

    Raises :class:`InvalidMessage` for a malformed URL; the error never
    repeats the password.
    """
    shown = mask_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidMessage(f"The Redis URL {shown!r} is malformed: {exc}.") from None
    if parts.scheme not in ("redis", "rediss"):
        raise InvalidMessage(f"Not a redis:// or rediss:// URL: {shown!r}.")
    if parts.query or parts.fragment:
        raise InvalidMessage(
            f"The Redis URL {shown!r} has a query or fragment; pass options "
            "as keywords to chatmem.open instead."
        )
    path = parts.path.strip("/")
    if path and (not path.isdigit() or not path.isascii()):
        raise InvalidMessage(
            f"The Redis URL {shown!r} names database {path!r}; a database "
            "is a number, as in redis://localhost:6379/0."
        )
    return {
        "host": parts.hostname or "localhost",
        "port": 6379 if port is None else port,
        "db": int(path) if path else 0,
        "username": unquote(parts.username) if parts.username else None,
        "password": None if parts.password is None else unquote(parts.password),
        "tls": parts.scheme == "rediss",
    }


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***" if "@" in url else url
    netloc, slash, tail = rest.partition("/")
    if "@" not in netloc:
        return url
    credentials, _, host = netloc.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}{slash}{tail}"


class RedisMemory(BaseChatMessageMemory):
    """Chat memory in a Redis database; see the module's reference card.

    >>> memory = RedisMemory.from_url("redis://localhost:6379/0")  # doctest: +SKIP
    >>> memory.add("s1", "user", "hello").id  # doctest: +SKIP
    '1'
    """

    # Measured on Redis 7.0 (used_memory over 40,000 messages, 50 to 2,000
    # sessions, 32-byte ids): a message's entries in its session's set and
    # in the order, time and user indexes take 520 to 600 bytes beyond
    # its content, metadata and ids.
    message_overhead = 560

    def __init__(
        self,
        host: str = "localhost",
        port: int = 6379,
        db: int = 0,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        timeout: float = 5.0,
        retries: int = 3,
        max_connections: int = 32,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.timeout = _positive_number(timeout, "timeout")
        self.retries = _count(retries, "retries", 0)
        self.max_connections = _count(max_connections, "max_connections", 1)
        if not isinstance(db, int) or isinstance(db, bool) or db < 0:
            raise InvalidMessage(f"db must be a whole number >= 0, not {db!r}.")
        self.host, self.port, self.db = host, port, db
        self.tls = tls
        user = f"{username or ''}:***@" if password else ""
        if username and not password:
            user = f"{username}@"
        where = f"[{host}]" if ":" in host else host
        self._shown = f"redis{'s' if tls else ''}://{user}{where}:{port}/{db}"

        self._prefix = f"{STORE_PREFIX}{key_part(self.namespace)}:"
        self._writers = threading.local()
        self._ticket_ms = max(60_000, int(self.timeout * 10_000))
        self._retention_ms = (
            None if self.retention is None else -(-self.retention // _MILLISECOND)
        )
        self._touching = self.policy == "evict-lru-session"

        # redis-py's own retries would resend a write whose reply was lost;
        # chatmem retries itself, with a ticket that makes a resend a no-op.
        make_pool: Callable[..., BlockingConnectionPool] = BlockingConnectionPool
        self._pool = make_pool(
            connection_class=SSLConnection if tls else Connection,
            retry=Retry(NoBackoff(), 0),
            **pool_options(
                host=host,
                port=port,
                db=db,
                username=username,
                password=password,
                timeout=self.timeout,
                max_connections=self.max_connections,
            ),
        )
        self._client = Redis(connection_pool=self._pool)
        try:
            self._check_server()
        except BaseException:
            self._pool.disconnect()
            raise
        log.debug("opened %s namespace %r", self._shown, self.namespace)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisMemory:
        """Open the database a ``redis://`` URL names."""
        return cls(**parse_url(url), **options)

    @classmethod
    async def open_async(
        cls, url: str, *, max_concurrency: int, **options: Any
    ) -> AsyncChatMemory:
        """Open the database for asyncio, served natively by redis.asyncio.

        :func:`chatmem.open_async` calls this; see
        :mod:`chatmem.backends._redis_async` for what runs where.
        """
        from chatmem.backends._redis_async import open_redis

        return await open_redis(cls, url, max_concurrency=max_concurrency, **options)

    def _check_server(self) -> None:
        info = self._run(self._client.info, "server")
        version = str(info.get("redis_version", "0"))
        numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
        if numbers < MIN_SERVER:
            raise BackendUnavailable(
                f"chatmem needs Redis 7.0 or later; {self._shown} runs "
                f"{version}. Upgrade the server."
            )
        self._run(self._load_library)

    def _load_library(self) -> None:
        execute: Callable[..., Any] = self._client.execute_command
        try:
            execute("FUNCTION LOAD", LIBRARY)
        except ResponseError as exc:
            if not already_loaded(exc):
                raise

    # -- talking to the server -------------------------------------------

    # Each operation is written once, as a plan: a generator that yields
    # the commands it needs, each a list of arguments for one round trip,
    # and receives their replies. ``_drive`` runs a plan on the blocking
    # client; the asyncio face (``open_async``) runs the same plans on
    # redis.asyncio, so both send the same commands and read the replies
    # alike. A plan costs about a microsecond more than straight calls,
    # next to a round trip of tens of microseconds.

    def _drive(self, plan: Plan[T]) -> T:
        """Run a plan's commands in turn and return what it returns."""
        send = self._send
        try:
            request = next(plan)
            while True:
                request = plan.send(send(request))
        except StopIteration as done:
            result: T = done.value
            return result

    def _send(self, request: list[Any]) -> Any:
        """Send one command, retrying refused or dropped connections."""
        begun = time.monotonic()
        attempt = 0
        while True:
            try:
                return self._execute(request)
            except RedisError as exc:
                attempt += 1
                delay = self._retry_delay(exc, attempt, begun)
            time.sleep(delay)
            mark_retry(request)

    def _execute(self, request: list[Any]) -> Any:
        execute: Callable[..., Any] = self._client.execute_command
        try:
            return execute(*request)
        except ResponseError as exc:
            if not library_missing(request, exc):
                raise
        self._load_library()
        return execute(*request)

    def _run(self, call: Callable[..., T], *args: Any) -> T:
        """Call the client, retrying refused or dropped connections."""
        begun = time.monotonic()
        attempt = 0
        while True:
            try:
                return call(*args)
            except RedisError as exc:
                attempt += 1
                delay = self._retry_delay(exc, attempt, begun)
            time.sleep(delay)

    def _retry_delay(self, exc: RedisError, attempt: int, begun: float) -> float:
        """Return how long to wait before try ``attempt + 1`` after ``exc``.

        Raise :class:`BackendUnavailable` from ``exc`` instead when the
        call is not to be tried again: bad credentials, an error reply,
        ``retries`` used up, or ``timeout`` seconds passed since the
        first try. A reply that timed out is not retried, as its wait
        already took the whole timeout.
        """
        if isinstance(exc, (AuthenticationError, AuthorizationError)):
            raise BackendUnavailable(
                f"Redis at {self._shown} refused chatmem's credentials: "
                f"{exc} Check the user and password in the URL."
            ) from exc
        if not isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
            raise BackendUnavailable(
                f"Redis at {self._shown} refused the operation: {exc}"
            ) from exc
        delay = min(RETRY_FIRST_DELAY * (1 << (attempt - 1)), RETRY_MAX_DELAY)
        if (
            attempt > self.retries
            or isinstance(exc, RedisTimeoutError)
            or time.monotonic() + delay - begun > self.timeout
        ):
            raise BackendUnavailable(
                f"Redis at {self._shown} is unavailable after "
                f"{attempt} attempt(s): {exc}"
            ) from exc
        log.debug("redis connection failed (%s); retrying", exc)
        return delay

    def _command(self, *args: Any) -> Any:
        return self._send(list(args))

    def _call(self, op: str, *args: Any, cutoff: str = "") -> Any:
        return self._send(self._function(op, cutoff, args))

    def _function(self, op: str, cutoff: str, args: Sequence[Any]) -> list[Any]:
        """Return the command that calls operation ``op`` of the library."""
        return ["FCALL", FUNCTION, 0, op, STORE_PREFIX, self._prefix, cutoff, *args]

    def _key(self, kind: str, part: str) -> str:
        return f"{self._prefix}{kind}{key_part(part)}"

    def _cutoff_key(self) -> str:
        cutoff = self._cutoff()
        return "" if cutoff is None else time_key(cutoff)

    def _purge_all(self) -> Plan[None]:
        cutoff = self._cutoff_key()
        if cutoff:
            while not (yield self._function("purge", cutoff, (PURGE_CHUNK,))):
                pass

    def _ticket(self) -> tuple[str, str]:
        if not self.retries:
            return "", ""
        writer = self._writers
        if not hasattr(writer, "id"):
            writer.id = uuid.uuid4().hex
            writer.number = 0
        writer.number += 1
        return writer.id, str(writer.number)

    def _transaction(self) -> AbstractContextManager[Any]:
        # Each write is one function call, atomic on the server; nothing to open.
        return nullcontext()

    def _close(self) -> None:
        self._pool.disconnect()

    def _describe(self) -> str:
        return f"url={self._shown!r} namespace={self.namespace!r}"

    # -- writing ---------------------------------------------------------

    def _write(self, prepared: list[Prepared]) -> list[Message]:
        room, incoming = self._room(prepared)
        return self._drive(self._store(prepared, room, incoming, *self._ticket()))

    def _room(self, prepared: Sequence[Prepared]) -> tuple[int, int]:
        """Return the budget's room (-1: none) and the bytes a write brings."""
        # One function call does what the base class does in steps (trim,
        # budget, eviction, insert), so processes sharing the server cannot
        # slip between the check and the write.
        overhead = self.message_overhead
        incoming = sum(item.size for item in prepared) + overhead * len(prepared)
        room = -1
        capacity = self._budget.capacity
        if capacity is not None:
            self._budget.shortfall(0, incoming)  # raises if it can never fit
            room = capacity - self._budget.allocated
        return room, incoming

    def _insert(self, prepared: Sequence[Prepared]) -> list[Message]:
        return self._drive(self._store(prepared, -1, 0, *self._ticket()))

    def _store(
        self,
        prepared: Sequence[Prepared],
        room: int,
        incoming: int,
        writer: str,
        ticket: str,
    ) -> Plan[list[Message]]:
        request = self._function(
            "add",
            self._cutoff_key(),
            (
                room,
                incoming,
                self.policy,
                writer,
                ticket,
                self._ticket_ms,
                "0",
                len(prepared),
            ),
        )
        overhead = self.message_overhead
        retention_ms = self._retention_ms
        dumps = _dumps
        for item in prepared:
            message = item.message
            user = message.user_id
            micros = to_micros(message.created_at)  # type: ignore[arg-type]
            code = ROLE_CODES[message.role]
            tail = dumps([message.session_id, code, micros, message.content, user])
            if item.metadata_json:
                tail = f",{tail[1:-1]},{item.metadata_json}]"
            else:
                tail = "," + tail[1:]
            request += (
                key_part(message.session_id),
                "" if user is None else key_part(user),
                code,
                time_key(micros),
                item.size + overhead,
                tail,
                0 if retention_ms is None else micros // 1000 + retention_ms + 1,
            )

        reply = yield request
        status = reply[0]
        if status != b"ok":
            used = int(reply[1])
            if status == b"full":
                raise self._budget.refuse(used, incoming)
            raise _too_little()
        evicted = int(reply[2])
        if evicted:
            log.warning(
                "capacity reached: evicted %d bytes from namespace %r (%s)",
                evicted,
                self.namespace,
                self.policy,
            )
        first = int(reply[1])
        return [
            with_id(item.message, str(first + i)) for i, item in enumerate(prepared)
        ]

    def _evict(self, nbytes: int) -> None:
        freed = self._call("evict", nbytes, self.policy)
        if freed < 0:
            raise _too_little()

    def _purge(self, cutoff: int) -> None:
        key = time_key(cutoff)
        while not self._call("purge", PURGE_CHUNK, cutoff=key):
            pass

    def _delete(self, message_id: str) -> bool:
        return self._drive(self._delete_plan(message_id))

    def _delete_plan(self, message_id: str) -> Plan[bool]:
        if _seq(message_id) is None:
            return False
        return bool((yield self._function("delete", "", (message_id,))))

    def _delete_session(self, session_id: str) -> int:
        return self._drive(self._delete_session_plan(session_id))

    def _delete_session_plan(self, session_id: str) -> Plan[int]:
        request = self._function("delete_session", "", (key_part(session_id),))
        return int((yield request))

    def _delete_user(self, user_id: str) -> int:
        return self._drive(self._delete_user_plan(user_id))

    def _delete_user_plan(self, user_id: str) -> Plan[int]:
        return int((yield self._function("delete_user", "", (key_part(user_id),))))

    # -- reading ---------------------------------------------------------

    def _get(self, message_id: str) -> Message | None:
        return self._drive(self._get_plan(message_id))

    def _get_plan(self, message_id: str) -> Plan[Message | None]:
        if _seq(message_id) is None:
            return None
        touch = "1" if self._touching else "0"
        body = yield self._function("get", "", (message_id, touch))
        if body is None:
            return None
        return _to_messages([body])[0]

    def _history(
        self,
        session_id: str,
        before: str | None,
        after: str | None,
        count: int | None,
        newest: bool,
    ) -> list[Message]:
        return self._drive(self._history_plan(session_id, before, after, count, newest))

    def _history_plan(
        self,
        session_id: str,
        before: str | None,
        after: str | None,
        count: int | None,
        newest: bool,
    ) -> Plan[list[Message]]:
        for cursor in (before, after):
            if cursor is not None and _seq(cursor) is None:
                raise MessageNotFound(cursor)
        key = self._key("h:", session_id)
        cutoff = self._cutoff()
        check = True
        found: list[Message] = []
        while True:
            want = None if count is None else count - len(found)
            rows = yield from self._history_rows(
                key, session_id, before, after, want, newest, check
            )
            page = _to_messages(rows)
            if cutoff is None:
                found = page
                break
            found += [m for m in page if m[5] >= cutoff]
            # Expired messages not trimmed yet took places in the page:
            # read on past them.
            if want is None or len(rows) < want:
                break
            if len(found) >= count:  # type: ignore[operator]
                break
            edge = page[-1].id
            if newest:
                before = edge
            else:
                after = edge
            check = False
        if newest:
            found.reverse()
        return found

    def _history_rows(
        self,
        key: str,
        session_id: str,
        before: str | None,
        after: str | None,
        count: int | None,
        newest: bool,
        check: bool,
    ) -> Plan[list[bytes]]:
        stop = -1 if count is None else count - 1
        if before is None and after is None and not self._touching:
            command = "ZREVRANGE" if newest else "ZRANGE"
            rows: list[bytes] = yield [command, key, 0, stop]
            return rows
        reply = yield self._function(
            "history",
            "",
            (
                key_part(session_id),
                after or "",
                before or "",
                -1 if count is None else count,
                "1" if newest else "0",
                "1" if check else "0",
                "1" if self._touching else "0",
            ),
        )
        if reply[0] != b"ok":
            raise MessageNotFound(reply[1].decode())
        rows = reply[1]
        return rows

    def _session_state(
        self, session_id: str, first: str, last: str, older: bool
    ) -> tuple[int, bool, bool]:
        low, high = _seq(first), _seq(last)
        if low is None or high is None:
            return 0, True, True
        if self.retention is not None:
            # Expired messages stay in the sorted set until a write trims
            # them and reads skip them: only the reads can tell.
            return super()._session_state(session_id, first, last, older)
        key = self._key("h:", session_id)

        def ask() -> list[Any]:
            # O(log n) counts by score (the id): one round trip, one
            # snapshot.
            pipe = self._client.pipeline(transaction=True)
            pipe.zcount(key, low, "+inf")
            pipe.zcount(key, f"({high}", "+inf")
            if older:
                pipe.zcount(key, "-inf", f"({low}")
            replies: list[Any] = pipe.execute()
            return replies

        replies = self._run(ask)
        before = older and int(replies[2]) > 0
        return int(replies[0]), int(replies[1]) > 0, before

    def _touch(self, session_id: str) -> None:
        if self._touching:
            # The history function marks the session used as it reads one
            # message: one round trip, atomic with the mark.
            key = self._key("h:", session_id)
            self._drive(self._history_rows(key, session_id, None, None, 1, True, False))

    def _query(
        self,
        session_id: str | None,
        user_id: str | None,
        start: datetime | None,
        end: datetime | None,
        role: str | None,
        limit: int | None,
    ) -> list[Message]:
        return self._drive(
            self._query_plan(session_id, user_id, start, end, role, limit)
        )

    def _query_plan(
        self,
        session_id: str | None,
        user_id: str | None,
        start: datetime | None,
        end: datetime | None,
        role: str | None,
        limit: int | None,
    ) -> Plan[list[Message]]:
        low = None if start is None else to_micros(start)
        high = None if end is None else to_micros(end)
        if user_id is None and session_id is not None:
            # A session is small next to its namespace: read it whole and
            # sort, rather than walk the namespace's time index.
            rows = yield ["ZRANGE", self._key("h:", session_id), 0, -1]
            found = [
                m
                for m in _to_messages(rows)
                if (low is None or m[5] >= low)
                and (high is None or m[5] < high)
                and (role is None or m.role == role)
            ]
            found.sort(key=lambda m: (m[5], int(m[0])))
            return found if limit is None else found[:limit]

        index = "t" if user_id is None else "u:" + key_part(user_id)
        rows = yield self._function(
            "query",
            "",
            (
                index,
                "" if session_id is None else key_part(session_id),
                "" if role is None else ROLE_CODES[role],
                "-" if low is None else "[" + time_key(low),
                "+" if high is None else "(" + time_key(high),
                limit or 0,
            ),
        )
        return _to_messages(rows)

    def _sessions(self, user_id: str | None) -> list[str]:
        return self._drive(self._sessions_plan(user_id))

    def _sessions_plan(self, user_id: str | None) -> Plan[list[str]]:
        yield from self._purge_all()
        if user_id is None:
            names = yield ["ZRANGE", self._prefix + "l", 0, -1]
        else:
            names = yield self._function("user_sessions", "", (key_part(user_id),))
        return sorted(unquote(name.decode()) for name in names)

    def _count(self, session_id: str | None, user_id: str | None) -> int:
        return self._drive(self._count_plan(session_id, user_id))

    def _count_plan(self, session_id: str | None, user_id: str | None) -> Plan[int]:
        yield from self._purge_all()
        if session_id is not None and user_id is not None:
            both = yield self._function(
                "count_both", "", (key_part(user_id), key_part(session_id))
            )
            return int(both)
        if session_id is not None:
            key = self._key("h:", session_id)
        elif user_id is not None:
            key = self._key("u:", user_id)
        else:
            key = self._prefix + "o"
        return int((yield ["ZCARD", key]))

    def _used_bytes(self) -> int:
        used = self._command("HGET", STORE_PREFIX + "stats", "bytes")
        return int(used or 0)

    def _usage(self) -> tuple[int, int, float]:
        used, count = self._command("HMGET", STORE_PREFIX + "stats", "bytes", "count")
        memory = self._run(self._client.info, "memory")
        ratio = float(memory.get("allocator_frag_ratio", 1.0))
        fragmentation = min(1.0, max(0.0, 1.0 - 1.0 / ratio)) if ratio > 0 else 0.0
        return int(used or 0), int(count or 0), fragmentation


_MILLISECOND = timedelta(milliseconds=1)

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _to_messages(rows: Sequence[bytes]) -> list[Message]:
    # A body is [id, session, role, created, content, user(, metadata)].
    make, roles, loads = tuple.__new__, ROLES, json.loads
    messages = []
    for row in rows:
        fields = loads(row)
        messages.append(
            make(
                Message,
                (
                    str(fields[0]),
                    fields[1],
                    roles[fields[2]],
                    fields[4],
                    fields[5],
                    fields[3],
                    fields[6] if len(fields) > 6 else {},
                ),
            )
        )
    return messages


def _seq(message_id: str) -> int | None:
    if not message_id.isdigit() or not message_id.isascii() or message_id[0] == "0":
        return None
    value = int(message_id)
    return value if value < MAX_ID else None


def _too_little() -> CapacityExceeded:
    return CapacityExceeded(
        "The budget is full and this namespace holds too little to evict; "
        "other namespaces' messages are never evicted. Raise capacity_bytes "
        "or delete messages."
    )


def _positive_number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise InvalidMessage(f"{name} must be a positive number of seconds.")
    return float(value)


def _count(value: object, name: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InvalidMessage(f"{name} must be a whole number >= {least}.")
    return value
