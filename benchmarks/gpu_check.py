"""The one GPU check, time-boxed: sections in order of value, each written the moment it finishes.

    PYTHONUNBUFFERED=1 python benchmarks/gpu_check.py --budget-s 420 --out gpu_report

A GPU loan is short (15 minutes, all tries together), so the check never assumes it will finish:
each section carries an estimate, is skipped (and marked so) when the budget left cannot fit it,
and is printed and appended to OUT/report.md and OUT/report.json as soon as it ends, so a run cut
at its limit still returns what it measured. In order:
1. the CUDA tests (every test file or function that skips without CUDA, found by reading the tests);
2. fp16 streamed output vs CPU fp32 on Set14's LR pictures (examples/ when absent): >= 40 dB;
3. default model and srresnet with RANDOM weights (a speed benchmark only; such weights never ship)
   at 960x540 -> 3840x2160: bare model (whole frames already on the device) vs the engine, eager,
   1/2/4 streams, host CPU seconds per frame;
4. the same with CUDA graphs;
5. copy/compute overlap from a CUDA trace (torch.profiler);
6. pictures of many sizes: launched ahead vs the bare model, and the whole `upscale dir` command;
7. `upscale pipe` and `upscale video` through benchmarks/video_pipe.py, after trying NVENC's encoders;
8. torch.compile, last (minutes per shape).
The suite's tests/test_gpu_check.py runs this plan on the CPU on a tiny frame, so it cannot rot between loans.
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from upscaler.engine.bench import frame_from_photo
from upscaler.engine.devices import channels_last
from upscaler.engine.engine import Engine, open_engine
from upscaler.engine.settings import RunSettings
from upscaler.io.images import Picture, read_picture
from upscaler.models import get_architecture, macs_per_input_pixel
from upscaler.models.weights import LoadedModel, ModelCard, load_model
from upscaler.quality.metrics import psnr

PHOTO_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass
class Context:
    """What every section runs on: the GPU and full-size frames, or (the suite's dry run) the CPU and a tiny frame."""

    device: torch.device
    width: int = 960
    height: int = 540
    frames: int = 60
    photos: Path = ROOT.parent / "shared" / "datasets" / "Set14" / "LR_bicubic" / "X4"
    deadline: float = float("inf")  # time.monotonic() at which the budget ends (bounds the subprocesses)
    models: dict[str, LoadedModel] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def precision(self) -> str:
        return "fp16" if self.cuda else "fp32"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def settings(self, streams: int = 2, **extra: bool) -> RunSettings:
        return RunSettings(model="default", device=str(self.device), precision=self.precision, backend="torch",
                           streams=streams, **extra)  # type: ignore[arg-type]

    def frame(self) -> np.ndarray:
        return frame_from_photo(np.asarray(read_picture(ROOT / "examples" / "astronaut.png").color), self.width, self.height)

    def pictures(self) -> list[Path]:
        folder = self.photos if self.photos.is_dir() else ROOT / "examples"
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)

    def loaded(self) -> dict[str, LoadedModel]:
        """The default model and srresnet with seeded random weights, built once."""
        if not self.models:
            torch.manual_seed(0)
            self.models = {"default": load_model("default"),
                           "srresnet (random weights)": LoadedModel(ModelCard("srresnet", {}, 4),
                                                                    get_architecture("srresnet").build().eval(), "srresnet-random")}
        return self.models

    def seconds_left(self) -> float:
        return max(1.0, self.deadline - time.monotonic())


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    estimate_s: float  # on an H100-class GPU, start-up and warm-up included
    run: Callable[[Context], list[str]]
    needs_cuda: bool = False


@dataclass
class Outcome:
    key: str
    title: str
    status: str  # ok, failed, skipped
    seconds: float
    lines: list[str]


class Report:
    """OUT/report.md and OUT/report.json, rewritten whole after every section (never half a section)."""

    def __init__(self, out: Path, header: str) -> None:
        self.out, self.header = out, header
        self.outcomes: list[Outcome] = []
        out.mkdir(parents=True, exist_ok=True)

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        text = self.markdown(outcome)
        print(text, flush=True)
        self._replace("report.md", "\n".join([f"# {self.header}", "", *map(self.markdown, self.outcomes)]))
        self._replace("report.json", json.dumps({"header": self.header, "sections": [asdict(o) for o in self.outcomes]},
                                                indent=1))

    @staticmethod
    def markdown(o: Outcome) -> str:
        return "\n".join([f"## {o.key}. {o.title} [{o.status}, {o.seconds:.1f} s]", "", *o.lines, ""])

    def _replace(self, name: str, text: str) -> None:
        part = self.out / f".{name}.part"
        part.write_text(text + "\n")
        part.replace(self.out / name)


