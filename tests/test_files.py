"""upscaler/io/files.py called directly: discovery, naming, clashes, the stale-temporary sweep, the
completeness check and the atomic write, on real files in tmp_path (fast; the CLI tests cover the wiring).
"""

from __future__ import annotations

import ast
import errno
import io
import os
import re
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from upscaler.io import files
from upscaler.io.files import (
    NAME_MAX,
    AtomicFile,
    Job,
    clashes,
    discover,
    fit_name,
    ignores_case,
    is_complete,
    output_format,
    plan_jobs,
    prepare_folder,
    remove_stale_temporaries,
    same_file,
    target_path,
    write_atomically,
    write_bytes_atomically,
)

TEMPORARY = re.compile(r"\.upscale-(\d+)-(\d+)\.tmp")
DEAD = 2**22 + 12345  # above Linux's largest PID (pid_max is at most 2**22): no process can have it


def _touch(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _encoded(fmt: str, size: tuple[int, int] = (24, 16)) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def _open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def ordered_scandir(monkeypatch: pytest.MonkeyPatch) -> Callable[[set[Path]], None]:
    """os.scandir listing entries in name order (the walk's order is then known), failing for the given folders."""
    real = os.scandir

    def install(unreadable: set[Path]) -> None:
        def scandir(folder: Path) -> Iterator[os.DirEntry[str]]:
            if Path(folder) in unreadable:
                raise PermissionError(errno.EACCES, "Permission denied", str(folder))
            with real(folder) as entries:
                return iter(sorted(entries, key=lambda entry: entry.name))

        monkeypatch.setattr(os, "scandir", scandir)

    return install


# --- discover ---------------------------------------------------------------------------------------


def test_discover_takes_supported_suffixes_in_any_case_and_nothing_else(tmp_path: Path) -> None:
    in_dir = tmp_path / "in"
    wanted = [_touch(in_dir / name) for name in ("a.png", "b.PNG", "c.JpG", "d.jpeg", "e.webp", "f.TIF", "g.tiff", "h.bmp")]
    for name in ("notes.txt", "movie.mp4", "png", "x.png.part", ".upscale-123-0.tmp", f".upscale-{os.getpid()}-7.tmp"):
        _touch(in_dir / name)
    found = discover(in_dir, tmp_path / "out", recursive=False)
    assert found.sources == sorted(wanted)
    assert found.passed_over == []


def test_discover_recurses_only_when_asked_and_never_into_out(tmp_path: Path) -> None:
    in_dir = tmp_path / "in"
    top = _touch(in_dir / "top.png")
    deep = _touch(in_dir / "sub" / "deeper" / "deep.jpg")
    side = _touch(in_dir / "side" / "side.bmp")
    _touch(in_dir / "out" / "done.png")  # OUT inside IN: earlier outputs are never inputs
    out = in_dir / "sub" / ".." / "out"  # spelled another way: compared resolved
    assert discover(in_dir, out, recursive=False).sources == [top]
    assert discover(in_dir, out, recursive=True).sources == sorted([top, deep, side])
    assert discover(in_dir, tmp_path / "elsewhere", recursive=True).sources == sorted([top, deep, side, in_dir / "out" / "done.png"])


def test_discover_sorts_what_it_finds_whatever_the_listing_order(tmp_path: Path, ordered_scandir: Callable[[set[Path]], None]) -> None:
    in_dir = tmp_path / "in"
    images = [_touch(in_dir / folder / "x.png") for folder in ("a", "b", "c")]
    links = []
    for folder in ("a", "b", "c"):
        links.append(in_dir / folder / "gone.png")
        links[-1].symlink_to(tmp_path / "missing.png")
    ordered_scandir(set())  # the walk pops c, then b, then a: unsorted unless sorted
    found = discover(in_dir, tmp_path / "out", recursive=True)
    assert found.sources == images
    assert found.passed_over == [(link, "dangling symbolic link; skipped") for link in links]


def test_discover_reads_linked_files_and_names_links_it_does_not_follow(tmp_path: Path, ordered_scandir: Callable[[set[Path]], None]) -> None:
    in_dir = tmp_path / "in"
    real_image = _touch(tmp_path / "elsewhere" / "photo.png")
    _touch(tmp_path / "elsewhere" / "inner.png")
    in_dir.mkdir()
    (in_dir / "a-dangling.png").symlink_to(tmp_path / "nothing.png")
    (in_dir / "b-folder").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (in_dir / "c-linked.png").symlink_to(real_image)
    last = _touch(in_dir / "d.png")
    ordered_scandir(set())  # links listed first: each is passed over and the walk goes on
    found = discover(in_dir, tmp_path / "out", recursive=True)
    assert found.sources == [in_dir / "c-linked.png", last]
    assert found.passed_over == [(in_dir / "a-dangling.png", "dangling symbolic link; skipped"),
                                 (in_dir / "b-folder", "symbolic link to a folder; not followed")]


def test_discover_does_not_follow_a_link_swapped_to_a_folder_while_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    in_dir = tmp_path / "in"
    _touch(tmp_path / "elsewhere" / "secret.png")
    _touch(tmp_path / "file")
    in_dir.mkdir()
    link = in_dir / "link"
    link.symlink_to(tmp_path / "file")
    real_stat = os.stat
    looks = []

    def swapping_stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        result = real_stat(path, *args, **kwargs)
        if Path(str(path)) == link:
            looks.append(path)
            if len(looks) == 2:  # after discover has seen a file: another process points the link at a folder
                link.unlink()
                link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
        return result

    monkeypatch.setattr(os, "stat", swapping_stat)
    found = discover(in_dir, tmp_path / "out", recursive=True)
    assert len(looks) == 2
    assert found.sources == [] and found.passed_over == []


def test_discover_passes_over_an_unreadable_folder_and_goes_on(tmp_path: Path, ordered_scandir: Callable[[set[Path]], None]) -> None:
    in_dir = tmp_path / "in"
    first = _touch(in_dir / "a" / "one.png")
    _touch(in_dir / "b" / "hidden.png")
    ordered_scandir({in_dir / "b"})  # b is listed after a, so popped before it
    found = discover(in_dir, tmp_path / "out", recursive=True)
    assert found.sources == [first]
    assert found.passed_over == [(in_dir / "b", "unreadable folder (Permission denied); skipped")]


def test_discover_raises_when_in_itself_cannot_be_listed(tmp_path: Path, ordered_scandir: Callable[[set[Path]], None]) -> None:
    in_dir = tmp_path / "in"
    _touch(in_dir / "a.png")
    ordered_scandir({in_dir})
    with pytest.raises(PermissionError):
        discover(in_dir, tmp_path / "out", recursive=True)
    with pytest.raises(FileNotFoundError):
        discover(tmp_path / "missing", tmp_path / "out", recursive=False)


# --- naming -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "requested", "fmt"), [
    ("a.png", "keep", "PNG"), ("a.PNG", "keep", "PNG"), ("a.JpEg", "keep", "JPEG"), ("a.jpg", "keep", "JPEG"),
    ("a.TIF", "keep", "TIFF"), ("a.webp", "keep", "WEBP"), ("a.Bmp", "keep", "BMP"),
    ("a.png", "jpg", "JPEG"), ("a.JPG", "png", "PNG"), ("a.bmp", "tiff", "TIFF"), ("a.tif", "webp", "WEBP"),
])
def test_output_format(name: str, requested: str, fmt: str) -> None:
    assert output_format(Path(name), requested) == fmt


