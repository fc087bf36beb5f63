"""Running link tests on a virtual clock (``async_solipsism``): a minute costs nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import async_solipsism

T = TypeVar("T")


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` on a fresh virtual-time loop; it must end with no task left over."""
    loop = async_solipsism.EventLoop()
    try:
        result: T = loop.run_until_complete(main())
        leftover = [t for t in asyncio.all_tasks(loop) if not t.done()]
        assert not leftover, f"tasks leaked: {leftover}"
        return result
    finally:
        loop.close()


def now() -> float:
    return asyncio.get_running_loop().time()
