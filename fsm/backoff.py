"""Backoff policy: calm, jittered retry delays and an optional retry budget.

``delay(attempt, u)`` is pure: ``u`` is a uniform draw in ``[0, 1)`` that the caller
takes from a random source it injects, so tests replay exactly. Full jitter is applied
*after* the cap (``u * min(cap, initial * factor**attempt)``), so delays stay within
``[0, cap]`` and a thousand clients never retry in lockstep at the cap (Engine.IO's JS
client does exactly that; AWS' "Exponential Backoff and Jitter" measures why full
jitter wins).

The attempt counter resets only after the link stayed ONLINE for ``grace`` s. A server
that accepts and then drops every connection therefore keeps the delays growing instead
of drawing an immediate retry each time (websockets resets on every handshake: 2,407
reconnects in 3.5 s, see ANCHORS.md).

A server's ``Retry-After`` hint is honoured: the delay is the hint (capped by
``max_retry_after``, so a confused server cannot park the link for a day) *plus* the
attempt's usual jittered delay. A hint alone would bring every refused client back at
the same instant: a busy hub that answered 150 clients ``retry_after: 1`` saw them return
in waves exactly 1.1 s apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from fsm.checks import count, seconds

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """``Backoff(initial=0.1, factor=2.0, cap=10.0, grace=5.0, budget=None)``.

    Defaults and why: ``initial`` 0.1 s retries a blip almost at once; ``factor`` 2 is the
    usual doubling; ``cap`` 10 s keeps a restarted studio's agents back within seconds of
    it (liveness bound: cap + handshake timeout) while bounding the load of retrying
    clients to one attempt per 5 s on average each; ``grace`` 5 s of health before the
    counter resets stops accept-then-drop storms; ``budget`` None retries forever, since
    the studio coming back is the normal case (set a number of consecutive failed
    attempts to end in FAILED instead); ``max_retry_after`` 300 s.
    """

    initial: float = 0.1
    factor: float = 2.0
    cap: float = 10.0
    grace: float = 5.0
    budget: int | None = None
    max_retry_after: float = 300.0

    def __post_init__(self) -> None:
        seconds("Backoff.initial", self.initial)
        seconds("Backoff.cap", self.cap)
        seconds("Backoff.grace", self.grace, allow_zero=True)
        seconds("Backoff.max_retry_after", self.max_retry_after, allow_zero=True)
        factor: object = self.factor
        if isinstance(factor, bool) or not isinstance(factor, int | float) \
                or not 1 <= factor < float("inf"):
            raise ValueError(f"Backoff.factor must be a finite number >= 1, got "
                             f"{self.factor!r}")
        if not self.cap >= self.initial:
            raise ValueError(
                f"Backoff.cap ({self.cap!r}) must be >= Backoff.initial ({self.initial!r})"
            )
        if self.budget is not None:
            count("Backoff.budget", self.budget, what="failed attempts; None retries forever")

    def ceiling(self, attempt: int) -> float:
        """The largest delay before retry number ``attempt`` (0-based), before jitter."""
        # Computed without overflow: once initial * factor**n passes cap, it stays there.
        ceiling = self.initial
        for _ in range(attempt):
            ceiling *= self.factor
            if ceiling >= self.cap:
                return self.cap
        return min(ceiling, self.cap)

    def delay(self, attempt: int, u: float, retry_after: float | None = None) -> float:
        """Delay before retry ``attempt`` given a uniform draw ``u`` in ``[0, 1)``."""
        if not 0.0 <= u < 1.0:
            raise ValueError(f"Backoff.delay needs a uniform draw in [0, 1), got {u!r}")
        jittered = u * self.ceiling(attempt)
        if retry_after is not None and retry_after > 0:
            return min(retry_after, self.max_retry_after) + jittered
        return jittered

    def exhausted(self, failures: int) -> bool:
        """True once ``failures`` consecutive failed attempts used up the budget."""
        return self.budget is not None and failures >= self.budget