def test_fit_name_keeps_names_that_fit_and_cuts_the_stem_to_the_byte() -> None:
    assert fit_name("photo", ".png") == "photo.png"
    assert fit_name("", ".png") == ".png"
    exact = "x" * (NAME_MAX - 4)
    assert fit_name(exact, ".png") == exact + ".png"  # 255 bytes: fits as it is
    assert fit_name(exact + "yz", ".png") == exact + ".png"
    assert fit_name("x" * 300, ".webp") == "x" * (NAME_MAX - 5) + ".webp"
    assert fit_name("é" * 200, ".webp") == "é" * 125 + ".webp"  # 250 bytes for the stem: 125 two-byte letters
    assert fit_name("é" * 126 + "a", ".png") == "é" * 125 + ".png"  # 254 bytes: a letter is never split
    assert NAME_MAX == 255


@settings(max_examples=200, deadline=None)
@given(stem=st.text(max_size=300), suffix=st.sampled_from([".png", ".jpg", ".webp", ".tif", ".bmp"]))
def test_fit_name_is_the_longest_prefix_that_fits(stem: str, suffix: str) -> None:
    name = fit_name(stem, suffix)
    kept = name.removesuffix(suffix)
    size = len(os.fsencode(name))
    assert name.endswith(suffix) and stem.startswith(kept) and size <= NAME_MAX
    if kept != stem:  # cut: one more letter would not have fitted
        assert len(os.fsencode(stem[:len(kept) + 1] + suffix)) > NAME_MAX


