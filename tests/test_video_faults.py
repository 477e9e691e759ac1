"""`upscale video` faults on tiny real clips: a source cut short or corrupt, an OUT that cannot be written,
a size the encoder cannot take, two runs on one OUT.

Each test asserts the exit code, the one `error:` line and the state of OUT and its work folder. The
clips are 48x32 FFmpeg test patterns of a few dozen frames, without B-frames where a test cuts the
file at a packet (decode order is then display order); the model is the tiny random one, on the CPU.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import av
import imageio_ffmpeg
import pytest
from typer.testing import CliRunner

from upscaler.cli import app

from .conftest import upscale_command

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
PATTERN = ["-f", "lavfi", "-i", "testsrc2=size=48x32:rate=25"]
X264 = ["-c:v", "libx264", "-g", "5", "-bf", "0", "-pix_fmt", "yuv420p"]


@dataclass
class Run:
    code: int
    err: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error:")]


def ffmpeg(*args: str | Path) -> None:
    subprocess.run([FFMPEG, "-y", "-loglevel", "error", *map(str, args)], check=True)


def upscale(*args: str | Path, unprivileged: bool = False) -> Run:
    """The real command in a process of its own."""
    result = subprocess.run(upscale_command(args, unprivileged), capture_output=True, text=True, timeout=120, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    return Run(result.returncode, result.stderr)


def in_process(*args: str | Path) -> Run:
    """The same command in this process: for more variants of a check a subprocess already made."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return Run(result.exit_code, result.output)


def video(source: Path, out: Path, model: Path, *extra: str | Path, unprivileged: bool = False) -> Run:
    return upscale("video", source, "-o", out, "--device", "cpu", "-m", model, *extra, unprivileged=unprivileged)


def video_in_process(source: Path, out: Path, model: Path, *extra: str | Path) -> Run:
    return in_process("video", source, "-o", out, "--device", "cpu", "-m", model, *extra)


def frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def work_folder(out: Path) -> Path:
    return out.with_name(f".upscale-work-{out.name}")


