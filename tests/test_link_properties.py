"""The property-test kit run on our own lifecycles: the default one and AUTHENTICATING."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from adapters.link import ActionHandler, Link
from adapters.testing import LinkUnderFaults
from fsm.actions import Action
from fsm.events import Event
from fsm.examples.authenticating import AUTH_SPEC, Authenticate, Authenticated


async def authenticate(link: Link, action: Action) -> Event:
    await link.send("auth")
    return Authenticated()


class AuthenticatingUnderFaults(LinkUnderFaults):
    spec = AUTH_SPEC
    on_action: ClassVar[Mapping[type[Action], ActionHandler]] = {Authenticate: authenticate}


TestDefaultLifecycleUnderFaults = LinkUnderFaults.TestCase
TestAuthenticatingUnderFaults = AuthenticatingUnderFaults.TestCase


class SessionLinkUnderFaults(LinkUnderFaults):
    session = True


class SessionAuthenticatingUnderFaults(AuthenticatingUnderFaults):
    session = True


TestSessionLifecycleUnderFaults = SessionLinkUnderFaults.TestCase
TestSessionAuthenticatingUnderFaults = SessionAuthenticatingUnderFaults.TestCase
