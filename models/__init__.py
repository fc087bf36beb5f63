"""The formal model of tether, checked with the spin model checker.

* :mod:`models.meanings`: the abstract meaning of every condition, callback and event a
  lifecycle table may use, written once.
* :mod:`models.generate`: a :class:`fsm.spec.Spec` to Promela, one guarded step per table
  row (``python -m models.generate`` rewrites the checked-in ``.pml`` files).
* ``env.pml``: the hand-written environment (transport, server, clock, user) and the
  lifecycle properties; ``session.pml``: the session protocol of ``PROTOCOL.md``.
* :mod:`models.verify`: runs spin, gcc and pan; ``make verify`` and ``tether verify``.
* :mod:`models.replay`: replays traces recorded from the Python core against the model.

``models/README.md`` says what is modelled, what is abstracted, and how to read a result.
"""
