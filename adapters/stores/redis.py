""":class:`RedisStore`: sessions in Redis (7.x, or Valkey), shared by many hubs.

Install with ``pip install 'tether[redis]'`` (redis-py's asyncio client). Open it with
``store = await RedisStore.connect("redis://127.0.0.1:6379/0")``; every hub process that
connects to the same Redis (and ``prefix``) is a node of one cluster: a client may resume
on any of them, and ``hub.send(session_id, data)`` on any of them reaches the client
wherever its socket is.

Keys (``P`` is the prefix, ``tether`` by default). Each session's keys share the hash
tag ``{session}``: ``P:{sid}:s`` (a hash: token digest, principal, ``last_in``,
``next_wire``, ``acked_out``, bytes held, created, last seen, fencing generation, the
node holding it, the epoch it belongs to) and ``P:{sid}:out`` (a list: the
unacknowledged messages, wire numbers ``acked_out + 1 ..``). Besides them: ``P:epoch``
(the store's epoch), ``P:sessions`` (last seen per session, for expiry), ``P:node:NAME``
(each hub's liveness, with a TTL), ``P:commit:ID`` (the answer of a recent commit, so a
retry after a lost answer is not committed twice). Channels: ``P:inbox:NODE`` (pokes and
take-overs for one hub), ``P:presence`` and ``P:epochs``. The scripts touch the global
keys as well as the session's, so this store needs one Redis primary (replicas and a
failover are fine); Redis Cluster is refused at connect.

**One script per delivery, everything or nothing.** :meth:`RedisStore.commit` runs one
Lua script: it creates the epoch if missing and refuses a commit made in another epoch;
refuses a stale holder (the session's fencing generation moved on: another hub took it
over); answers duplicate or gap for the inbound ``seq``; refuses when the store is behind
what the hub already holds (a lower ``next_wire``, an acknowledgement beyond what it
sent: it lost writes); then advances ``last_in``, trims what the client acknowledged,
appends the sends with wire numbers it assigns, within the outbox bounds, and pokes
the hub holding each target on its channel. Redis runs a script alone, so nothing sees
half of one.

**The epoch** is the key ``P:epoch``, created only if missing (``SET`` in a script that
found none). It disappears exactly when Redis lost its data (no persistence and a
restart, ``FLUSHALL``, eviction, which is why ``maxmemory-policy`` must be
``noeviction``, checked at connect) and survives a restart from the append-only file.
A partial loss (an fsync window, a failover to a lagging replica) shows as a store
behind the hub or the client; :meth:`new_epoch` then moves the store to a new epoch, so
every client rebuilds once, instead of resuming on a store that forgot.

**Unavailable is busy.** A connection error or timeout is :class:`StoreBusy` (the hub
answers ``busy`` with ``retry_after`` and acknowledges nothing); :attr:`available` is
false until a call succeeds again. Calls are never retried by the client library: a
commit is retried by the hub with the same ``commit_id``, which the script answers from
its record instead of committing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from adapters.stores.base import (
    Commit,
    Dropped,
    Duplicate,
    EpochChanged,
    Fenced,
    Gap,
    Outbound,
    SessionGone,
    SessionRecord,
    StoreBusy,
    StoreLost,
    Unauthorized,
    Wire,
    new_secrets,
)

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import BusyLoadingError, NoScriptError, ResponseError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as _missing:  # pragma: no cover (the extra is not installed)
    raise ImportError("RedisStore needs redis-py: pip install 'tether[redis]'") from _missing

__all__ = ["EpochMoved", "Poked", "PresenceHeard", "RedisStore", "StoreEvent", "StoreReset",
           "TakenOver", "Unavailable"]

logger = logging.getLogger("tether.store.redis")

#: Errors that mean "Redis cannot answer now" (nothing is known to be done).
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, OSError)
#: How long a commit's answer is kept for a retry with the same id (seconds).
_COMMIT_MEMORY_MS = 120_000


class Unavailable(StoreBusy):
    """Redis did not answer (connection refused or lost, timeout, loading its data)."""


# -- what the store tells its hub -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Poked:
    """Another hub committed messages for a session this hub holds: read them."""

    session_id: str


@dataclass(frozen=True, slots=True)
class TakenOver:
    """Another hub claimed a session this hub held (fencing ``generation``)."""

    session_id: str
    generation: int


@dataclass(frozen=True, slots=True)
class PresenceHeard:
    """Another hub announced a presence change of a session it holds."""

    node: str
    session_id: str
    presence: str


@dataclass(frozen=True, slots=True)
class EpochMoved:
    """The store is in a new epoch: every session of the old one is gone."""

    epoch: str


@dataclass(frozen=True, slots=True)
class StoreReset:
    """Redis restarted or failed over (its ``run_id`` changed): what a hub holds in
    memory may be ahead of what Redis kept; hubs drop their copies and reload."""

    reason: str


StoreEvent = Poked | TakenOver | PresenceHeard | EpochMoved | StoreReset


# -- the scripts ------------------------------------------------------------------------------

_EPOCH = """
local function epoch_of(key, candidate, channel)
  local epoch = redis.call('GET', key)
  if not epoch then
    redis.call('SET', key, candidate)
    redis.call('PUBLISH', channel, candidate)
    epoch = candidate
  end
  return epoch