def test_target_path_keeps_the_relative_path_and_changes_the_suffix_only_with_the_format(tmp_path: Path) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    assert target_path(in_dir / "a" / "b.PNG", in_dir, out, "PNG") == out / "a" / "b.PNG"
    assert target_path(in_dir / "b.jpeg", in_dir, out, "JPEG") == out / "b.jpeg"
    assert target_path(in_dir / "b.jpeg", in_dir, out, "PNG") == out / "b.png"
    assert target_path(in_dir / "x" / "b.tiff", in_dir, out, "WEBP") == out / "x" / "b.webp"
    assert target_path(in_dir / "b.png", in_dir, out, "TIFF") == out / "b.tif"
    long = "n" * (NAME_MAX - 4) + ".png"
    assert target_path(in_dir / long, in_dir, out, "WEBP") == out / ("n" * (NAME_MAX - 5) + ".webp")
    with pytest.raises(ValueError):
        target_path(tmp_path / "other" / "b.png", in_dir, out, "PNG")


def test_plan_jobs_pairs_each_source_with_its_target_format_and_root(tmp_path: Path) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    sources = [in_dir / "a.PNG", in_dir / "sub" / "b.jpg"]
    assert plan_jobs(sources, in_dir, out, "keep") == [Job(sources[0], out / "a.PNG", "PNG", out),
                                                       Job(sources[1], out / "sub" / "b.jpg", "JPEG", out)]
    assert plan_jobs(sources, in_dir, out, "webp") == [Job(sources[0], out / "a.webp", "WEBP", out),
                                                       Job(sources[1], out / "sub" / "b.webp", "WEBP", out)]
    assert plan_jobs([], in_dir, out, "png") == []


# --- clashes and same_file ----------------------------------------------------------------------------


def _shared(sources: list[Path], target: Path) -> str:
    names = " and ".join(map(str, sources))
    return f"{names} would all be written to {target}; rename one or choose another --format"


def test_clashes_names_inputs_that_share_an_output(tmp_path: Path) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    sources = [in_dir / "a.jpg", in_dir / "a.png", in_dir / "a.tif", in_dir / "b.png", in_dir / "c.jpg"]
    jobs = plan_jobs(sources, in_dir, out, "png")
    assert clashes(jobs) == [_shared(sources[:3], out / "a.png")]
    pair = plan_jobs(sources[3:], in_dir, out, "jpg")
    assert clashes(pair) == []
    two = plan_jobs([in_dir / "b.png", in_dir / "b.bmp"], in_dir, out, "png")
    assert clashes(two) == [_shared([in_dir / "b.png", in_dir / "b.bmp"], out / "b.png")]
    assert clashes(plan_jobs(sources, in_dir, out, "keep")) == []


def test_clashes_refuses_an_output_that_is_an_input(tmp_path: Path) -> None:
    in_dir = tmp_path / "in"
    sources = [_touch(in_dir / "a.png"), _touch(in_dir / "a.jpg")]
    jobs = plan_jobs(sources, in_dir, in_dir / "sub" / "..", "png")  # OUT is IN, spelled another way
    assert clashes(jobs) == [
        _shared(sources, in_dir / "sub" / ".." / "a.png"),
        f"{in_dir / 'sub' / '..' / 'a.png'} would replace the input {in_dir / 'a.png'}; choose another -o",
    ]
    alone = plan_jobs(sources[:1], in_dir, in_dir, "keep")
    assert clashes(alone) == [f"{in_dir / 'a.png'} would replace the input {in_dir / 'a.png'}; choose another -o"]


