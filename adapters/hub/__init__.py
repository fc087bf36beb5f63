"""The reference server for session mode (``models/PROTOCOL.md``), on ``websockets``.

``hub = await serve(handler)`` listens; every client ``msg`` reaches
``handler(session, data)`` once and in order; ``session.send(data)`` or
``hub.send(session_id, data)`` reaches the client once and in order, across dropped
connections, and across hub restarts when the store is durable (:class:`SQLiteStore`).

Modules: :mod:`.server` (:class:`Hub`, :func:`serve`: the driver), :mod:`.session`
(:class:`Session`), :mod:`.wire` (one socket: its checks and its writer), :mod:`.guard`
(the trust boundary: authentication, quotas, calm logs), :mod:`.limits`
(:class:`Limits`), :mod:`.command` (``tether hub``). Presence decisions are the pure
table of :mod:`fsm.presence`.

Theory of operation
-------------------
**The edge.** A socket over a connection cap (in all, per remote address; open, and
half-open: not yet answered ``welcome``) is dropped on accept. The opening handshake must
finish within ``limits.handshake_timeout``; ``authenticate`` (if given) sees it and
returns the *principal* or refuses with HTTP 401/403. The connection must then send
``hello`` within ``limits.hello_timeout``; hellos are rate-limited per principal (per
address on an anonymous hub).

**Hello.** The hub resumes the named session when the token matches (compared in
constant time against the stored SHA-256) *and* the principal is the one that opened
it; otherwise ``error unauthorized``, without touching the session. An unknown session
opens a new one, within the quotas: ``limits.sessions_per_owner`` per principal (per
address when anonymous) and ``limits.max_sessions`` in all; at a cap, a disconnected
session that never delivered anything gives way, else ``error busy`` with
``retry_after``. It answers ``welcome`` (the store's epoch, its ``ack``, the ``limits``),
then replays every server message the client has not acknowledged.

**Reading and delivering are separate.** One task reads the socket: every frame is proof
of life, pings are answered at once, acks are applied, and messages are checked (``seq``:
duplicates dropped and acknowledged again, gaps refused) and queued. Another delivers
them one at a time. A slow handler therefore never keeps the hub from hearing its client.

**Delivery guarantee** (``tests/test_hub.py``). A client message counts as delivered
when ``handler(session, data)`` *returned* and the hub *committed*, in one store
transaction: ``last_in = seq``, every message the handler sent while handling it
(``session.send``/``hub.send``, to any session), and every effect it registered with
``session.record(effect)``. Only then does any acknowledgement of ``seq`` leave the hub.
Everything a commit will send is checked when it is *sent* (JSON, ``MAX_DEPTH``,
``max_frame``, room in the target's outbox, reserved then), so once the store's commit
returned nothing can fail: messages are held as the committed JSON text and ``msg``
frames are formatted around it. With a durable store, across SIGKILL at any instant:

* what the commit records happens **exactly once**: killed before the commit, nothing was
  recorded and nothing acknowledged, so the client replays the message and it is handled
  afresh; killed after it, ``last_in`` covers it and the replay is dropped as a duplicate;
* the handler *call* is **at-least-once** across a kill (or a busy store): a call whose
  commit never happened is made again. Effects outside the transaction may repeat; make
  them idempotent or route them through ``record``.
* A handler that raises has not delivered: nothing is committed, the connection is closed
  (1011), and the message is handled again after the client resumes.

**The store never blocks the loop.** Store calls are coroutines (:class:`SQLiteStore`
runs them on its own thread). A store that stays busy for ``limits.retry_after`` makes a
delivery fail with ``error busy`` (close 1013; the client replays it later) and a hello
answer ``error busy``; pings, pongs and every other session carry on meanwhile.
Acknowledgements and last-seen times are written lazily (losing one only means a replay
the client drops); sends outside handlers are committed in order, in batches, retried
while the store is busy.

**Presence** follows the client's heartbeat policy, as the table of
:mod:`fsm.presence`: ``present`` while heard within ``interval + timeout``; the hub probes a
connected client after ``interval`` of silence and declares it ``stale`` (aborting its
connection) when the probe stays unanswered ``timeout`` longer, but only after reading
what is already buffered, and a late timer (our loop was stalled) probes afresh instead.
A session stale for ``expire_after`` (``limits.expire_empty`` if it never delivered
anything) is ``gone``: forgotten at once, dropped from the store when it answers.
Changes reach ``on_presence`` callbacks as ``(session_id, old, new)``.

**Many hubs** (a store with ``shared = True``: :class:`~adapters.stores.RedisStore`).
Sessions are not loaded at start: a ``hello`` that resumes *claims* the session from
the store (its fencing generation goes up, the hub that held it is told and lets go),
and every commit carries the generation it was claimed with, the store's epoch and the
wire numbers the hub holds, so a stale hub's late commit, a store in a new epoch and a
store that lost writes are all refused. ``hub.send`` takes the id of a session another
hub holds (the store numbers the message and pokes that hub, which also re-reads its
sessions' heads now and then: a lost poke only delays). Presence changes are published
and other hubs' sessions appear in ``hub.presence``; a hub whose liveness key expired
has its sessions shown stale, then gone. See the README, "Many hubs on Redis".

**Memory is bounded in bytes.** Per session: ``limits.outbox``/``outbox_bytes`` of
unacknowledged messages, each held once; ``limits.read_ahead`` of client messages read
and not yet delivered. Per socket: its buffer (websockets' write limit plus one frame;
beyond ``limits.write_buffer`` more, the client is not reading and is dropped) and a few
flags; a client that takes no frame for ``interval + timeout`` is dropped too, its
session kept.

Tokens never reach a log line or a ``repr``; repeated warnings are rate-limited. Log
arrows as in websockets: ``>`` sent, ``<`` received, ``=`` state, ``!`` error, on the
``tether.hub`` logger (websockets' own lines on ``tether.wire.hub``).
"""

from adapters.hub.command import TokenFile, main, run_command
from adapters.hub.guard import HandshakeRequest, Refuse
from adapters.hub.limits import Limits
from adapters.hub.server import DEFAULT_EXPIRE_AFTER, Authenticate, Handler, Hub, serve
from adapters.hub.session import Session
from fsm.presence import Presence

__all__ = [
    "DEFAULT_EXPIRE_AFTER",
    "Authenticate",
    "Handler",
    "HandshakeRequest",
    "Hub",
    "Limits",
    "Presence",
    "Refuse",
    "Session",
    "TokenFile",
    "main",
    "run_command",
    "serve",
]
