"""Session stores for the hub (``models/PROTOCOL.md`` section 2): what survives a restart.

One module per store behind one asynchronous interface (:mod:`adapters.stores.base`):
:class:`MemoryStore` (:mod:`adapters.stores.memory`) lives and dies with the process;
:class:`SQLiteStore` (:mod:`adapters.stores.sqlite`) persists everything, its epoch
included, on its own thread; :class:`RedisStore` (:mod:`adapters.stores.redis`, the
``tether[redis]`` extra) is shared by many hub processes. Everything is importable from
here.
"""

from typing import TYPE_CHECKING

from adapters.stores.base import (
    ID_BYTES,
    TOKEN_BYTES,
    Commit,
    CommitRefused,
    Dropped,
    Duplicate,
    Effect,
    EpochChanged,
    Fenced,
    Gap,
    Outbound,
    SessionGone,
    SessionRecord,
    SessionStore,
    StoreBusy,
    StoreLost,
    Unauthorized,
    Wire,
    hash_token,
)
from adapters.stores.memory import MemoryStore
from adapters.stores.sqlite import DEFAULT_BUSY_TIMEOUT, SQLiteStore

if TYPE_CHECKING:
    from adapters.stores.redis import RedisStore

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "ID_BYTES",
    "TOKEN_BYTES",
    "Commit",
    "CommitRefused",
    "Dropped",
    "Duplicate",
    "Effect",
    "EpochChanged",
    "Fenced",
    "Gap",
    "MemoryStore",
    "Outbound",
    "RedisStore",
    "SQLiteStore",
    "SessionGone",
    "SessionRecord",
    "SessionStore",
    "StoreBusy",
    "StoreLost",
    "Unauthorized",
    "Wire",
    "hash_token",
]


def __getattr__(name: str) -> object:
    """``RedisStore`` is imported on first use: it needs the ``tether[redis]`` extra."""
    if name == "RedisStore":
        from adapters.stores.redis import RedisStore  # noqa: PLC0415

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