def test_on_a_case_insensitive_filesystem_names_differing_in_case_clash(tmp_path: Path) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    sources = [in_dir / "Photo.png", in_dir / "photo.png", in_dir / "photo.JPG"]
    jobs = plan_jobs(sources, in_dir, out, "keep")
    assert clashes(jobs) == []
    assert clashes(jobs, fold_case=True) == [_shared(sources[:2], out / "Photo.png")]
    into_input = [Job(in_dir / "Photo.png", out / "Photo.png", "PNG", out), Job(in_dir / "photo.jpg", in_dir / "photo.png", "PNG")]
    assert clashes(into_input) == []
    assert clashes(into_input, fold_case=True) == [
        f"{in_dir / 'photo.png'} would replace the input {in_dir / 'Photo.png'}; choose another -o"]


def test_ignores_case_probes_the_real_filesystem_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "out").mkdir()
    assert ignores_case(tmp_path / "out") is False  # Linux filesystems tell case apart
    assert ignores_case(tmp_path / "not" / "yet" / "made") is False  # probed in the nearest folder that exists
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and not list((tmp_path / "out").iterdir())
    monkeypatch.setattr(files, "_temp_name", lambda: ".upscale-probe.tmp")
    (tmp_path / "out" / ".UPSCALE-PROBE.TMP").symlink_to("elsewhere")  # as a case-insensitive folder would answer
    assert ignores_case(tmp_path / "out") is True
    assert ignores_case(tmp_path / "out" / "not" / "yet") is True  # asked of the nearest folder that exists
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".UPSCALE-PROBE.TMP"]
    (tmp_path / "out" / ".upscale-probe.tmp").write_bytes(b"someone else's")  # never opened, never removed
    assert ignores_case(tmp_path / "out") is False
    assert (tmp_path / "out" / ".upscale-probe.tmp").read_bytes() == b"someone else's"
    assert ignores_case(Path("/proc/1")) is False  # nothing can be made there: taken as case-sensitive


def test_clashes_sees_through_links(tmp_path: Path) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    (out / "real").mkdir(parents=True)
    (out / "alias").symlink_to(out / "real", target_is_directory=True)
    jobs = [Job(in_dir / "x.png", out / "real" / "x.png", "PNG", out), Job(in_dir / "y.png", out / "alias" / "x.png", "PNG", out)]
    assert clashes(jobs) == [_shared([in_dir / "x.png", in_dir / "y.png"], out / "real" / "x.png")]


def test_same_file(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "link").symlink_to(folder, target_is_directory=True)
    assert same_file(folder, tmp_path / "link")
    assert same_file(folder, tmp_path / "folder" / ".." / "folder")
    assert not same_file(folder, tmp_path)
    assert not same_file(folder, tmp_path / "missing")
    assert not same_file(tmp_path / "missing", tmp_path / "missing")


# --- prepare_folder and the stale-temporary sweep -------------------------------------------------------


