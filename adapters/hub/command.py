"""``tether hub``: the reference hub as a command, and its bearer-token file.

``--token-file PATH`` makes the hub authenticate every connection: each line of the file
is ``PRINCIPAL TOKEN`` (separated by spaces or a tab; ``#`` starts a comment; blank lines
are ignored). ``PRINCIPAL`` names who holds the token (1-64 characters of letters,
digits and ``._@-``): sessions belong to it and its quotas count for it. ``TOKEN`` is
the secret the client sends as ``Authorization: Bearer TOKEN`` (16 characters at least;
``python -c "import secrets; print(secrets.token_urlsafe(32))"`` makes a good one); a
principal may have several. The file is read once at start. A missing or wrong token is
refused with HTTP 401. Tokens are kept only as SHA-256 digests, compared in constant
time with every digest (no early exit), and never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapters.hub.guard import HandshakeRequest
from adapters.hub.server import Hub, serve
from adapters.hub.session import Session
from adapters.stores import MemoryStore, SessionStore, SQLiteStore, StoreBusy

__all__ = ["MIN_TOKEN", "TokenFile", "main", "run_command"]

logger = logging.getLogger("tether.hub")

#: Shortest token accepted in a token file: below this it is a password, not a secret.
MIN_TOKEN = 16
_PRINCIPAL = re.compile(r"[A-Za-z0-9._@-]{1,64}")


class TokenFile:
    """Bearer tokens from a file (format in the module docstring); an ``authenticate``
    for :func:`serve`. Its ``repr`` names the file and the principals, never a token."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as error:
            raise ValueError(f"token file {self.path}: cannot read it: "
                             f"{error.strerror or error}") from None
        self._digests: list[tuple[bytes, str]] = []
        seen: set[bytes] = set()
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            where = f"token file {self.path}, line {number}"
            if len(parts) != 2:
                raise ValueError(f"{where}: expected 'PRINCIPAL TOKEN', got {len(parts)} "
                                 f"fields")
            principal, token = parts
            if not _PRINCIPAL.fullmatch(principal):
                raise ValueError(f"{where}: principal must be 1-64 characters of letters, "
                                 f"digits and ._@-")
            if len(token) < MIN_TOKEN:
                raise ValueError(f"{where}: the token of {principal} is shorter than "
                                 f"{MIN_TOKEN} characters")
            digest = hashlib.sha256(token.encode("utf-8")).digest()
            if digest in seen:
                raise ValueError(f"{where}: this token is already given to a principal")
            seen.add(digest)
            self._digests.append((digest, principal))
        if not self._digests:
            raise ValueError(f"token file {self.path}: no tokens (lines 'PRINCIPAL TOKEN')")

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r}, principals={sorted(self.principals)!r})"

    @property
    def principals(self) -> set[str]:
        return {principal for _, principal in self._digests}

    def __call__(self, request: HandshakeRequest) -> str | None:
        token = request.bearer()
        if token is None:
            return None
        presented = hashlib.sha256(token.encode("utf-8")).digest()
        found: str | None = None
        for digest, principal in self._digests:  # every one: no early exit
            if hmac.compare_digest(digest, presented):
                found = principal
        return found


def _echo(session: Session, data: Any) -> None:
    session.send(data)


def _discard(session: Session, data: Any) -> None:
    logger.debug("= %s: message delivered (not echoed)", session.id)


async def _open_store(args: argparse.Namespace) -> SessionStore:
    redis_url = getattr(args, "redis", None)
    if redis_url:
        try:
            from adapters.stores.redis import RedisStore  # noqa: PLC0415 (an extra)
        except ImportError as error:
            raise ValueError(str(error)) from None
        try:
            return await RedisStore.connect(redis_url,
                                            prefix=getattr(args, "redis_prefix", "tether"))
        except StoreBusy as error:
            raise ValueError(f"--redis: {error}") from None
    return SQLiteStore(args.store) if args.store else MemoryStore()


async def _run(args: argparse.Namespace, tokens: TokenFile | None) -> None:
    store = await _open_store(args)
    if getattr(store, "shared", False):
        logger.warning("= node %s of the cluster on %r, epoch %s",
                       getattr(store, "node", "?"), store, store.epoch)
    try:
        hub: Hub = await serve(_echo if args.echo else _discard, args.host, args.port,
                               store=store, expire_after=args.expire_after,
                               authenticate=tokens)
        async with hub:
            sys.stdout.write(f"listening {hub.port}\n")
            sys.stdout.flush()
            await asyncio.Future()  # until interrupted
    finally:
        await store.aclose()


def run_command(args: argparse.Namespace) -> int:
    """``tether hub``: run until interrupted; print ``listening PORT`` (flushed) once
    ready. ``args``: ``host``, ``port``, ``store`` or ``redis`` (with ``redis_prefix``),
    ``echo``, ``expire_after``, ``token_file``, ``log_level`` (see ``adapters/cli.py``)."""
    logging.basicConfig(level=args.log_level.upper(),
                        format="hub %(name)s %(levelname)s %(message)s")
    tokens: TokenFile | None = None
    if getattr(args, "token_file", None):
        try:
            tokens = TokenFile(args.token_file)
        except ValueError as error:
            print(f"tether hub: {error}", file=sys.stderr)
            return 2
        logger.info("= %d principals from %s", len(tokens.principals), tokens.path)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_run(args, tokens))
    except (ValueError, TypeError, OSError) as error:  # an argument, a busy port
        print(f"tether hub: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m adapters.hub ...`` is ``tether hub ...`` (the options live in the CLI)."""
    from adapters.cli import main as cli_main  # noqa: PLC0415 (the CLI imports us lazily)

    return cli_main(["hub", *(sys.argv[1:] if argv is None else argv)])
