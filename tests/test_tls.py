"""``wss://`` with certificate verification on by default, against the hub on 127.0.0.1.

A throwaway CA (``trustme``) issues the hub's certificate. A link given a context that
trusts the CA reaches ONLINE, echoes, and resumes its session across a dropped
connection. A link with the default verification (no ``ssl`` argument: the system's
trust store, which has never heard of this CA), a certificate issued for another name,
or an expired one, goes FAILED at once with a reason naming certificate verification:
retrying cannot help, so it does not retry. The PEM files live in a private ``mkdtemp``
directory.
"""

from __future__ import annotations

import asyncio
import datetime
import random
import shutil
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from adapters.hub import Hub, serve
from adapters.link import Link, LinkFailed
from adapters.proxy import FaultProxy
from adapters.websocket import connect
from fsm import State
from tests.test_hub import echo
from tests.test_realsocket import FAST, HANDSHAKE, HB, finish, now, run

pytestmark = [pytest.mark.realsocket, pytest.mark.timeout(30)]

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Pki:
    """A throwaway CA and server contexts for certificates it issued."""

    ca: trustme.CA
    directory: Path

    def server_context(self, *identities: str, expired: bool = False) -> ssl.SSLContext:
        if expired:
            past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
            cert = self.ca.issue_cert(*identities, not_after=past,
                                      not_before=past - datetime.timedelta(days=30))
        else:
            cert = self.ca.issue_cert(*identities)
        path = self.directory / f"server-{len(list(self.directory.iterdir()))}.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(path))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(path))
        return context

    def client_context(self) -> ssl.SSLContext:
        """Verification as by default (hostname checked, certificate required), and the
        throwaway CA trusted."""
        context = ssl.create_default_context()
        context.load_verify_locations(cadata=self.ca.cert_pem.bytes().decode("ascii"))
        return context


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    directory = Path(tempfile.mkdtemp(prefix="tether-tls-"))
    try:
        yield Pki(trustme.CA(), directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def wss_link(port: int, *, ssl_context: ssl.SSLContext | None) -> Link:
    """``ssl_context=None`` is ``connect``'s default: websockets' default context."""
    return connect(f"wss://{HOST}:{port}/", session=True, heartbeat=HB, backoff=FAST,
                   handshake_timeout=HANDSHAKE, close_timeout=0.5, ssl=ssl_context,
                   rng=random.Random(4))


def test_wss_with_a_trusted_ca_goes_online_echoes_and_resumes(pki: Pki) -> None:
    async def main() -> None:
        hub = await serve(echo, HOST, ssl=pki.server_context(HOST))
        try:
            # Through a TCP proxy, so that the connection can be cut under TLS.
            async with FaultProxy((HOST, hub.port), rng=random.Random(9)) as proxy:
                link = wss_link(proxy.port, ssl_context=pki.client_context())
                await link.start()
                await link.wait_for(State.ONLINE, timeout=5)
                await link.send({"over": "tls"})
                assert await asyncio.wait_for(link.receive(), 5) == {"over": "tls"}
                (sid,) = hub.sessions

                proxy.reset_peer()
                await asyncio.sleep(0.05)
                proxy.clear()
                await link.wait_for(State.ONLINE, timeout=5)
                await link.send("after the reset")
                assert await asyncio.wait_for(link.receive(), 5) == "after the reset"
                assert list(hub.sessions) == [sid]  # resumed, over a new TLS connection
                stats = link.statistics()
                assert stats["reconnects"] == 1 and stats["attempts"] >= 2
                assert await finish(link, None) == []
        finally:
            await hub.close()

    run(main)


async def refused(hub: Hub, link: Link) -> str:
    """The link fails at its first dial, does not retry, hands back what it held, and the
    hub never saw a hello; returns the failure's reason."""
    await link.send("held")
    started = now()
    await link.start()
    with pytest.raises(LinkFailed) as failure:
        await link.wait_for(State.ONLINE, timeout=5)
    assert now() - started < HANDSHAKE  # at once: no retry, no handshake timeout
    assert link.state == State.FAILED
    await asyncio.sleep(0.3)
    assert link.statistics()["attempts"] == 1
    assert [u.payload for u in link.undelivered()] == ["held"]
    assert hub.sessions == {}
    assert link.reason == failure.value.reason
    await finish(link, None)
    return link.reason


def test_default_verification_refuses_a_certificate_from_an_unknown_ca(pki: Pki) -> None:
    async def main() -> str:
        hub = await serve(echo, HOST, ssl=pki.server_context(HOST))
        try:
            return await refused(hub, wss_link(hub.port, ssl_context=None))
        finally:
            await hub.close()

    reason = run(main)
    assert "certificate verification failed" in reason, reason
    assert "issuer" in reason, reason  # the CA is unknown, and the reason says so


def test_a_certificate_for_another_name_is_refused(pki: Pki) -> None:
    async def main() -> str:
        hub = await serve(echo, HOST, ssl=pki.server_context("wrong.example.org"))
        try:
            return await refused(hub, wss_link(hub.port, ssl_context=pki.client_context()))
        finally:
            await hub.close()

    reason = run(main)
    assert "certificate verification failed" in reason, reason
    assert "mismatch" in reason and HOST in reason, reason


def test_an_expired_certificate_is_refused(pki: Pki) -> None:
    async def main() -> str:
        hub = await serve(echo, HOST, ssl=pki.server_context(HOST, expired=True))
        try:
            return await refused(hub, wss_link(hub.port, ssl_context=pki.client_context()))
        finally:
            await hub.close()

    reason = run(main)
    assert "certificate verification failed" in reason, reason
    assert "expired" in reason, reason