end
"""

# KEYS: epoch, index, commit-id key, then (session hash, outbound list) per slot.
# ARGV: 1 expected epoch ('' = any), 2 candidate epoch, 3 node, 4 now, 5 '1' if slot 1 is
# the inbound session, 6 seq, 7 generation ('' = unchecked), 8 max messages (0 = none),
# 9 max bytes, 10 prefix, 11 slots, 12 '1' to remember the answer under KEYS[3]; then
# per slot: session id, ack upto (0), floor (0), n, n texts.
_COMMIT = _EPOCH + """
if ARGV[12] == '1' then
  local done = redis.call('GET', KEYS[3])
  if done then return {'ok', done} end
end
local epoch = epoch_of(KEYS[1], ARGV[2], ARGV[10] .. 'epochs')
if ARGV[1] ~= '' and ARGV[1] ~= epoch then return {'epoch', epoch} end
local k = tonumber(ARGV[11])
local slots = {}
local a = 13
for i = 1, k do
  local slot = {sid = ARGV[a], ack = tonumber(ARGV[a + 1]), floor = tonumber(ARGV[a + 2]),
                n = tonumber(ARGV[a + 3]), first = a + 4,
                s = KEYS[2 + 2 * i], out = KEYS[3 + 2 * i]}
  a = a + 4 + slot.n
  local v = redis.call('HMGET', slot.s, 'e', 'li', 'nw', 'ao', 'g', 'n', 'b')
  slot.live = (v[1] == epoch)
  if slot.live then
    slot.li, slot.nw, slot.ao = tonumber(v[2]), tonumber(v[3]), tonumber(v[4])
    slot.g, slot.node, slot.b = tonumber(v[5]), v[6], tonumber(v[7])
  end
  slots[i] = slot
end
if ARGV[5] == '1' then
  local slot = slots[1]
  if not slot.live then return {'gone'} end
  if ARGV[7] ~= '' and slot.g ~= tonumber(ARGV[7]) then return {'fenced', slot.g} end
  local seq = tonumber(ARGV[6])
  if seq <= slot.li then return {'duplicate', slot.li} end
  if seq > slot.li + 1 then return {'gap', slot.li} end
end
for i = 1, k do
  local slot = slots[i]
  if slot.live then
    if slot.floor > 0 and slot.nw < slot.floor then return {'lost', slot.sid, slot.nw} end
    if slot.ack > 0 and slot.ack >= slot.nw then return {'lost', slot.sid, slot.nw} end
  end
end
local now = ARGV[4]
if ARGV[5] == '1' then
  redis.call('HSET', slots[1].s, 'li', ARGV[6], 'ls', now)
  redis.call('ZADD', KEYS[2], now, slots[1].sid)
