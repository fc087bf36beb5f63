"""Session stores for the hub (``models/PROTOCOL.md`` section 2): what survives a restart.

One module per store behind one asynchronous interface (:mod:`adapters.stores.base`):
:class:`MemoryStore` (:mod:`adapters.stores.memory`) lives and dies with the process;
:class:`SQLiteStore` (:mod:`adapters.stores.sqlite`) persists everything, its epoch
included, on its own thread. Everything is importable from here.
"""

from adapters.stores.base import (
    ID_BYTES,
    TOKEN_BYTES,
    Commit,
    Effect,
    Outbound,
    SessionRecord,
    SessionStore,
    StoreBusy,
    Unauthorized,
    hash_token,
)
from adapters.stores.memory import MemoryStore
from adapters.stores.sqlite import DEFAULT_BUSY_TIMEOUT, SQLiteStore

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "ID_BYTES",
    "TOKEN_BYTES",
    "Commit",
    "Effect",
    "MemoryStore",
    "Outbound",
    "SQLiteStore",
    "SessionRecord",
    "SessionStore",
    "StoreBusy",
    "Unauthorized",
    "hash_token",
]
