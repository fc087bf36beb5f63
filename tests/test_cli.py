"""The ``tether`` command line: subcommands with their own parsers get their options."""

from __future__ import annotations

import pytest

from adapters.cli import main


@pytest.mark.parametrize(("command", "option"), [("proxy", "--upstream"), ("demo", "usage"),
                                                 ("demo", "agentscope"),
                                                 ("verify", "--no-seeded")])
def test_delegated_subcommands_receive_their_options(
        command: str, option: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert option in capsys.readouterr().out
