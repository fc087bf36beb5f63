""":class:`MemoryStore`: sessions in a dict, for as long as the object lives.

Every call answers at once, in the event loop (the coroutines never suspend), so the
order of calls is the order of their effects. The epoch is fresh per instance: a hub
restarted with a new ``MemoryStore`` tells every client it lost their sessions, and the
clients rebuild. Messages are kept as the JSON text the hub hands over (the same string
object the hub holds: one copy).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

from adapters.stores.base import (
    Commit,
    Dropped,
    Outbound,
    SessionRecord,
    Unauthorized,
    Wire,
    check_commit,
    new_secrets,
)

__all__ = ["MemoryStore"]


@dataclass(slots=True)
class _Entry:
    record: SessionRecord
    outbound: dict[int, str] = field(default_factory=dict)  # wire -> JSON text


class MemoryStore:
    """Sessions in a dict: they live as long as this object. Fresh epoch per instance."""

    #: Every call completes without suspending (see SessionStore): a hub awaits it
    #: directly instead of running it as a task of its own.
    immediate = True
    #: One hub per store (SessionStore.shared).
    shared: ClassVar[bool] = False

    def __init__(self) -> None:
        self._epoch = secrets.token_urlsafe(9)
        self._node = "local"
        self._entries: dict[str, _Entry] = {}

    def __repr__(self) -> str:
        return f"MemoryStore(epoch={self._epoch!r}, sessions={len(self._entries)})"

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def node(self) -> str:
        return self._node

    async def create(self, now: float, principal: str | None = None
                     ) -> tuple[SessionRecord, str]:
        session_id, token, digest = new_secrets()
        record = SessionRecord(session_id, digest, created=now, last_seen=now,
                               principal=principal, generation=1, node=self._node)
        self._entries[session_id] = _Entry(record)
        return record, token

    async def resume(self, session_id: str, token: str) -> SessionRecord | None:
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        if not entry.record.matches(token):
            raise Unauthorized(f"wrong token for session {session_id}")
        return entry.record

    async def claim(self, session_id: str, now: float
                    ) -> tuple[SessionRecord, list[Outbound]] | None:
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        entry.record = replace(entry.record, generation=entry.record.generation + 1,
                               node=self._node, last_seen=now)
        return entry.record, await self.unacked(session_id)

    def _get(self, session_id: str) -> SessionRecord | None:
        entry = self._entries.get(session_id)
        return entry.record if entry is not None else None

    async def get(self, session_id: str) -> SessionRecord | None:
        return self._get(session_id)

    async def sessions(self) -> list[SessionRecord]:
        return [entry.record for entry in self._entries.values()]

    async def unacked(self, session_id: str) -> list[Outbound]:
        entry = self._entries.get(session_id)
        if entry is None:
            return []
        return [Outbound(wire, text) for wire, text in sorted(entry.outbound.items())]

    async def commit(self, commit: Commit) -> list[Wire]:
        check_commit(commit, self._get, self._epoch)
        for effect in commit.effects:  # first: if one raises, nothing was changed
            effect(None)
        if commit.inbound is not None:
            session_id, seq = commit.inbound
            entry = self._entries[session_id]
            entry.record = replace(entry.record, last_in=seq, last_seen=commit.now)
        wires: list[Wire] = []
        for session_id, text in commit.sends:
            target = self._entries.get(session_id)
            if target is None:
                wires.append(Dropped.GONE)
                continue
            wire = target.record.next_wire
            target.outbound[wire] = text
            target.record = replace(target.record, next_wire=wire + 1)
            wires.append(wire)
        for session_id, upto in commit.acked.items():
            self._ack(session_id, upto)
        return wires

    def _ack(self, session_id: str, upto: int) -> None:
        entry = self._entries.get(session_id)
        if entry is None or upto <= entry.record.acked_out:
            return
        for wire in [w for w in entry.outbound if w <= upto]:
            del entry.outbound[wire]
        entry.record = replace(entry.record, acked_out=upto)

    async def touch(self, seen: Mapping[str, float]) -> None:
        for session_id, when in seen.items():
            entry = self._entries.get(session_id)
            if entry is not None:
                entry.record = replace(entry.record, last_seen=when)

    async def drop(self, session_ids: Sequence[str]) -> None:
        for session_id in session_ids:
            self._entries.pop(session_id, None)

    async def expire(self, before: float) -> list[str]:
        gone = [sid for sid, e in self._entries.items() if e.record.last_seen < before]
        for session_id in gone:
            del self._entries[session_id]
        return gone

    async def aclose(self) -> None:
        """Nothing to release; the sessions stay readable until the object goes."""

    def close(self) -> None:
        """Nothing to release (the synchronous twin of :meth:`aclose`)."""