end
local maxn, maxb = tonumber(ARGV[8]), tonumber(ARGV[9])
local wires = {}
for i = 1, k do
  local slot = slots[i]
  if slot.live then
    if slot.ack > slot.ao then
      local popped = redis.call('LPOP', slot.out, slot.ack - slot.ao)
      if popped then
        for _, text in ipairs(popped) do slot.b = slot.b - string.len(text) end
      end
      slot.ao = slot.ack
    end
    local full, added = false, 0
    for j = 0, slot.n - 1 do
      local text = ARGV[slot.first + j]
      if full or (maxn > 0 and (slot.nw - slot.ao > maxn or
                                slot.b + string.len(text) > maxb)) then
        full = true
        table.insert(wires, -2)
      else
        redis.call('RPUSH', slot.out, text)
        table.insert(wires, slot.nw)
        slot.nw = slot.nw + 1
        slot.b = slot.b + string.len(text)
        added = added + 1
      end
    end
    redis.call('HSET', slot.s, 'nw', slot.nw, 'ao', slot.ao, 'b', slot.b)
    if added > 0 and slot.node and slot.node ~= ARGV[3] then
      redis.call('PUBLISH', ARGV[10] .. 'inbox:' .. slot.node, 'poke ' .. slot.sid)
    end
  else
    for j = 1, slot.n do table.insert(wires, -1) end
  end
end
local answer = table.concat(wires, ',')
if ARGV[12] == '1' then
  redis.call('SET', KEYS[3], answer, 'PX', %d)
end
return {'ok', answer}
""" % _COMMIT_MEMORY_MS  # noqa: UP031 (Lua braces would need doubling in an f-string)

# KEYS: epoch, index, session hash. ARGV: candidate epoch, sid, token digest (hex),
# principal, '1' if there is a principal, now, node, prefix.
_CREATE = _EPOCH + """
local epoch = epoch_of(KEYS[1], ARGV[1], ARGV[8] .. 'epochs')
local fields = {'th', ARGV[3], 'li', 0, 'nw', 1, 'ao', 0, 'b', 0, 'cr', ARGV[6],
                'ls', ARGV[6], 'g', 1, 'n', ARGV[7], 'e', epoch}
if ARGV[5] == '1' then
  table.insert(fields, 'pr')
  table.insert(fields, ARGV[4])
