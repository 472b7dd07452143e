"""Bad command lines: ``python -m infvideo …`` exits nonzero with a message naming the option.

Through ``infvideo.cli.main(argv)``: argparse's refusals are SystemExit(2) with the message on
stderr; an exception that escapes ``main`` makes ``python -m infvideo`` exit with status 1 and
print it, so it counts as a clear refusal when its message names the option.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from infvideo.cli import main


def _case(argv, names):
    """One bad command line and the words of which its message must name one."""
    return pytest.param(argv, names, id=" ".join(argv) or "no-command")

CASES = [  # argv, words of which the message must name one
    _case(["frobnicate"], ["frobnicate", "invalid choice"]),
    _case([], ["command"]),
    _case(["info", "--bogus"], ["--bogus"]),
    _case(["demo", "--frames"], ["--frames"]),
    _case(["demo", "--frames", "abc"], ["--frames"]),
    _case(["demo", "--alpha", "half"], ["--alpha"]),
    _case(["demo", "--frames", "8", "--num-basis", "0"], ["--num-basis", "num_basis"]),
    _case(["demo", "--frames", "8", "--past-samples", "0"], ["--past-samples", "past_samples"]),
    _case(["demo", "--frames", "8", "--alpha", "2"], ["--alpha", "alpha"]),
    _case(["demo", "--frames", "8", "--device", "bogus"], ["--device", "device"]),
    _case(["demo", "--frames", "0"], ["--frames"]),
    _case(["demo", "--frames", "-3"], ["--frames"]),
    _case(["demo", "--frames", "8", "--chunk", "0"], ["--chunk"]),
    _case(["demo", "--frames", "8", "--streams", "0"], ["--streams"]),
]


@pytest.mark.parametrize("argv,names", CASES)
def test_bad_command_line(argv, names, capsys, tmp_path):
    if argv and argv[0] == "demo":
        argv = [*argv, "--png", str(tmp_path / "demo.png")]
    try:
        main(argv)
    except SystemExit as exit_:
        assert exit_.code not in (0, None), f"{argv}: exit status {exit_.code}"
        message = capsys.readouterr().err + (exit_.code if isinstance(exit_.code, str) else "")
    except Exception as err:  # noqa: BLE001 - `python -m infvideo` exits with 1 and prints it
        message = f"{type(err).__name__}: {err}"
    else:
        pytest.fail(f"{argv} was accepted")
    assert any(name in message for name in names), f"{argv}: the message names none of {names}: {message!r}"
    assert not (tmp_path / "demo.png").exists()


def test_unknown_subcommand_exit_status():
    done = subprocess.run([sys.executable, "-m", "infvideo", "frobnicate"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "frobnicate" in done.stderr and "invalid choice" in done.stderr
