"""The error hierarchy and the default classifier of transport failures."""

from __future__ import annotations

import pytest

from fsm.errors import (
    Broken,
    Closed,
    LinkClosedError,
    LocalProtocolError,
    OutboxFull,
    RebuildError,
    Refused,
    RemoteProtocolError,
    RequestTimeout,
    SpecError,
    TetherError,
    TimedOut,
    TransportError,
    classify,
)


def test_tcp_refused_is_retryable() -> None:
    verdict = classify(Refused("connection refused"))
    assert verdict.retry
    assert verdict.retry_after is None
    assert "Refused: connection refused" in verdict.reason


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410])
def test_client_error_statuses_are_fatal(status: int) -> None:
    verdict = classify(Refused("handshake rejected", status=status))
    assert not verdict.retry
    assert str(status) in verdict.reason
    assert "not retryable" in verdict.reason


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_come_back_later_statuses_are_retryable(status: int) -> None:
    assert classify(Refused("busy", status=status)).retry


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_carried(status: int) -> None:
    verdict = classify(Refused("busy", status=status, retry_after=7.0))
    assert verdict.retry
    assert verdict.retry_after == 7.0


def test_fatal_status_drops_retry_after() -> None:
    assert classify(Refused("no", status=401, retry_after=7.0)).retry_after is None


@pytest.mark.parametrize("code", [1008, 4401, 4403])
def test_fatal_close_codes(code: int) -> None:
    verdict = classify(Closed("closed by server", code=code))
    assert not verdict.retry
    assert str(code) in verdict.reason


@pytest.mark.parametrize("code", [None, 1000, 1001, 1006, 1011, 1012, 4000])
def test_other_closes_are_retryable(code: int | None) -> None:
    assert classify(Closed("going away", code=code)).retry


def test_close_carries_retry_after() -> None:
    assert classify(Closed("restart", code=1012, retry_after=3.0)).retry_after == 3.0


@pytest.mark.parametrize(
    "error",
    [Broken("reset"), TimedOut("slow"), RemoteProtocolError("bad frame"),
     TransportError("generic")],
)
def test_network_shaped_errors_are_retryable(error: TransportError) -> None:
    assert classify(error).retry


@pytest.mark.parametrize(
    "error",
    [Broken("x", fatal=True), RemoteProtocolError("version mismatch", fatal=True),
     Refused("x", status=503, fatal=True), Closed("x", code=1001, fatal=True),
     Refused("x", fatal=True)],
)
def test_explicit_fatal_true_overrides(error: TransportError) -> None:
    assert not classify(error).retry


@pytest.mark.parametrize(
    "error",
    [Refused("x", status=401, fatal=False), Closed("x", code=1008, fatal=False),
     Closed("x", code=4403, fatal=False)],
)
def test_explicit_fatal_false_overrides(error: TransportError) -> None:
    assert classify(error).retry


@pytest.mark.parametrize(
    "error", [RuntimeError("hook bug"), KeyError("k"), RebuildError("hook raised"),
              ValueError("v")])
def test_non_transport_errors_are_retryable(error: BaseException) -> None:
    verdict = classify(error)
    assert verdict.retry
    assert type(error).__name__ in verdict.reason


def test_fatal_attribute_default_is_none() -> None:
    assert Broken("x").fatal is None
    assert Broken("x", fatal=True).fatal is True


def test_hierarchy() -> None:
    assert issubclass(LinkClosedError, LocalProtocolError)
    assert issubclass(OutboxFull, LocalProtocolError)
    assert issubclass(LocalProtocolError, TetherError)
    assert issubclass(SpecError, TetherError)
    assert issubclass(RequestTimeout, TimeoutError)
    for cls in (Refused, Closed, Broken, TimedOut, RemoteProtocolError):
        assert issubclass(cls, TransportError)
        assert issubclass(cls, TetherError)


def test_an_explicitly_retryable_error_keeps_its_retry_after() -> None:
    verdict = classify(Refused("busy", retry_after=2.5, fatal=False))
    assert verdict.retry and verdict.retry_after == 2.5
