"""Closed standard streams (`>&-`, `2>&-`, `<&-`) in real processes: one line and a code, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_video import ffmpeg


def _run(args: list[str], close: int, stdin: Path | None = None, stdout: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """`python -m upscaler ARGS` with file descriptor `close` closed in the child (the shell's `N>&-`)."""
    def closing() -> None:
        os.close(close)

    with open(stdin or os.devnull, "rb") as given, open(stdout or os.devnull, "wb") as taken:
        return subprocess.run([sys.executable, "-m", "upscaler", *args], stdin=given, stdout=taken,
                              stderr=subprocess.PIPE if close != 2 else subprocess.DEVNULL,
                              preexec_fn=closing, check=False, timeout=120)


@pytest.mark.parametrize("args", [["models"], ["--help"]])
def test_a_closed_stdout_is_one_line_and_exit_1(args: list[str], tmp_path: Path) -> None:
    done = _run(args, close=1)
    assert done.returncode == 1
    assert done.stderr.decode().strip() == "error: standard output is closed: nothing could be written there"


def test_a_closed_stdin_reads_as_empty(tmp_path: Path) -> None:
    done = _run(["image", "-", "-o", str(tmp_path / "o.png")], close=0)
    assert done.returncode == 1 and done.stderr.decode().strip() == "error: standard input: empty input"
    assert not (tmp_path / "o.png").exists()


def test_a_closed_stderr_loses_the_messages_not_the_frames(tmp_path: Path, tiny_model: Path) -> None:
    clip = tmp_path / "in.y4m"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=32x24:rate=5", "-frames:v", "3", "-pix_fmt", "yuv420p", clip)
    out = tmp_path / "out.y4m"
    done = _run(["pipe", "-m", str(tiny_model), "--device", "cpu"], close=2, stdin=clip, stdout=out)
    assert done.returncode == 0
    assert out.read_bytes().count(b"FRAME\n") == 3 and out.read_bytes().startswith(b"YUV4MPEG2 W128 H96")
