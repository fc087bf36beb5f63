"""The property-test kit run on our own lifecycles: the default one and AUTHENTICATING."""

from __future__ import annotations

from fsm.actions import Action
from fsm.events import Event
from fsm.examples.authenticating import AUTH_SPEC, Authenticate, Authenticated

from adapters.link import Link
from adapters.testing import LinkUnderFaults


async def authenticate(link: Link, action: Action) -> Event:
    await link.send("auth")
    return Authenticated()


class AuthenticatingUnderFaults(LinkUnderFaults):
    spec = AUTH_SPEC
    on_action = {Authenticate: authenticate}


TestDefaultLifecycleUnderFaults = LinkUnderFaults.TestCase
TestAuthenticatingUnderFaults = AuthenticatingUnderFaults.TestCase