@pytest.fixture
def live_run() -> Iterator[subprocess.Popen[bytes]]:
    """Another live run (a child process), which the sweep must leave alone: no signal, no deleted file."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        yield child
    finally:
        child.kill()
        child.wait()


def _assert_running(child: subprocess.Popen[bytes]) -> None:
    """A signal takes a moment to end a process: give it one before saying it was not signalled."""
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(timeout=0.2)


def _temporaries(folder: Path, live: int) -> dict[str, Path]:
    """A dead run's and a live run's temporary in `folder` and in `folder`/sub (names that trip a swapped PID/number)."""
    return {
        "dead": _touch(folder / f".upscale-{DEAD}-{live}.tmp", b"half"),
        "live": _touch(folder / f".upscale-{live}-{DEAD}.tmp", b"half"),
        "nested dead": _touch(folder / "sub" / f".upscale-{DEAD}-0.tmp", b"half"),
        "nested live": _touch(folder / "sub" / f".upscale-{live}-1.tmp", b"half"),
        "look-alike": _touch(folder / f"x.upscale-{DEAD}-0.tmp", b"user's"),
        "other": _touch(folder / f".upscale-{DEAD}-0.tmp.png", b"user's"),
    }


def test_the_sweep_removes_only_dead_runs_temporaries(tmp_path: Path, live_run: subprocess.Popen[bytes]) -> None:
    made = _temporaries(tmp_path, live_run.pid)
    remove_stale_temporaries(tmp_path, recursive=False)
    assert {key for key, path in made.items() if path.exists()} == {"live", "nested dead", "nested live", "look-alike", "other"}
    _assert_running(live_run)
    remove_stale_temporaries(tmp_path, recursive=True)
    assert {key for key, path in made.items() if path.exists()} == {"live", "nested live", "look-alike", "other"}
    mine = _touch(tmp_path / f".upscale-{os.getpid()}-0.tmp")  # this very run's
    remove_stale_temporaries(tmp_path, recursive=True)
    assert mine.exists()


def test_the_sweep_tolerates_a_temporary_another_sweep_removed_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = _touch(tmp_path / f".upscale-{DEAD}-0.tmp")
    real_kill = os.kill

    def kill_after_the_other_sweep(pid: int, signal: int) -> None:
        stale.unlink(missing_ok=True)  # a second run into OUT swept it between our listing and our unlink
        real_kill(pid, signal)

    monkeypatch.setattr(os, "kill", kill_after_the_other_sweep)
    remove_stale_temporaries(tmp_path, recursive=True)
    assert not stale.exists()


def test_prepare_folder_makes_out_leaves_no_probe_and_sweeps(tmp_path: Path, live_run: subprocess.Popen[bytes]) -> None:
    out = tmp_path / "a" / "b" / "out"
    prepare_folder(out, recursive=False)
    assert out.is_dir() and os.listdir(out) == []
    prepare_folder(out, recursive=False)  # an existing OUT is fine
    assert os.listdir(out) == []
    made = _temporaries(out, live_run.pid)
    prepare_folder(out, recursive=True)
    _assert_running(live_run)
    assert {key for key, path in made.items() if path.exists()} == {"live", "nested live", "look-alike", "other"}
    made = _temporaries(tmp_path / "flat", live_run.pid)
    prepare_folder(tmp_path / "flat", recursive=False)
    assert {key for key, path in made.items() if path.exists()} == {"live", "nested dead", "nested live", "look-alike", "other"}


def test_prepare_folder_raises_when_a_file_is_in_the_way(tmp_path: Path) -> None:
    _touch(tmp_path / "file")
    with pytest.raises(FileExistsError):
        prepare_folder(tmp_path / "file", recursive=False)
    with pytest.raises(NotADirectoryError):
        prepare_folder(tmp_path / "file" / "out", recursive=False)


# --- is_complete ----------------------------------------------------------------------------------------


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow may not open anything: the check must come from the file's own header or end."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded")

    monkeypatch.setattr(Image, "open", refuse)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_is_complete_judges_png_jpeg_webp_bmp_without_decoding(fmt: str, tmp_path: Path, no_decoding: None) -> None:
    data = _encoded(fmt)
    whole = _touch(tmp_path / "whole", data)
    assert is_complete(whole)
    for cut in (1, 2, 12, len(data) // 2):
        assert not is_complete(_touch(tmp_path / f"cut{cut}", data[:-cut])), cut


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF"])
def test_is_complete_on_whole_cut_and_padded_files(fmt: str, tmp_path: Path) -> None:
    data = _encoded(fmt)
    assert is_complete(_touch(tmp_path / "whole", data))
    assert not is_complete(_touch(tmp_path / "cut", data[: len(data) * 2 // 3]))
    if fmt != "TIFF":  # a TIFF's end is not marked; Pillow reads it without its tail
        assert not is_complete(_touch(tmp_path / "padded", data + b"\x00\x01\x02"))


def test_is_complete_decodes_formats_without_a_marked_end(tmp_path: Path) -> None:
    data = _encoded("TIFF")
    assert is_complete(_touch(tmp_path / "a.tif", data))
    assert not is_complete(_touch(tmp_path / "cut.tif", data[:-len(data) // 4]))
    assert not is_complete(_touch(tmp_path / "text.png", b"not an image at all, just text\n"))
    wave = b"RIFF" + (36).to_bytes(4, "little") + b"WAVEfmt " + bytes(28)  # a whole RIFF file, but not WebP
    assert not is_complete(_touch(tmp_path / "sound.webp", wave))


def test_is_complete_needs_a_regular_nonempty_file(tmp_path: Path) -> None:
    png = _touch(tmp_path / "a.png", _encoded("PNG"))
    assert not is_complete(tmp_path / "missing.png")
    assert not is_complete(_touch(tmp_path / "empty.png"))
    assert not is_complete(tmp_path)
    (tmp_path / "link.png").symlink_to(png)
    assert not is_complete(tmp_path / "link.png")  # a link is not an output this tool wrote


def test_is_complete_ignores_a_bmps_reserved_bytes(tmp_path: Path, no_decoding: None) -> None:
    data = bytearray(_encoded("BMP"))
    data[6:10] = b"\x01\x02\x03\x04"  # reserved: their value is the writing application's
    assert is_complete(_touch(tmp_path / "a.bmp", bytes(data)))


def test_is_complete_boundary_at_sixteen_bytes(tmp_path: Path, no_decoding: None) -> None:
    def bmp(size: int) -> bytes:
        return b"BM" + size.to_bytes(4, "little") + bytes(size - 6)

    assert is_complete(_touch(tmp_path / "16.bmp", bmp(16)))  # the smallest file whose head and tail can be read
    assert not is_complete(_touch(tmp_path / "15.bmp", bmp(15)))
    assert not is_complete(_touch(tmp_path / "cut.bmp", bmp(17)[:16]))  # the header says 17 bytes
    assert is_complete(_touch(tmp_path / "17b.bmp", bmp(17)))


# --- write_atomically ---------------------------------------------------------------------------------


def _writer(data: bytes) -> Callable[[BinaryIO], object]:
    return lambda stream: stream.write(data)


def _leftovers(folder: Path) -> list[str]:
    return [name for _, _, names in os.walk(folder) for name in names if name.startswith(".upscale-")]


def test_write_atomically_writes_replaces_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    before = _open_descriptors()
    write_atomically(target, _writer(b"first"))
    assert target.read_bytes() == b"first"
    write_atomically(target, _writer(b"second"), root=tmp_path)
    assert target.read_bytes() == b"second"
    assert os.listdir(tmp_path) == ["out.png"]
    assert _open_descriptors() == before


def test_write_atomically_fills_a_temporary_of_this_process_beside_the_target(tmp_path: Path) -> None:
    seen: list[list[str]] = []

    def write(stream: BinaryIO) -> None:
        seen.append([name for name in os.listdir(tmp_path) if name != "a.png"])
        stream.write(b"data")

    write_atomically(tmp_path / "a.png", write)
    write_atomically(tmp_path / "a.png", write)
    (first,), (second,) = seen
    numbers = []
    for name in (first, second):
        match = TEMPORARY.fullmatch(name)
        assert match and int(match[1]) == os.getpid()
        numbers.append(int(match[2]))
    assert numbers[1] > numbers[0]


def test_write_atomically_makes_root_and_the_folders_below_it(tmp_path: Path) -> None:
    root = tmp_path / "new" / "out"
    target = root / "x" / "y" / "z.png"
    old = os.umask(0)
    try:
        write_atomically(target, _writer(b"deep"), root=root)
        write_atomically(tmp_path / "fresh" / "a" / "b.png", _writer(b"b"))
    finally:
        os.umask(old)
    assert target.read_bytes() == b"deep" and (tmp_path / "fresh" / "a" / "b.png").read_bytes() == b"b"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666
    assert stat.S_IMODE((root / "x").stat().st_mode) == 0o777 and stat.S_IMODE((root / "x" / "y").stat().st_mode) == 0o777
    assert _leftovers(tmp_path) == []


def test_write_atomically_into_a_folder_another_writer_just_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_mkdir = os.mkdir

    def raced(path: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        real_mkdir(path, mode, dir_fd=dir_fd)  # the other writer
        real_mkdir(path, mode, dir_fd=dir_fd)  # ours: FileExistsError

    monkeypatch.setattr(os, "mkdir", raced)
    write_atomically(tmp_path / "sub" / "a.png", _writer(b"x"), root=tmp_path)
    assert (tmp_path / "sub" / "a.png").read_bytes() == b"x"


def test_a_link_planted_while_the_folder_is_made_is_not_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    real_mkdir = os.mkdir

    def planted(path: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        os.symlink(outside, path, dir_fd=dir_fd)  # another process, between our look and our mkdir
        real_mkdir(path, mode, dir_fd=dir_fd)  # ours: FileExistsError

    monkeypatch.setattr(os, "mkdir", planted)
    with pytest.raises(OSError):
        write_atomically(out / "sub" / "a.png", _writer(b"evil"), root=out)
    assert os.listdir(outside) == []


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(failure: BaseException, tmp_path: Path) -> None:
    target = _touch(tmp_path / "sub" / "out.png", b"old")
    before = _open_descriptors()

    def write(stream: BinaryIO) -> None:
        stream.write(b"half")
        raise failure

    with pytest.raises(type(failure)):
        write_atomically(target, write, root=tmp_path)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path / "sub") == ["out.png"]
    assert _open_descriptors() == before


def test_a_failed_rename_leaves_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "out.png").mkdir()  # a folder holding a file cannot be replaced by a file
    _touch(tmp_path / "out.png" / "keep")
    with pytest.raises(IsADirectoryError):
        write_atomically(tmp_path / "out.png", _writer(b"x"))
    assert sorted(os.listdir(tmp_path)) == ["out.png"] and _leftovers(tmp_path) == []


def test_a_link_in_place_of_the_target_is_refused(tmp_path: Path) -> None:
    outside = _touch(tmp_path / "outside" / "victim.png", b"precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").symlink_to(outside)
    before = _open_descriptors()
    with pytest.raises(OSError) as caught:
        write_atomically(out / "a.png", _writer(b"evil"), root=out)
    assert caught.value.errno == errno.EEXIST
    assert str(caught.value) == f"[Errno {errno.EEXIST}] {out / 'a.png'} is a symbolic link; it is not replaced"
    assert outside.read_bytes() == b"precious" and (out / "a.png").is_symlink()
    assert os.listdir(out) == ["a.png"]
    assert _open_descriptors() == before


@pytest.mark.parametrize("depth", [1, 2])
def test_a_linked_folder_below_root_is_not_followed(depth: int, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    (out / "real").mkdir(parents=True)
    (out / "real" / "planted").symlink_to(outside, target_is_directory=True)
    parts = ["real", "planted", "deeper"][:depth + 1]
    target = out.joinpath(*parts, "a.png")
    before = _open_descriptors()
    with pytest.raises(OSError) as caught:
        write_atomically(target, _writer(b"evil"), root=out)
    assert caught.value.errno == errno.ENOTDIR  # Linux's answer to O_DIRECTORY | O_NOFOLLOW on a link
    assert str(caught.value) == (f"[Errno {errno.ENOTDIR}] {out.joinpath(*parts)}: a symbolic link or a file is in the way "
                                 "of the folder; not followed")
    assert os.listdir(outside) == [] and _leftovers(out) == []
    assert _open_descriptors() == before


def test_a_file_in_place_of_a_folder_is_named(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _touch(out / "sub", b"a file")
    with pytest.raises(OSError) as caught:
        write_atomically(out / "sub" / "a.png", _writer(b"x"), root=out)
    assert caught.value.errno == errno.ENOTDIR
    assert str(caught.value) == (f"[Errno {errno.ENOTDIR}] {out / 'sub'}: a symbolic link or a file is in the way "
                                 "of the folder; not followed")
    assert (out / "sub").read_bytes() == b"a file"


def test_other_errors_opening_a_folder_pass_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    real_open = os.open
    before = _open_descriptors()

    def refuse_sub(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if path == "sub":
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", refuse_sub)
    with pytest.raises(PermissionError) as caught:
        write_atomically(out / "sub" / "a.png", _writer(b"x"), root=out)
    monkeypatch.undo()
    assert str(caught.value) == "[Errno 13] Permission denied: 'sub'"
    assert os.listdir(out / "sub") == []
    assert _open_descriptors() == before


def test_a_root_given_guards_the_folders_between_it_and_the_target(tmp_path: Path) -> None:
    """Without root the target's own folder is the root: its links are the caller's choice, and followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "alias").symlink_to(outside, target_is_directory=True)
    write_atomically(tmp_path / "alias" / "a.png", _writer(b"chosen"))
    assert (outside / "a.png").read_bytes() == b"chosen"
    with pytest.raises(OSError):
        write_atomically(tmp_path / "alias" / "b.png", _writer(b"planted"), root=tmp_path)
    assert sorted(os.listdir(outside)) == ["a.png"]


