"""The command line: `demo` streams a short video and writes its PNG; `info` reports versions."""
from __future__ import annotations

import sys

import pytest

pytest.importorskip("transformers")

from infvideo.cli import main  # noqa: E402


def test_demo_writes_png_and_exits_cleanly(tmp_path, capsys):
    pytest.importorskip("matplotlib")  # the optional plot extra draws the PNG (the next test covers its absence)
    png = tmp_path / "demo.png"
    main(["demo", "--frames", "96", "--chunk", "32", "--num-basis", "16", "--past-samples", "32",
          "--png", str(png)])
    out = capsys.readouterr().out
    assert "frames/s" in out and "peak memory" in out
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and b"IHDR" in data[:32] and data.endswith(b"IEND\xaeB`\x82")


def test_demo_without_matplotlib_says_the_picture_was_skipped(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    png = tmp_path / "demo.png"
    main(["demo", "--frames", "64", "--chunk", "32", "--num-basis", "16", "--past-samples", "32", "--quiet",
          "--png", str(png)])
    captured = capsys.readouterr()
    assert "frames/s" in captured.out and not png.exists()
    assert "matplotlib is not installed" in captured.err and "plot" in captured.err


def test_info_lists_backends(capsys):
    main(["info"])
    out = capsys.readouterr().out
    assert "torch" in out and "backends:" in out


def test_unknown_command_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["nonsense"])
    assert exit_info.value.code != 0
    assert "invalid choice" in capsys.readouterr().err