def packet_positions(path: Path) -> list[tuple[int, int]]:
    """(byte offset, size) of every video packet, in file order."""
    with av.open(str(path)) as container:
        return sorted((p.pos, p.size) for p in container.demux(video=0) if p.size)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of sources: 50 frames (2 s) each, a keyframe every 5; mkv with AAC audio too."""
    folder = tmp_path_factory.mktemp("clips")
    ffmpeg(*PATTERN, "-frames:v", "50", *X264, "-movflags", "+faststart", folder / "faststart.mp4")
    ffmpeg(*PATTERN, "-f", "lavfi", "-i", "sine=sample_rate=8000", "-t", "2", *X264, "-c:a", "aac", folder / "audio.mkv")
    ffmpeg(*PATTERN, "-frames:v", "4", "-vf", "scale=47:33", "-c:v", "ffv1", "-pix_fmt", "yuv420p", folder / "odd.mkv")
    return folder


# -- 1. a source that ends early ------------------------------------------------------------------


def test_a_faststart_mp4_cut_between_packets_fails_naming_its_end_and_the_declared_length(
        clips: Path, tmp_path: Path, tiny_model: Path) -> None:
    """The moov (at the front) declares 50 frames; the data stops after 24: FFmpeg reads it without a word."""
    whole = (clips / "faststart.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole[:packet_positions(clips / "faststart.mp4")[24][0]])
    out = tmp_path / "out.mkv"
    run = video(cut, out, tiny_model)
    assert run.code == 1, run.err
    assert run.errors == [(f"error: {cut}: ends after frame 24 (0.96 s) but its container declares 2.00 s (50 frames): "
                          "cut short, or a header that overstates its length")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.mp4"], "found before any work: nothing is written"
    assert "frames written" not in run.err


def test_an_mkv_cut_mid_cluster_or_one_that_overstates_its_length_fails_the_same_way(
        clips: Path, tmp_path: Path, tiny_model: Path) -> None:
    whole = (clips / "audio.mkv").read_bytes()
    cut, lying = tmp_path / "cut.mkv", tmp_path / "lying.mkv"
    cut.write_bytes(whole[:len(whole) // 2])
    assert whole.count(b"00:00:02.000000000") == 1  # the video's DURATION tag (the audio's counts its priming)
    lying.write_bytes(whole.replace(b"00:00:02.000000000", b"00:00:09.000000000"))
    for source, declared in ((cut, "2.00 s"), (lying, "9.00 s")):
        assert_refused_as_cut(source, declared, tmp_path / f"{source.stem}-out.mkv", tiny_model)


def assert_refused_as_cut(source: Path, declared: str, out: Path, model: Path) -> None:
    """One line naming where the video ends and what its container declares, exit 1, nothing written."""
    run = video_in_process(source, out, model)
    assert run.code == 1, run.err
    assert len(run.errors) == 1, run.err
    assert re.fullmatch(rf"error: {re.escape(str(source))}: ends after frame \d+ \(\d\.\d\d s\) but its container "
                        rf"declares {re.escape(declared)}: cut short, or a header that overstates its length", run.errors[0])
    assert not out.exists() and not work_folder(out).exists()


@pytest.mark.parametrize(("suffix", "codec", "declared"), [("avi", "mpeg4", "2.00 s (50 frames)"), ("mxf", "mpeg2video", "2.00 s")])
def test_an_avi_or_mxf_cut_in_half_fails_and_the_whole_file_does_not(suffix: str, codec: str, declared: str,
                                                                       tmp_path: Path, tiny_model: Path) -> None:
    """AVI states a frame count (FFmpeg recomputes the duration from what it finds), MXF a track duration."""
    whole, cut = tmp_path / f"whole.{suffix}", tmp_path / f"cut.{suffix}"
    ffmpeg(*PATTERN, "-frames:v", "50", "-c:v", codec, "-pix_fmt", "yuv420p", whole)
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert video_in_process(whole, tmp_path / "whole.mkv", tiny_model).code == 0
    assert_refused_as_cut(cut, declared, tmp_path / "cut.mkv", tiny_model)


def test_an_edit_list_that_ends_before_the_last_samples_is_not_a_cut(clips: Path, tmp_path: Path, tiny_model: Path) -> None:
    """The sample table holds 50 frames; the edit list shows the first second: 25 frames, a complete file."""
    data = bytearray((clips / "faststart.mp4").read_bytes())
    at = data.index(b"elst") + 12  # version/flags, entry count, then the first entry's duration (mvhd units)
    data[at:at + 4] = (int.from_bytes(data[at:at + 4], "big") // 2).to_bytes(4, "big")
    trimmed = tmp_path / "trimmed.mp4"
    trimmed.write_bytes(data)
    out = tmp_path / "out.mkv"
    run = video_in_process(trimmed, out, tiny_model)
    assert run.code == 0, run.err
    assert frame_count(out) == frame_count(trimmed) == 25


def test_a_corrupt_packet_mid_stream_fails_naming_the_frame_and_keeps_the_complete_segments(
        clips: Path, tmp_path: Path, tiny_model: Path) -> None:
    data = bytearray((clips / "faststart.mp4").read_bytes())
    position, size = packet_positions(clips / "faststart.mp4")[30]
    data[position:position + size] = bytes(size)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(data)
    out = tmp_path / "out.mkv"
    command = (broken, out, tiny_model, "--segment-seconds", "0.2")
    run = video(*command)
    assert run.code == 1, run.err
    assert len(run.errors) == 1, run.err
    match = re.fullmatch(rf"error: {re.escape(str(broken))}: decoding stopped after frame (\d+) \((\d\.\d\d) s\) of the "
                         r"2\.00 s \(50 frames\) its container declares \(Invalid data found when processing input\)",
                         run.errors[0])
    assert match, run.errors[0]
    frame, seconds = int(match[1]), float(match[2])
    assert 20 <= frame <= 30 and seconds == pytest.approx(frame / 25)
    # OUT is not written; the segments before the damage stay for a rerun of the same source, which
    # resumes from them and stops at the same frame.
    work = work_folder(out)
    assert not out.exists()
    done = sorted(p.name for p in work.glob("segment-*.packets"))
    assert 2 <= len(done) < 10 and not list(work.glob(".upscale-*"))
    again = video_in_process(*command)
    assert again.code == 1 and again.errors == run.errors
    assert f"resuming: {len(done)} segment(s)" in again.err


# -- 2. an OUT that cannot be written -------------------------------------------------------------


def test_an_out_that_is_a_folder_is_refused_before_any_work(clips: Path, tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "x.mkv"
    out.mkdir()
    run = video(clips / "audio.mkv", out, tiny_model)
    assert run.code == 2, run.err
    assert run.errors == [f"error: {out}: is a folder; -o names the video file to write"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.mkv"] and not list(out.iterdir())
    assert "frames written" not in run.err


def test_an_out_that_is_a_link_or_whose_work_folder_is_in_the_way_is_refused(clips: Path, tmp_path: Path,
                                                                                tiny_model: Path) -> None:
    target = tmp_path / "elsewhere.mkv"
    target.write_bytes(b"keep me")
    link, dangling, blocked = tmp_path / "link.mkv", tmp_path / "dangling.mkv", tmp_path / "blocked.mkv"
    link.symlink_to(target)
    dangling.symlink_to(tmp_path / "nowhere.mkv")
    work_folder(blocked).write_text("a file where the work folder goes")
    before = sorted(p.name for p in tmp_path.iterdir())
    for out, message in ((link, f"{link}: is a symbolic link; it is not replaced (remove it or choose another -o)"),
                         (dangling, f"{dangling}: is a symbolic link; it is not replaced (remove it or choose another -o)"),
                         (blocked, (f"{work_folder(blocked)}: is in the way of {blocked}'s work folder (not a folder); "
                                   "remove it or choose another -o"))):
        run = video_in_process(clips / "audio.mkv", out, tiny_model)
        assert run.code == 2, run.err
        assert run.errors == [f"error: {message}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before and target.read_bytes() == b"keep me"


def test_a_read_only_folder_or_work_folder_is_named_before_any_work(clips: Path, tmp_path: Path, tiny_model: Path) -> None:
    folder, out = tmp_path / "ro", tmp_path / "ro" / "out.mkv"
    other = tmp_path / "other.mkv"  # its work folder, left by an earlier run, is read-only
    for locked, target, message in ((folder, out, f"{out}: cannot write there (Permission denied)"),
                                    (work_folder(other), other, (f"{other}: cannot write its work folder "
                                                                f"{work_folder(other)} (Permission denied)"))):
        locked.mkdir()
        locked.chmod(0o555)
        try:
            run = video(clips / "audio.mkv", target, tiny_model, unprivileged=True)
        finally:
            locked.chmod(0o755)
        assert run.code == 2, run.err
        assert run.errors == [f"error: {message}"]
        assert list(locked.iterdir()) == [] and "frames written" not in run.err
    assert sorted(p.name for p in tmp_path.iterdir()) == [work_folder(other).name, "ro"]


# -- 3. a size the encoder cannot take ------------------------------------------------------------


def test_an_odd_upscaled_size_with_halved_chroma_is_a_usage_error_naming_the_ways_out(
        clips: Path, tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "out.mkv"
    run = video(clips / "odd.mkv", out, tiny_model, "--scale", "3", "--codec", "libx264")
    assert run.code == 2, run.err
    assert run.errors == [("error: the upscaled size 141x99 (47x33 x 3) is odd in width and height, and libx264 encodes "
                          "yuv420p (chroma halved both ways) only in even sizes; use --pix-fmt yuv444p, or a --scale "
                          "that gives even sizes")]
    assert list(tmp_path.iterdir()) == []
    kept = video_in_process(clips / "odd.mkv", out, tiny_model, "--scale", "3", "--codec", "libx264", "--pix-fmt", "yuv444p")
    assert kept.code == 0, kept.err
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.codec_context.pix_fmt) == (141, 99, "yuv444p")


# -- 4. two runs on one OUT -----------------------------------------------------------------------


def test_a_second_run_on_the_same_out_fails_clearly_and_leaves_the_first_alone(tmp_path: Path, tiny_model: Path) -> None:
    """The first run is stopped (SIGSTOP) once it holds its work folder, the second tried, the first resumed."""
    clip = tmp_path / "long.mkv"
    ffmpeg(*PATTERN, "-frames:v", "150", *X264, clip)
    out = tmp_path / "out.mkv"
    work = work_folder(out)
    first = subprocess.Popen(upscale_command(("video", clip, "-o", out, "--device", "cpu", "-m", tiny_model,
                                       "--segment-seconds", "0.2")), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(work.glob("segment-*.packets")) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        first.send_signal(signal.SIGSTOP)
        assert first.poll() is None, "the first run finished before it could be caught"
        second = video_in_process(clip, out, tiny_model, "--segment-seconds", "0.2", "--no-resume")
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=120)
    assert second.code == 1, second.err
    assert second.errors == [(f"error: another `upscale video` run is writing {out} (its work folder {work} is locked); "
                             "wait for it to finish, or choose another -o")]
    assert first.returncode == 0, err
    assert frame_count(out) == 150 and not work.exists()


def test_an_interlaced_source_is_upscaled_with_one_warning_saying_so(tmp_path: Path, tiny_model: Path) -> None:
    """Issue 20 item 10's sibling: a video flagged interlaced was upscaled as progressive without a word."""
    woven, plain = tmp_path / "woven.mkv", tmp_path / "plain.mkv"
    ffmpeg(*PATTERN, "-frames:v", "4", "-vf", "setfield=tff", "-c:v", "libx264", "-flags", "+ildct+ilme", "-pix_fmt",
           "yuv420p", woven)
    ffmpeg(*PATTERN, "-frames:v", "4", *X264, plain)
    run = video_in_process(woven, tmp_path / "a.mkv", tiny_model)
    message = " ".join(run.err.split())
    assert run.code == 0 and message.count("warning:") == 1
    assert f"warning: {woven}: the video is interlaced" in message and "-vf bwdif" in message
    assert frame_count(tmp_path / "a.mkv") == 4
    quiet = video_in_process(plain, tmp_path / "b.mkv", tiny_model)
    assert quiet.code == 0 and "warning:" not in quiet.err
