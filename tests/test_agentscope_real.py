"""Through the real AgentScope package: a ``UserAgent`` asks for input via tether while
the stand-in Studio is killed and restarted.

Skipped unless ``TETHER_AGENTSCOPE=1`` and ``agentscope`` (1.x; 1.0.21 is the version
checked) is installed: it is not part of the dev install (it pulls in model SDKs,
OpenTelemetry, numpy...). ``make test-agentscope`` builds a separate virtualenv with it
and runs this module.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

from adapters.agentscope import HOOK_NAME, attach
from tests.studio import SKIP_REASON
from tests.test_agentscope import FAST, HB, RUN, answer, pending_in, run, studio, until

ENABLED = os.environ.get("TETHER_AGENTSCOPE") == "1"
pytestmark = [
    pytest.mark.realsocket,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not ENABLED, reason="the real-AgentScope test runs with "
                       "TETHER_AGENTSCOPE=1 (make test-agentscope installs agentscope==1.0.21 "
                       "in a separate virtualenv)"),
    pytest.mark.skipif(ENABLED and importlib.util.find_spec("agentscope") is None,
                       reason="agentscope is not installed (make test-agentscope)"),
    pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or ""),
]


def test_a_real_user_agent_gets_its_answer_across_a_studio_restart(tmp_path: Path) -> None:
    import agentscope
    from agentscope.agent import AgentBase, UserAgent

    async def main() -> None:
        agentscope.init(project="p", name="n", run_id=RUN)
        stock_method = UserAgent._input_method
        async with studio(tmp_path) as node:
            client = await attach(node.url, heartbeat=HB, backoff=FAST, handshake_timeout=1.0,
                                  http_timeout=1.0, reassert=None)
            try:
                assert UserAgent._input_method is not stock_method
                assert HOOK_NAME in AgentBase._class_pre_print_hooks
                await client.wait_online(5)
                user = UserAgent("alice")
                replying: asyncio.Future[Any] = asyncio.ensure_future(user())
                await until(lambda: _one_request(node))
                request_id = next(iter((await node.state())["inputRequests"]))
                await node.kill()
                await asyncio.sleep(0.5)
                await node.restart()
                await answer(node, request_id, "hello from the UI", posts=2)
                reply = await asyncio.wait_for(replying, 10)
                assert reply.get_text_content() == "hello from the UI"
                # The reply was printed, so the hook posted it: the Studio holds it once.
                await until(lambda: _has(node, reply.id))
                held = (await node.state())["messages"][reply.id]
                assert held["msg"]["content"] == "hello from the UI"
                assert held["replyId"] and held["msg"]["role"] == "user"
            finally:
                await client.close()
        assert UserAgent._input_method is stock_method  # put back
        assert HOOK_NAME not in AgentBase._class_pre_print_hooks

    run(main, timeout=60)


async def _one_request(node: Any) -> bool:
    state = await node.state()
    return len(state["inputRequests"]) == 1 and await pending_in(
        node, next(iter(state["inputRequests"])))


async def _has(node: Any, message_id: str) -> bool:
    return message_id in (await node.state())["messages"]
