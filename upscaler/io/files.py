"""Where outputs go, and writing them so that no crash, full disk, clash or planted link loses a file.

Every output name is planned before the first write, so two inputs never race for one name
and no output replaces an input. Each file is written under its own temporary name in the
target's folder (`.upscale-<pid>-<n>.tmp`, short enough beside any legal name), synced, renamed
over the target in one step, and the folder synced, so that after a crash or a power cut a name
holds the old file or the complete new one. Folders below OUT are opened without following
links, so nothing is ever written outside OUT. Temporaries of runs that died (SIGKILL, power
cut) are removed by the next run into the same folder.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import stat
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from upscaler.io.formats import DEFAULT_TIFF_COMPRESSION, FORMATS, SUFFIX_FORMATS, SUFFIXES

NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems
_TEMP_NAME = re.compile(r"\.upscale-(\d+)-(\d+)\.tmp")
_temp_numbers = itertools.count()
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# Read-write: the TIFF writer reads its own first directory back to attach the EXIF after the pixels.
_TEMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path
    format: str  # Pillow's name of the format to write
    root: Path | None = None  # the output folder nothing may be written outside of (None: the target's folder)
    tiff_compression: str = DEFAULT_TIFF_COMPRESSION  # for TIFF targets: a key of io.formats.TIFF_COMPRESSIONS


@dataclass
class Found:
    """Images found under IN, and what was passed over with the reason (reported, never silent)."""

    sources: list[Path] = field(default_factory=list)
    passed_over: list[tuple[Path, str]] = field(default_factory=list)


def discover(in_dir: Path, out_dir: Path, recursive: bool) -> Found:
    """Image files under IN (by suffix; content is checked on reading), never those under OUT.

    Symlinked files are read; symlinked folders are not followed (no loops, no escaping IN);
    unreadable folders and dangling links are passed over with the reason. Raises OSError
    when IN itself cannot be listed.
    """
    out_resolved = out_dir.resolve()
    found = Found()
    folders = [in_dir]
    while folders:
        folder = folders.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            if folder == in_dir:
                raise
            found.passed_over.append((folder, f"unreadable folder ({exc.strerror}); skipped"))
            continue
        for entry in entries:
            path = Path(entry.path)
            if entry.is_symlink():
                if not path.exists():
                    found.passed_over.append((path, "dangling symbolic link; skipped"))
                    continue
                if path.is_dir():
                    found.passed_over.append((path, "symbolic link to a folder; not followed"))
                    continue
            if entry.is_dir(follow_symlinks=False):
                if recursive and path.resolve() != out_resolved:
                    folders.append(path)
            elif path.suffix.lower() in SUFFIX_FORMATS:
                found.sources.append(path)
    found.sources.sort()
    found.passed_over.sort()
    return found


def output_format(source: Path, requested: str) -> str:
    """Pillow's format name to write: for `keep`, the format the source's suffix names."""
    return SUFFIX_FORMATS[source.suffix.lower()] if requested == "keep" else FORMATS[requested]


def fit_name(stem: str, suffix: str) -> str:
    """`stem + suffix`, the stem shortened where a longer suffix would push it past NAME_MAX bytes."""
    budget = NAME_MAX - len(os.fsencode(suffix))
    while len(os.fsencode(stem)) > budget:
        stem = stem[:-1]
    return stem + suffix


def target_path(source: Path, in_dir: Path, out_dir: Path, fmt: str) -> Path:
    """OUT/<path relative to IN>; the suffix changes only when the format does."""
    relative = source.relative_to(in_dir)
    name = relative.name
    if SUFFIX_FORMATS.get(source.suffix.lower()) != fmt:
        name = fit_name(relative.stem, SUFFIXES[fmt])
    return out_dir / relative.parent / name


def plan_jobs(sources: list[Path], in_dir: Path, out_dir: Path, requested: str,
              tiff_compression: str = DEFAULT_TIFF_COMPRESSION) -> list[Job]:
    return [Job(s, target_path(s, in_dir, out_dir, fmt), fmt, out_dir, tiff_compression)
            for s in sources for fmt in [output_format(s, requested)]]


def clashes(jobs: list[Job], fold_case: bool = False) -> list[str]:
    """One line per output name that two inputs share or that is itself an input; empty when the plan is safe.

    With `fold_case` (OUT is on a case-insensitive filesystem, see `ignores_case`) names that
    differ only in case are one name: `a.png` would overwrite `A.png`.
    """

    def key(path: Path) -> str:
        real = os.path.realpath(path)
        return real.casefold() if fold_case else real

    by_target: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        by_target[key(job.target)].append(job)
    sources = {key(job.source): job.source for job in jobs}
    problems = []
    for name, shared in by_target.items():
        target = shared[0].target
        if len(shared) > 1:
            names = " and ".join(str(job.source) for job in shared)
            problems.append(f"{names} would all be written to {target}; rename one or choose another --format")
        if name in sources:
            problems.append(f"{target} would replace the input {sources[name]}; choose another -o")
    return problems


def ignores_case(folder: Path) -> bool:
    """Whether names that differ only in case name one file in `folder` (or, before it exists, in its nearest
    existing parent): macOS and Windows by default, and FAT/exFAT drives anywhere.

    Probed with an empty temporary file of ours, removed at once; False where none can be made.
    """
    existing = folder.absolute()
    while not existing.is_dir() and existing != existing.parent:
        existing = existing.parent
    probe = existing / _temp_name()
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError:
        return False
    try:
        return os.path.lexists(existing / probe.name.upper())
    finally:
        probe.unlink(missing_ok=True)


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file or folder (through links too); False when either is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def prepare_folder(folder: Path, recursive: bool) -> None:
    """Make OUT, prove it writable before any work is done, and remove temporaries of dead runs.

    Raises OSError naming the cause (read-only, no permission, a file in the way...).
    """
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / _temp_name()
    os.close(os.open(probe, _TEMP_FLAGS, 0o600))
    probe.unlink()
    remove_stale_temporaries(folder, recursive)


def remove_stale_temporaries(folder: Path, recursive: bool) -> None:
    """Delete this tool's temporaries whose process is gone; a live run's (another process's) are kept."""
    for parent, folders, names in os.walk(folder):
        for name in names:
            match = _TEMP_NAME.fullmatch(name)
            if match and not _alive(int(match[1])):
                Path(parent, name).unlink(missing_ok=True)
        if not recursive:
            folders.clear()


def _temp_name() -> str:
    """Unique per process and job, and 30 bytes at most: it fits beside any legal name."""
    return f".upscale-{os.getpid()}-{next(_temp_numbers)}.tmp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, run by someone else
        pass
    return True


def is_complete(path: Path) -> bool:
    """A regular, non-empty file whose image format's end is in place: what an interrupted write never leaves.

    Cheap (no decoding) for PNG, JPEG, WebP and BMP, whose ends or headers say where the file ends.
    """
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size < 16:
            return False
        with open(path, "rb") as handle:
            head = handle.read(16)
            handle.seek(-12, os.SEEK_END)
            tail = handle.read(12)
    except OSError:
        return False
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return tail == b"\x00\x00\x00\x00IEND\xaeB`\x82"
    if head.startswith(b"\xff\xd8"):
        return tail.endswith(b"\xff\xd9")
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return int.from_bytes(head[4:8], "little") + 8 == info.st_size
    if head.startswith(b"BM"):
        return int.from_bytes(head[2:6], "little") == info.st_size
    return _decodes(path)


def _decodes(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            img.load()
    except Exception:  # noqa: BLE001 (any failure to decode means "not complete": the file is redone)
        return False
    return True


class AtomicFile:
    """One file being written under a fresh temporary name beside `target`: the one way this tool writes a file.

    The temporary is created exclusively (never an existing file, never through a link) in the
    target's folder; `commit` syncs it, renames it over `target` in one step and syncs the folder,
    so after a crash or a power cut the name holds the old file or the complete new one; `abandon`
    removes it. Folders between `root` (made if missing) and the target are opened or made without
    following links, and a link in place of the target is refused: a link planted in OUT fails this
    one file and nothing is written outside `root`. `mode` (e.g. 0o644 for shared model files) is
    set whatever the umask; by default the umask decides, as for any new file.
    """

    def __init__(self, target: Path, root: Path | None = None, mode: int | None = None) -> None:
        self.target = target
        root = root or target.parent
        root.mkdir(parents=True, exist_ok=True)
        self._folder = _open_below(root, target.parent.relative_to(root).parts)
        try:
            try:
                if stat.S_ISLNK(os.lstat(target.name, dir_fd=self._folder).st_mode):
                    raise OSError(errno.EEXIST, f"{target} is a symbolic link; it is not replaced")
            except FileNotFoundError:
                pass
            self._tmp = _temp_name()
            self.stream: BinaryIO = open(os.open(self._tmp, _TEMP_FLAGS, 0o666, dir_fd=self._folder), "w+b")  # noqa: SIM115
            if mode is not None:
                os.fchmod(self.stream.fileno(), mode)
        except BaseException:
            os.close(self._folder)
            raise

    def commit(self) -> None:
        """Sync the temporary, rename it over the target, sync the folder; the temporary is gone either way."""
        try:
            self.stream.flush()
            os.fsync(self.stream.fileno())
            self.stream.close()
            os.replace(self._tmp, self.target.name, src_dir_fd=self._folder, dst_dir_fd=self._folder)
        except BaseException:
            self.abandon()
            raise
        try:
            os.fsync(self._folder)
        finally:
            os.close(self._folder)

    def abandon(self) -> None:
        """Drop the temporary (interrupted, failed): the target keeps what it held."""
        self.stream.close()
        try:
            os.unlink(self._tmp, dir_fd=self._folder)
        except FileNotFoundError:
            pass
        finally:
            os.close(self._folder)

    def __enter__(self) -> BinaryIO:
        return self.stream

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.commit()
        else:
            self.abandon()


def write_atomically(target: Path, write: Callable[[BinaryIO], object], root: Path | None = None,
                     mode: int | None = None) -> None:
    """Let `write` fill the target through an `AtomicFile`: complete under its name, or not there at all."""
    with AtomicFile(target, root, mode) as stream:
        write(stream)


def write_bytes_atomically(target: Path, data: bytes, root: Path | None = None, mode: int | None = None) -> None:
    """`data` as the whole of `target`, through an `AtomicFile`."""
    with AtomicFile(target, root, mode) as stream:
        stream.write(data)


def _open_below(root: Path, parts: tuple[str, ...]) -> int:
    """A descriptor of root/parts..., each part opened (or made) without following a link."""
    folder = os.open(root, _FOLDER_FLAGS)
    try:
        for part in parts:
            try:
                child = os.open(part, _FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=folder)
            except FileNotFoundError:
                try:
                    os.mkdir(part, 0o777, dir_fd=folder)
                except FileExistsError:  # another writer made it just now
                    pass
                os.fsync(folder)
                child = os.open(part, _FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=folder)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise OSError(exc.errno, f"{root.joinpath(*parts)}: a symbolic link or a file is in the way of the folder; "
                                  "not followed") from None
                raise
            os.close(folder)
            folder = child
    except BaseException:
        os.close(folder)
        raise
    return folder