def run_plan(sections: list[Section], ctx: Context, budget_s: float, report: Report,
             clock: Callable[[], float] = time.monotonic) -> list[Outcome]:
    """Each section in turn while its estimate fits the budget left; a failure is reported and the rest goes on."""
    start = clock()
    ctx.deadline = start + budget_s
    for section in sections:
        left = budget_s - (clock() - start)
        began = clock()
        if section.needs_cuda and not ctx.cuda:
            outcome = Outcome(section.key, section.title, "skipped", 0.0, ["skipped: needs a CUDA device"])
        elif section.estimate_s > left:
            outcome = Outcome(section.key, section.title, "skipped", 0.0,
                              [f"skipped: needs about {section.estimate_s:.0f} s, {left:.0f} s of the budget left"])
        else:
            try:
                lines, status = section.run(ctx), "ok"
            except Exception as exc:  # noqa: BLE001 (a section that breaks is a finding; the rest still runs)
                lines, status = ["```", *traceback.format_exception_only(exc)[-1:], "```"], "failed"
                traceback.print_exc()
            outcome = Outcome(section.key, section.title, status, clock() - began, lines)
        report.add(outcome)
    return report.outcomes


def _cuda_only(node: ast.AST) -> bool:
    return "cuda.is_available" in ast.unparse(node)


def _unimportable(tree: ast.Module) -> list[str]:
    """Top-level packages a test file imports at module level that this machine lacks (imageio_ffmpeg on the GPU)."""
    names = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    return sorted(name for name in names if importlib.util.find_spec(name) is None)


def cuda_test_ids(tests: Path = ROOT / "tests", left_out: list[str] | None = None) -> list[str]:
    """Test files marked to skip without CUDA (module `pytestmark`) whole, and such test functions one by one;
    a file that imports a package missing here is named in LEFT_OUT instead (its collection would fail)."""
    ids: list[str] = []
    for path in sorted(tests.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        rel = path.relative_to(tests.parent).as_posix()
        if not _cuda_only(tree):
            continue
        if missing := _unimportable(tree):
            if left_out is not None:
                left_out.append(f"{rel} (needs {', '.join(missing)})")
            continue
        if any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets) and _cuda_only(n)
               for n in tree.body):
            ids.append(rel)
            continue
        ids += [f"{rel}::{n.name}" for n in tree.body
                if isinstance(n, ast.FunctionDef) and any(_cuda_only(d) for d in n.decorator_list)]
    return ids


def _subprocess(ctx: Context, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, check=False,
                          timeout=min(timeout, ctx.seconds_left()))


def cuda_tests(ctx: Context) -> list[str]:
    left_out: list[str] = []
    ids = cuda_test_ids(left_out=left_out)
    done = _subprocess(ctx, ["-m", "pytest", "-q", "-p", "no:cacheprovider", *ids], 300)
    tail = (done.stdout + done.stderr).strip().splitlines()[-25:]
    if done.returncode != 0:
        raise RuntimeError(f"pytest exit {done.returncode}: " + " | ".join(tail[-3:]))
    return [f"{len(ids)} test ids: {' '.join(ids)}", f"left out: {', '.join(left_out) or 'none'}", "", "```", *tail, "```"]


def accuracy(ctx: Context) -> list[str]:
    """The engine's streamed output in the device's precision vs the CPU in fp32, picture by picture."""
    device = open_engine(ctx.settings(streams=2))
    cpu = open_engine(RunSettings(model="default", device="cpu", precision="fp32"))
    by_size: dict[tuple[int, ...], list[tuple[str, np.ndarray]]] = {}
    for path in ctx.pictures():
        color = np.atleast_3d(read_picture(path).color)[..., :3]
        color = np.ascontiguousarray(np.repeat(color, 3, axis=2) if color.shape[2] == 1 else color).astype(np.uint8)
        by_size.setdefault(color.shape, []).append((path.name, color))
    scores: dict[str, float] = {}
    for frames in by_size.values():  # stream() takes frames of one size
        for (name, lr), out in zip(frames, device.stream([lr for _, lr in frames])):
            scores[name] = psnr(out, cpu.upscale(Picture(lr, None, "PNG")).color)
    worst = min(scores.values())
    lines = [(f"{ctx.precision} streamed ({len(scores)} pictures of {ctx.pictures()[0].parent}) vs CPU fp32: "
             f"worst {worst:.2f} dB, mean {np.mean(list(scores.values())):.2f} dB (goal >= 40)")]
    if worst < 40:
        raise RuntimeError(lines[0] + "; below 40 dB: " + ", ".join(f"{k} {v:.1f}" for k, v in scores.items() if v < 40))
    return lines