# --- the one writer ------------------------------------------------------------------------------


def test_an_atomic_file_is_in_place_only_once_committed(tmp_path: Path) -> None:
    target = tmp_path / "segment.packets"
    target.write_bytes(b"old")
    written = AtomicFile(target)
    written.stream.write(b"half")
    assert target.read_bytes() == b"old" and len(_leftovers(tmp_path)) == 1
    written.commit()
    assert target.read_bytes() == b"half" and _leftovers(tmp_path) == []
    dropped = AtomicFile(target)
    dropped.stream.write(b"interrupted")
    dropped.abandon()
    assert target.read_bytes() == b"half" and _leftovers(tmp_path) == []


def test_a_writer_that_fails_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "m.safetensors"
    write_bytes_atomically(target, b"first")
    with pytest.raises(RuntimeError), AtomicFile(target) as stream:
        stream.write(b"second")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"first" and _leftovers(tmp_path) == []


def test_a_mode_given_is_set_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_bytes_atomically(tmp_path / "shared.onnx", b"graph", mode=0o644)
        write_bytes_atomically(tmp_path / "private.log", b"log")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared.onnx").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.log").stat().st_mode) == 0o600


def _writes_beside_the_helper(tree: ast.AST) -> list[tuple[int, str]]:
    """Renames and whole-file writes that do not go through io/files.py: os.replace/rename/renames, a
    Path's .replace(x)/.rename(x) (one positional argument: str.replace takes two, dataclasses.replace
    is called by name), and Path.write_bytes/write_text."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name, owner = node.func.attr, node.func.value
        if isinstance(owner, ast.Name) and owner.id in ("os", "shutil") and name in ("replace", "rename", "renames", "move"):
            found.append((node.lineno, f"{owner.id}.{name}"))
        elif (name in ("replace", "rename") and len(node.args) == 1 and not node.keywords) or name in ("write_bytes", "write_text"):
            found.append((node.lineno, f".{name}(...)"))
    return found


def test_every_file_the_tool_writes_goes_through_the_one_helper() -> None:
    package = Path(files.__file__).parents[1]
    helper = Path(files.__file__)
    found = {
        f"{path.relative_to(package.parent)}:{line}: {call}"
        for path in sorted(package.rglob("*.py")) if path != helper
        for line, call in _writes_beside_the_helper(ast.parse(path.read_text(), str(path)))
    }
    assert found == set(), "write through upscaler.io.files.AtomicFile / write_atomically instead"
    inside = _writes_beside_the_helper(ast.parse(helper.read_text()))
    assert [call for _, call in inside] == ["os.replace"], "the helper itself renames once"


def test_the_source_check_sees_each_kind_of_hand_made_writer() -> None:
    """The check above is only as good as its eyes: each way of bypassing the helper is caught, look-alikes are not."""
    code = """
os.replace(tmp, path)
os.rename(a, b)
tmp.replace(path)
Path(x).rename(y)
shutil.move(a, b)
path.write_bytes(data)
path.write_text(text)
name.replace("a", "b")
replace(settings, tile=8)
signature.replace(parameters=[])
"""
    assert [call for _, call in _writes_beside_the_helper(ast.parse(code))] == [
        "os.replace", "os.rename", ".replace(...)", ".rename(...)", "shutil.move", ".write_bytes(...)", ".write_text(...)"]
