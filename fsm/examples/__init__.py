"""Worked examples of extending the lifecycle with :meth:`fsm.spec.Spec.derive`.

* :mod:`fsm.examples.authenticating`: an ``authenticating`` state between the handshake
  and ``online`` (``tether diagram fsm.examples.authenticating:AUTH_SPEC`` draws it).
* :mod:`fsm.examples.paused`: a ``paused`` state the user parks a live link in and
  resumes from (``tether verify fsm.examples.paused:PAUSED_SPEC`` model-checks it).

Examples are pure like the rest of :mod:`fsm`: tables, events and actions, no I/O.
"""
