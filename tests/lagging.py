"""Transports that are honest but awkward, for the tests that pin the driver's contract.

:class:`LaggingTransport` wraps any transport and decodes in a stage of its own: a frame
the peer sent is *buffered* at once (``receive_nowait()`` returns it), but ``receive()``
hands it over only after several loop turns and ``lag`` seconds more. Nothing in the
Transport contract forbids that (a TLS record layer, a decompressor or a Socket.IO packet
decoder behaves so), and it is exactly the case where a driver that reports a deadline
without first draining what is buffered declares a talking peer dead.

:class:`SilentPings` wraps a transport whose peer never answers a ping: ``ping()`` returns
an awaitable that never resolves (a server whose WebSocket library does not answer pings,
or an application-level peer that only streams data). Liveness must then rest on the
data alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Mapping

from adapters.transport import Dialer, Frame, Transport, TransportError

__all__ = ["LaggingDialer", "LaggingTransport", "SilentPings", "SilentPingsDialer"]


class LaggingTransport:
    """``inner`` with a decoding stage: ``receive()`` surfaces each frame ``turns`` loop
    turns and ``lag`` seconds after ``receive_nowait()`` could already take it."""

    def __init__(self, inner: Transport, *, turns: int = 5, lag: float = 0.05) -> None:
        self._inner, self._turns, self._lag = inner, turns, lag
        self._buffer: deque[tuple[float, Frame]] = deque()  # (when it arrived, frame)
        self._arrived = asyncio.Event()
        self._error: TransportError | None = None
        self._stopped = False  # closed or aborted by us
        self._pump = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                frame = await self._inner.receive()
                self._buffer.append((asyncio.get_running_loop().time(), frame))
                self._arrived.set()
        except TransportError as error:
            self._error = error
            self._arrived.set()

    async def receive(self) -> Frame:
        while True:
            while not self._buffer and self._error is None and not self._stopped:
                self._arrived.clear()
                await self._arrived.wait()
            if not self._buffer:
                if self._error is not None:
                    raise self._error
                return await self._inner.receive()  # stopped: the transport's own error
            arrived = self._buffer[0][0]
            for _ in range(self._turns):  # the decoding stage: a pipeline, each frame
                await asyncio.sleep(0)    # surfaces ``lag`` s after it arrived
            wait = arrived + self._lag - asyncio.get_running_loop().time()
            if wait > 1e-6:
                await asyncio.sleep(wait)
            if self._buffer:  # receive_nowait() may have taken it meanwhile
                return self._buffer.popleft()[1]

    def receive_nowait(self) -> Frame | None:
        return self._buffer.popleft()[1] if self._buffer else None

    async def send(self, frame: Frame) -> None:
        await self._inner.send(frame)

    async def ping(self) -> Awaitable[float]:
        return await self._inner.ping()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        try:
            await self._inner.close(code, reason)
        finally:
            await self._stop()

    def abort(self) -> None:
        self._inner.abort()
        self._stopped = True
        self._arrived.set()
        self._pump.cancel()

    async def _stop(self) -> None:
        self._stopped = True
        self._arrived.set()
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump

    @property
    def closed(self) -> bool:
        return self._inner.closed


class LaggingDialer:
    """Dials ``inner`` and wraps every transport in a :class:`LaggingTransport`."""

    def __init__(self, inner: Dialer, *, turns: int = 5, lag: float = 0.05) -> None:
        self._inner, self._turns, self._lag = inner, turns, lag

    async def dial(self, headers: Mapping[str, str]) -> LaggingTransport:
        return LaggingTransport(await self._inner.dial(headers), turns=self._turns,
                                lag=self._lag)


class SilentPings:
    """``inner`` whose peer never answers a ping."""

    def __init__(self, inner: Transport) -> None:
        self._inner = inner
        self.pings = 0

    async def ping(self) -> Awaitable[float]:
        if self._inner.closed:
            await self._inner.ping()  # raises the transport's error
        self.pings += 1
        return asyncio.get_running_loop().create_future()  # never resolved

    async def receive(self) -> Frame:
        return await self._inner.receive()

    def receive_nowait(self) -> Frame | None:
        return self._inner.receive_nowait()

    async def send(self, frame: Frame) -> None:
        await self._inner.send(frame)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._inner.close(code, reason)

    def abort(self) -> None:
        self._inner.abort()

    @property
    def closed(self) -> bool:
        return self._inner.closed


class SilentPingsDialer:
    """Dials ``inner`` and wraps every transport in :class:`SilentPings`."""

    def __init__(self, inner: Dialer) -> None:
        self._inner = inner
        self.transports: list[SilentPings] = []

    async def dial(self, headers: Mapping[str, str]) -> SilentPings:
        transport = SilentPings(await self._inner.dial(headers))
        self.transports.append(transport)
        return transport