end
redis.call('HSET', KEYS[3], unpack(fields))
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[2])
return epoch
"""

# KEYS: epoch, session hash. -> {epoch or false, fields} (a read: creates nothing).
_READ = """
return {redis.call('GET', KEYS[1]) or '', redis.call('HGETALL', KEYS[2])}
"""

# KEYS: epoch, index, session hash, outbound list. ARGV: node, now, prefix, sid.
_CLAIM = """
local epoch = redis.call('GET', KEYS[1])
if not epoch or redis.call('HGET', KEYS[3], 'e') ~= epoch then return false end
local g = redis.call('HINCRBY', KEYS[3], 'g', 1)
local old = redis.call('HGET', KEYS[3], 'n')
redis.call('HSET', KEYS[3], 'n', ARGV[1], 'ls', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
if old and old ~= ARGV[1] then
  redis.call('PUBLISH', ARGV[3] .. 'inbox:' .. old, 'takeover ' .. ARGV[4] .. ' ' .. g)
end
return {epoch, redis.call('HGETALL', KEYS[3]), redis.call('LRANGE', KEYS[4], 0, -1)}
"""

# KEYS: session hash, outbound list. ARGV: after (a wire number). -> {acked_out, texts}
_AFTER = """
local v = redis.call('HMGET', KEYS[1], 'ao', 'nw')
if not v[1] then return false end
local ao = tonumber(v[1])
local start = math.max(tonumber(ARGV[1]), ao) - ao
return {ao, redis.call('LRANGE', KEYS[2], start, -1)}
"""

# KEYS: session hash, outbound list, index. ARGV: sid, mode ('expire' or 'drop'),
# before / node, epoch. Deletes the session if it expired / this node holds it (or it
# belongs to no live epoch). -> 1 if deleted.
_REMOVE = """
local v = redis.call('HMGET', KEYS[1], 'ls', 'n', 'e')
local doomed = (not v[1]) or v[3] ~= ARGV[4]
if ARGV[2] == 'expire' then
  doomed = doomed or tonumber(v[1]) < tonumber(ARGV[3])
else
  doomed = doomed or v[2] == ARGV[3]
end
if not doomed then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""

# KEYS: session hash, index. ARGV: sid, when, node.
_TOUCH = """
if redis.call('HGET', KEYS[1], 'n') ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'ls', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""

# KEYS: epoch. ARGV: the epoch the caller saw, candidate, channel.
_NEW_EPOCH = """
local epoch = redis.call('GET', KEYS[1])
if epoch == ARGV[1] or not epoch then
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('PUBLISH', ARGV[3], ARGV[2])
  return ARGV[2]
end
return epoch
"""


def _new_epoch() -> str:
    return secrets.token_urlsafe(9)


def _fields(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


class RedisStore:
    """Sessions in Redis, shared by every hub that connects to it (see the module
    docstring). Build it with :meth:`connect`; ``aclose()`` when done.

    ``node`` names this hub in the store (random by default: one per process).
    ``liveness`` (seconds) is the TTL of this hub's liveness key, refreshed four times
    per period; a hub whose key expired is dead to the others. ``timeout`` bounds every
    call (a slower answer is :class:`StoreBusy`). ``connections`` bounds the pool.
    """

    shared: ClassVar[bool] = True
    immediate = False

    def __init__(self, url: str, *, prefix: str = "tether", node: str | None = None,
                 liveness: float = 5.0, timeout: float = 1.0, connections: int = 16) -> None:
        given: object = url
        if not isinstance(given, str) or not given.startswith(("redis://", "rediss://",
                                                               "unix://")):
            raise ValueError(f"RedisStore url must be redis://, rediss:// or unix://, got "
                             f"{url!r}")
        named: object = prefix
        if not isinstance(named, str) or not named or "{" in named or "}" in named:
            raise ValueError(f"RedisStore prefix must be a non-empty str without braces, "
                             f"got {prefix!r}")
        seconds: tuple[tuple[str, object], ...] = (("liveness", liveness), ("timeout", timeout))
        for name, value in seconds:
            if isinstance(value, bool) or not isinstance(value, int | float) or \
                    not 0 < value < float("inf"):
                raise ValueError(f"RedisStore {name} must be a finite number of seconds "
                                 f"> 0, got {value!r}")
        self.url = url
        self.prefix = prefix
        self.liveness = float(liveness)
        self._node = node or secrets.token_hex(6)
        self._p = f"{prefix}:"
        pool = aioredis.BlockingConnectionPool.from_url(
            url, decode_responses=True, socket_timeout=timeout,
            socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
            max_connections=connections, timeout=timeout)
        self._r: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self._scripts = {name: self._r.register_script(text) for name, text in (
            ("commit", _COMMIT), ("create", _CREATE), ("read", _READ), ("claim", _CLAIM),
            ("after", _AFTER), ("remove", _REMOVE), ("touch", _TOUCH),
            ("new_epoch", _NEW_EPOCH))}
        self._epoch = ""
        self._run_id = ""
        self._lost_contact = False  # the liveness loop could not reach Redis
        self._available = True
        self._closed = False
        self._stopping = False  # aclose() began: the loops end (whatever redis-py does
        # with a cancellation that lands in the middle of a read)
        self._listeners: list[Callable[[StoreEvent], None]] = []
        self._presence: dict[str, str] = {}  # announcements not published yet
        self._presence_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return (f"RedisStore({self._redacted_url()!r}, node={self._node!r}, "
                f"epoch={self._epoch!r})")

    def _redacted_url(self) -> str:
        scheme, sep, rest = self.url.partition("://")
        if "@" in rest:
            rest = "***@" + rest.split("@", 1)[1]
        return scheme + sep + rest

    # -- opening --------------------------------------------------------------------------------

    @classmethod
    async def connect(cls, url: str, **options: Any) -> Self:
        """Connect, check the server (``maxmemory-policy noeviction``, not a cluster),
        create the epoch if missing, announce this hub and start listening."""
        store = cls(url, **options)
        try:
            await store._open()
        except BaseException:
            await store.aclose()
            raise
        return store

    async def _open(self) -> None:
        try:
            memory = await self._r.info("memory")
            server = await self._r.info("server")
            cluster = await self._r.info("cluster")
        except _UNAVAILABLE as error:
            raise Unavailable(f"Redis at {self._redacted_url()} does not answer: "
                              f"{error}") from error
        policy = memory.get("maxmemory_policy")
        if policy != "noeviction":
            raise ValueError(
                f"Redis at {self._redacted_url()} runs with maxmemory-policy {policy!r}: "
                f"it may evict session keys (and the epoch) under memory pressure, losing "
                f"messages silently. Set maxmemory-policy noeviction (CONFIG SET "
                f"maxmemory-policy noeviction, or in redis.conf) and start the hub again")
        if int(cluster.get("cluster_enabled", 0)):
            raise ValueError(f"Redis at {self._redacted_url()} is a Redis Cluster node: "
                             f"RedisStore needs one primary (its scripts touch the epoch and "
                             f"a session's keys together)")
        self._run_id = str(server.get("run_id", ""))
        self._epoch = await self._ensure_epoch()
        await self._heartbeat()
        self._tasks = [asyncio.create_task(self._supervise(self._listen, "listener")),
                       asyncio.create_task(self._supervise(self._beat, "liveness")),
                       asyncio.create_task(self._supervise(self._publish, "presence"))]

    async def _ensure_epoch(self) -> str:
        key = self._p + "epoch"
        candidate = _new_epoch()
        created = await self._call(self._r.set(key, candidate, nx=True))
        if created:
            await self._call(self._r.publish(self._p + "epochs", candidate))
            logger.info("= %s: new epoch %s (the epoch key was missing)", self, candidate)
        epoch = await self._call(self._r.get(key))
        return str(epoch) if epoch else candidate

    # -- calls ----------------------------------------------------------------------------------

    async def _call(self, awaitable: Any) -> Any:
        if self._closed or self._stopping:
            with contextlib.suppress(AttributeError):
                awaitable.close()  # a coroutine never awaited: no warning
            raise RuntimeError(f"{self!r} is closed")
        try:
            result = await awaitable
        except _UNAVAILABLE as error:
            self._available = False
            raise Unavailable(f"Redis does not answer: {type(error).__name__}: "
                              f"{error}") from error
        except ResponseError as error:
            if "OOM" in str(error) or "LOADING" in str(error) or "READONLY" in str(error):
                self._available = False
                raise Unavailable(f"Redis refuses writes now: {error}") from error
            raise
        self._available = True
        return result

    async def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._call(self._scripts[name](keys=list(keys), args=list(args)))

    def _keys(self, session_id: str) -> tuple[str, str]:
        tag = f"{self._p}{{{session_id}}}"
        return tag + ":s", tag + ":out"

    def _record(self, session_id: str, f: Mapping[str, str]) -> SessionRecord:
        return SessionRecord(
            session_id, bytes.fromhex(f["th"]), int(f["li"]), int(f["nw"]), int(f["ao"]),
            float(f["cr"]), float(f["ls"]), f.get("pr"), int(f["g"]), f.get("n") or None)

    def _saw_epoch(self, epoch: str) -> None:
        if epoch and epoch != self._epoch:
            old, self._epoch = self._epoch, epoch
            logger.warning("! %s: the store moved from epoch %s to %s", self, old, epoch)
            self._tell(EpochMoved(epoch))

    # -- the interface --------------------------------------------------------------------------

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def node(self) -> str:
        return self._node

    @property
    def stopping(self) -> bool:
        """``aclose()`` began."""
        return self._stopping

    @property
    def available(self) -> bool:
        """False after a call found Redis unreachable, until one succeeds again."""
        return self._available and not self._closed

    def on_event(self, listener: Callable[[StoreEvent], None]) -> Callable[[], None]:
        """Call ``listener(event)`` (in the loop) for what other hubs and Redis tell this
        one; returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _tell(self, event: StoreEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("! store listener %r raised on %r", listener, event)

    async def create(self, now: float, principal: str | None = None
                     ) -> tuple[SessionRecord, str]:
        session_id, token, digest = new_secrets()
        s, _ = self._keys(session_id)
        epoch = await self._script("create", [self._p + "epoch", self._p + "sessions", s], [
            _new_epoch(), session_id, digest.hex(), principal or "",
            "1" if principal is not None else "0", repr(now), self._node, self._p])
        self._saw_epoch(str(epoch))
        return SessionRecord(session_id, digest, created=now, last_seen=now,
                             principal=principal, generation=1, node=self._node), token

    async def get(self, session_id: str) -> SessionRecord | None:
        s, _ = self._keys(session_id)
        epoch, flat = await self._script("read", [self._p + "epoch", s], [])
        fields = _fields(flat)
        if not epoch or fields.get("e") != epoch:
            return None
        return self._record(session_id, fields)

    async def resume(self, session_id: str, token: str) -> SessionRecord | None:
        record = await self.get(session_id)
        if record is None:
            return None
        if not record.matches(token):
            raise Unauthorized(f"wrong token for session {session_id}")
        return record

    async def claim(self, session_id: str, now: float
                    ) -> tuple[SessionRecord, list[Outbound]] | None:
        s, out = self._keys(session_id)
        answer = await self._script(
            "claim", [self._p + "epoch", self._p + "sessions", s, out],
            [self._node, repr(now), self._p, session_id])
        if not answer:
            return None
        epoch, flat, texts = answer
        self._saw_epoch(str(epoch))
        record = self._record(session_id, _fields(flat))
        first = record.acked_out + 1
        return record, [Outbound(first + i, str(text)) for i, text in enumerate(texts)]

    async def sessions(self) -> list[SessionRecord]:
        ids = await self._call(self._r.zrange(self._p + "sessions", 0, -1))
        found = [await self.get(str(sid)) for sid in ids]
        return [record for record in found if record is not None]

    async def unacked(self, session_id: str, after: int = 0) -> list[Outbound]:
        """The session's unacknowledged messages (with ``after``: those above it)."""
        s, out = self._keys(session_id)
        answer = await self._script("after", [s, out], [after])
        if not answer:
            return []
        acked, texts = answer
        first = max(after, int(acked)) + 1
        return [Outbound(first + i, str(text)) for i, text in enumerate(texts)]

    async def heads(self, session_ids: Sequence[str]) -> dict[str, int]:
        """``next_wire`` of each session the store has (one round trip)."""
        if not session_ids:
            return {}
        pipe = self._r.pipeline(transaction=False)
        for sid in session_ids:
            pipe.hget(self._keys(sid)[0], "nw")
        values = await self._call(pipe.execute())
        return {sid: int(v) for sid, v in zip(session_ids, values, strict=True) if v}

    async def commit(self, commit: Commit) -> list[Wire]:
        slots: dict[str, list[str]] = {}
        if commit.inbound is not None:
            slots[commit.inbound[0]] = []
        order: list[str] = []
        for sid, text in commit.sends:
            slots.setdefault(sid, []).append(text)
            order.append(sid)
        for sid in list(commit.acked) + list(commit.floors):
            slots.setdefault(sid, [])
        keys = [self._p + "epoch", self._p + "sessions",
                f"{self._p}commit:{commit.commit_id or '-'}"]
        limit_n, limit_b = commit.limits or (0, 0)
        seq = commit.inbound[1] if commit.inbound is not None else 0
        args: list[Any] = [
            commit.epoch or "", _new_epoch(), self._node, repr(commit.now),
            "1" if commit.inbound is not None else "0", seq,
            "" if commit.generation is None else commit.generation, limit_n, limit_b,
            self._p, len(slots), "1" if commit.commit_id else "0"]
        for sid, texts in slots.items():
            s, out = self._keys(sid)
            keys += [s, out]
            args += [sid, commit.acked.get(sid, 0), commit.floors.get(sid, 0), len(texts),
                     *texts]
        for effect in commit.effects:  # no transaction to share: before, like memory
            effect(None)
        answer = await self._script("commit", keys, args)
        kind = answer[0]
        if kind == "ok":
            results = [int(w) for w in str(answer[1]).split(",")] if answer[1] else []
            by_slot: dict[str, list[int]] = {}
            index = 0
            for sid, texts in slots.items():
                by_slot[sid] = results[index:index + len(texts)]
                index += len(texts)
            taken = {sid: 0 for sid in slots}
            wires: list[Wire] = []
            for sid in order:
                value = by_slot[sid][taken[sid]]
                taken[sid] += 1
                wires.append(value if value > 0 else
                             Dropped.GONE if value == -1 else Dropped.FULL)
            return wires
        session_id = commit.inbound[0] if commit.inbound is not None else "?"
        if kind == "epoch":
            self._saw_epoch(str(answer[1]))
            raise EpochChanged(commit.epoch or "", str(answer[1]))
        if kind == "gone":
            raise SessionGone(f"no session {session_id!r} in the store's epoch")
        if kind == "fenced":
            raise Fenced(session_id, commit.generation or 0, int(answer[1]))
        if kind == "duplicate":
            raise Duplicate(f"session {session_id}: delivery of seq {seq}, but last_in is "
                            f"{answer[1]}", int(answer[1]))
        if kind == "gap":
            raise Gap(f"session {session_id}: delivery of seq {seq}, but last_in is "
                      f"{answer[1]} in the store: it lost writes", int(answer[1]))
        if kind == "lost":
            raise StoreLost(f"session {answer[1]}: the store's next wire number is "
                            f"{answer[2]}, behind what the hub or its client already had")
        raise RuntimeError(f"unexpected answer from the commit script: {answer!r}")

    async def new_epoch(self, seen: str) -> str:
        """Move the store to a new epoch (it lost data; every session of ``seen`` is
        gone), unless another hub did already; returns the epoch now in force."""
        epoch = await self._script("new_epoch", [self._p + "epoch"],
                                   [seen, _new_epoch(), self._p + "epochs"])
        self._saw_epoch(str(epoch))
        return str(epoch)

    async def touch(self, seen: Mapping[str, float]) -> None:
        if not seen:
            return
        await self._pipelined("touch", [
            (2, self._keys(sid)[0], self._p + "sessions", sid, repr(when), self._node)
            for sid, when in seen.items()])

    async def _pipelined(self, name: str, calls: Sequence[Sequence[Any]]) -> list[Any]:
        """Run script ``name`` once per argument list in ``calls``, pipelined (one round
        trip); a Redis that forgot the script (restarted) is given it again."""
        for attempt in (1, 2):
            pipe = self._r.pipeline(transaction=False)
            for call in calls:
                pipe.evalsha(self._scripts[name].sha, *call)
            try:
                results: list[Any] = await self._call(pipe.execute())
            except NoScriptError:
                if attempt == 2:
                    raise
                await self._call(self._r.script_load(self._scripts[name].script))
                continue
            return results
        raise AssertionError("unreachable")  # pragma: no cover

    async def _remove(self, session_ids: Sequence[str], mode: str, arg: str) -> list[str]:
        if not session_ids:
            return []
        done = await self._pipelined("remove", [
            (3, *self._keys(sid), self._p + "sessions", sid, mode, arg, self._epoch)
            for sid in session_ids])
        return [sid for sid, gone in zip(session_ids, done, strict=True) if gone]

    async def drop(self, session_ids: Sequence[str]) -> None:
        """Drop the sessions this hub holds (one another hub took over stays)."""
        await self._remove(session_ids, "drop", self._node)

    async def expire(self, before: float) -> list[str]:
        ids = await self._call(self._r.zrangebyscore(self._p + "sessions", "-inf",
                                                     f"({before!r}"))
        return await self._remove([str(sid) for sid in ids], "expire", repr(before))

    # -- the cluster ----------------------------------------------------------------------------

    async def alive(self, nodes: Sequence[str]) -> set[str]:
        """Which of ``nodes`` have a liveness key (their hub beat within ``liveness``)."""
        if not nodes:
            return set()
        pipe = self._r.pipeline(transaction=False)
        for node in nodes:
            pipe.exists(self._p + "node:" + node)
        found = await self._call(pipe.execute())
        return {node for node, there in zip(nodes, found, strict=True) if there}

    def announce(self, session_id: str, presence: str) -> None:
        """Publish a presence change of a session this hub holds (soon, in order per
        session; only the latest per session is kept while Redis is away)."""
        if not self._closed:
            self._presence.pop(session_id, None)
            self._presence[session_id] = presence
            self._presence_wake.set()

    async def _heartbeat(self) -> None:
        await self._call(self._r.set(self._p + "node:" + self._node, "1",
                                     px=int(self.liveness * 1000)))

    async def _supervise(self, loop: Callable[[], Any], name: str) -> None:
        """Run one of the store's loops forever; any failure is logged and the loop
        starts again after a pause (no task dies silently). Ends once ``aclose()``
        began, whatever the loop was doing."""
        while not self._stopping:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if self.stopping:  # the connections are being closed under it
                    return
                if isinstance(error, StoreBusy):
                    logger.warning("! %s %s: %s (retrying)", self, name, error)
                else:
                    logger.exception("! %s %s failed; restarting it", self, name)
            await asyncio.sleep(min(0.5, self.liveness / 4))

    async def _beat(self) -> None:
        """Refresh this hub's liveness key; notice a restarted Redis (run_id) and an
        epoch that moved or vanished."""
        while True:
            try:
                await self._heartbeat()
                server = await self._call(self._r.info("server"))
            except StoreBusy:
                self._lost_contact = True
                raise
            run_id = str(server.get("run_id", ""))
            if run_id != self._run_id or self._lost_contact:
                restarted = run_id != self._run_id
                self._run_id = run_id
                self._saw_epoch(await self._ensure_epoch())
                if restarted:
                    self._tell(StoreReset(f"Redis restarted or failed over "
                                          f"(run_id {run_id[:8]})"))
            self._lost_contact = False
            await asyncio.sleep(self.liveness / 4)

    async def _listen(self) -> None:
        pubsub = self._r.pubsub(ignore_subscribe_messages=True)
        inbox = f"{self._p}inbox:{self._node}"
        try:
            await self._call(pubsub.subscribe(inbox, self._p + "presence",
                                              self._p + "epochs"))
            while True:
                message = await self._call(pubsub.get_message(timeout=self.liveness))
                if message is None or message.get("type") != "message":
                    continue
                channel, data = str(message["channel"]), str(message["data"])
                if channel == inbox:
                    kind, _, rest = data.partition(" ")
                    if kind == "poke":
                        self._tell(Poked(rest))
                    elif kind == "takeover":
                        sid, _, generation = rest.partition(" ")
                        self._tell(TakenOver(sid, int(generation)))
                elif channel == self._p + "presence":
                    node, sid, presence = data.split(" ", 2)
                    if node != self._node:
                        self._tell(PresenceHeard(node, sid, presence))
                elif channel == self._p + "epochs":
                    self._saw_epoch(data)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _publish(self) -> None:
        while True:
            if not self._presence:
                await self._presence_wake.wait()
            self._presence_wake.clear()
            while self._presence:
                sid, presence = next(iter(self._presence.items()))
                await self._call(self._r.publish(self._p + "presence",
                                                 f"{self._node} {sid} {presence}"))
                if self._presence.get(sid) == presence:
                    del self._presence[sid]

    async def aclose(self) -> None:
        """Stop listening, remove this hub's liveness key, close the connections."""
        if self._closed or self._stopping:
            return
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self._r.delete(self._p + "node:" + self._node)  # dead to the others
        self._closed = True
        with contextlib.suppress(Exception):
            await self._r.connection_pool.disconnect()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=2.0)
            for task in stuck:  # pragma: no cover
                logger.error("! %s: task %s did not end when cancelled", self, task)
        with contextlib.suppress(Exception):
            await self._r.aclose()