def _bare_net(ctx: Context, module: torch.nn.Module) -> torch.nn.Module:
    dtype = torch.float16 if ctx.cuda else torch.float32
    return channels_last(copy.deepcopy(module).to(ctx.device, dtype).eval())


def _as_input(ctx: Context, pixels: np.ndarray) -> torch.Tensor:
    dtype = torch.float16 if ctx.cuda else torch.float32
    x = torch.from_numpy(np.ascontiguousarray(np.atleast_3d(pixels)[..., :3])).to(ctx.device).permute(2, 0, 1)[None]
    return x.expand(1, 3, -1, -1).to(dtype).div(255).contiguous(memory_format=torch.channels_last)


def bare_fps(ctx: Context, module: torch.nn.Module, frame: np.ndarray) -> float:
    """The model alone on whole frames already on the device: the ceiling for the engine."""
    net, x = _bare_net(ctx, module), _as_input(ctx, frame)
    with torch.inference_mode():
        for _ in range(3):
            net(x)
        ctx.sync()
        start = time.perf_counter()
        for _ in range(ctx.frames):
            net(x)
        ctx.sync()
    return ctx.frames / (time.perf_counter() - start)


def engine_fps(ctx: Context, engine: Engine, frame: np.ndarray) -> tuple[float, float]:
    """(frames/s, host CPU seconds per frame) streaming equal frames through the engine."""
    for _ in engine.stream([frame] * 3):
        pass
    cpu0, start = time.process_time(), time.perf_counter()
    for _ in engine.stream([frame] * ctx.frames):
        pass
    return ctx.frames / (time.perf_counter() - start), (time.process_time() - cpu0) / ctx.frames


def throughput_table(ctx: Context, extra: dict[str, bool]) -> list[str]:
    frame = ctx.frame()
    lines = [f"{ctx.width}x{ctx.height} -> {ctx.width * 4}x{ctx.height * 4}, {ctx.precision}, {ctx.frames} frames", "",
             "| model | streams | engine fps | bare model fps | engine / bare | host CPU s/frame | useful TFLOP/s |",
             "|---|---|---|---|---|---|---|"]
    for label, loaded in ctx.loaded().items():
        bare, macs = bare_fps(ctx, loaded.module, frame), macs_per_input_pixel(loaded.module)
        for streams in (1, 2, 4):
            fps, host = engine_fps(ctx, open_engine(ctx.settings(streams, **extra), loaded), frame)
            tflops = ctx.width * ctx.height * macs * 2 * fps / 1e12
            lines.append(f"| {label} | {streams} | {fps:.1f} | {bare:.1f} | {fps / bare:.2f} | {host:.4f} | {tflops:.1f} |")
            print(lines[-1], flush=True)
    return lines


def overlap(ctx: Context) -> list[str]:
    """From a CUDA trace: how long copies ran, and how much of that beside some kernel."""
    from torch.profiler import ProfilerActivity, profile

    engine, frame = open_engine(ctx.settings(streams=2)), ctx.frame()
    for _ in engine.stream([frame] * 3):
        pass
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in engine.stream([frame] * 8):
            pass
        ctx.sync()
    copies: list[tuple[float, float]] = []
    kernels: list[tuple[float, float]] = []
    for event in prof.events():
        if event.device_type.name == "CUDA":
            (copies if "Memcpy" in event.name else kernels).append((event.time_range.start, event.time_range.end))
    kernels.sort()
    beside = 0.0
    for c0, c1 in copies:
        for k0, k1 in kernels:
            if k0 >= c1:
                break
            beside += max(0.0, min(c1, k1) - max(c0, k0))
    total = sum(c1 - c0 for c0, c1 in copies)
    return [(f"default model, 2 streams, 8 frames: copies {total / 1000:.2f} ms, {min(beside, total) / 1000:.2f} ms of it "
            f"beside kernels ({min(beside, total) / max(total, 1e-9):.0%})")]


def _timed(ctx: Context, run: Callable[[], None]) -> float:
    run()  # warm-up: every shape met once (cuDNN picks its algorithms per shape)
    ctx.sync()
    start = time.perf_counter()
    run()
    ctx.sync()
    return time.perf_counter() - start


def pictures_of_many_sizes(ctx: Context) -> list[str]:
    """Launched `depth` ahead across picture boundaries vs the bare model, and the whole `upscale dir` command."""
    sources = ctx.pictures()
    pictures = [read_picture(s) for s in sources]
    loaded = ctx.loaded()["default"]
    net, inputs = _bare_net(ctx, loaded.module), [_as_input(ctx, p.color) for p in pictures]

    def bare_run() -> None:
        with torch.inference_mode():
            for x in inputs:
                net(x)

    bare = _timed(ctx, bare_run)
    pixels = sum(p.size[0] * p.size[1] for p in pictures)
    lines = [(f"{len(pictures)} pictures of {sources[0].parent} ({pixels / 1e6:.2f} MP), default model, {ctx.precision}; "
             f"bare model {bare:.3f} s"), "",
             "| streams | depth | launched ahead s | bare / launched | `upscale dir` s (whole command) |", "|---|---|---|---|---|"]
    for streams in (1, 2, 4):
        engine = open_engine(ctx.settings(streams), loaded)

        def launched(engine: Engine = engine) -> None:
            pending: deque[Callable[[], Picture]] = deque()
            for picture in pictures:
                pending.append(engine.launch(picture, "PNG"))
                while len(pending) > engine.depth:
                    pending.popleft()()
            while pending:
                pending.popleft()()

        ours = _timed(ctx, launched)
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            done = _subprocess(ctx, ["-m", "upscaler", "dir", str(sources[0].parent), "--out", out, "--format", "png",
                                     "--no-recursive", "--device", str(ctx.device), "--precision", ctx.precision,
                                     "--backend", "torch", "--streams", str(streams)], 120)
            whole = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"upscale dir exit {done.returncode}: {done.stderr.strip()[-500:]}")
        lines.append(f"| {streams} | {engine.depth} | {ours:.3f} | {bare / ours:.2f} | {whole:.1f} |")
    return lines


def nvenc_opens() -> list[str]:
    """Which of NVENC's encoders open through the PyAV wheel (one 256x144 frame each)."""
    import av

    lines = []
    for name in ("h264_nvenc", "hevc_nvenc"):
        try:
            codec = av.CodecContext.create(name, "w")
            codec.width, codec.height, codec.pix_fmt = 256, 144, "yuv420p"  # type: ignore[attr-defined]
            codec.open()
            lines.append(f"{name}: opens")
        except Exception as exc:  # noqa: BLE001 (reported: which encoders this wheel and driver give)
            lines.append(f"{name}: does not open ({type(exc).__name__}: {exc})")
    return lines


def pipe_and_video(ctx: Context) -> list[str]:
    lines = nvenc_opens()
    done = _subprocess(ctx, ["benchmarks/video_pipe.py", "--device", str(ctx.device), "--size", f"{ctx.width}x{ctx.height}",
                             "--frames", str(max(ctx.frames * 2, 12))], 240)
    lines += ["", "```", *(done.stdout + done.stderr).strip().splitlines()[-30:], "```"]
    if done.returncode != 0:
        raise RuntimeError(f"video_pipe.py exit {done.returncode}: " + " | ".join(lines[-4:-1]))
    return lines


def plan() -> list[Section]:
    return [
        Section("1", "CUDA tests", 90, cuda_tests, needs_cuda=True),
        Section("2", "fp16 streamed vs CPU fp32", 30, accuracy),
        Section("3", "bare model vs engine, eager", 45, lambda ctx: throughput_table(ctx, {})),
        Section("4", "bare model vs engine, CUDA graphs", 45, lambda ctx: throughput_table(ctx, {"cuda_graphs": True}),
                needs_cuda=True),
        Section("5", "copy/compute overlap", 15, overlap, needs_cuda=True),
        Section("6", "pictures of many sizes, launched ahead and through `upscale dir`", 60, pictures_of_many_sizes),
        Section("7", "`upscale pipe` and `upscale video` (NVENC if it opens)", 90, pipe_and_video, needs_cuda=True),
        Section("8", "torch.compile", 150, lambda ctx: throughput_table(ctx, {"compile": True}),
                needs_cuda=True),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=420, help="seconds the whole check may take (default 420)")
    parser.add_argument("--out", type=Path, default=Path("gpu_report"), help="folder for report.md and report.json")
    parser.add_argument("--frames", type=int, default=60, help="timed frames per measurement (default 60)")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for a dry run")
    parser.add_argument("--size", default="960x540", help="WIDTHxHEIGHT of the benchmark frames")
    parser.add_argument("--photos", type=Path, help="pictures of many sizes (default: Set14's LR, else examples/)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: gpu_check: no CUDA GPU here (use --device cpu for a dry run)")
    width, height = (int(v) for v in args.size.split("x"))
    ctx = Context(device, width, height, args.frames)
    if args.photos:
        ctx.photos = args.photos
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    report = Report(args.out, f"GPU check: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
                              f"budget {args.budget_s:.0f} s")
    outcomes = run_plan(plan(), ctx, args.budget_s, report)
    summary = ", ".join(f"{o.key} {o.status}" for o in outcomes)
    print(f"gpu_check: {summary}; report in {args.out / 'report.md'}", flush=True)
    raise SystemExit(1 if any(o.status == "failed" for o in outcomes) else 0)


if __name__ == "__main__":
    main()
