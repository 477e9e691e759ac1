"""`upscale compare`: the sheet's crops, panels, scores and failures, on real photos through the real engine."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import EXAMPLES, ROOT, photo_array, save_random_model
from upscaler.cli import app
from upscaler.quality.compare import GAP, LABEL_HEIGHT, detail_crops, sheet
from upscaler.quality.evaluate import bicubic_resize
from upscaler.quality.metrics import psnr_y
from upscaler.train.degradations import LowResDamage


def test_detail_crops_find_the_photo_on_a_flat_canvas_and_never_overlap() -> None:
    photo = photo_array("chelsea.png")  # 112x75
    canvas = np.full((200, 300, 3), 128, np.uint8)
    canvas[90:165, 150:262] = photo
    crops = detail_crops(canvas, 32, 3)
    assert len(crops) == 3
    for x, y, w, h in crops:
        assert (w, h) == (32, 32) and 150 - 8 <= x and x + w <= 262 + 8 and 90 - 8 <= y and y + h <= 165 + 8
    for i, (x, y, w, h) in enumerate(crops):
        for x2, y2, _, _ in crops[i + 1:]:
            assert abs(x - x2) >= w or abs(y - y2) >= h


def test_a_window_larger_than_the_image_is_the_whole_image() -> None:
    assert detail_crops(photo_array("chelsea.png"), 500, 2) == [(0, 0, 112, 75)]


def test_the_sheet_places_each_panel_crop_exactly() -> None:
    rng = np.random.default_rng(0)
    panels_pixels = [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8) for _ in range(3)]
    from upscaler.quality.compare import Panel

    image = np.asarray(sheet([Panel(str(n), p) for n, p in enumerate(panels_pixels)], [(2, 1, 5, 4), (10, 6, 3, 2)], 4))
    column = 5 * 4
    assert image.shape == (LABEL_HEIGHT + 16 + 8 + 3 * GAP, 3 * (column + GAP) + GAP, 3)
    for n, pixels in enumerate(panels_pixels):
        left = GAP + n * (column + GAP)
        top = LABEL_HEIGHT + GAP
        assert np.array_equal(image[top: top + 16, left: left + 20], pixels[4:20, 8:28])
        top += 16 + GAP
        assert np.array_equal(image[top: top + 8, left: left + 12], pixels[24:32, 40:52])


def test_compare_with_degrade_scores_each_panel_against_the_original(tmp_path: Path) -> None:
    a = save_random_model(tmp_path / "a.safetensors", channels=8, blocks=1, seed=1)
    b = save_random_model(tmp_path / "b.safetensors", channels=8, blocks=1, seed=2)
    out = tmp_path / "sheet.png"
    result = CliRunner().invoke(app, ["compare", str(EXAMPLES / "coffee.png"), "--degrade", "jpeg:50", "--seed", "3",
                                      "-m", str(a), "-m", str(b), "-o", str(out), "--crop-size", "12", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    labels = [p["label"] for p in report["panels"]]
    assert labels == ["input (nearest)", "bicubic", str(a), str(b), "reference"]
    hr = photo_array("coffee.png")[:100, :148]
    lr = LowResDamage.parse("jpeg:50").apply_uint8(bicubic_resize(hr, 1 / 4), 3)
    bicubic = bicubic_resize(lr, 4)
    assert report["panels"][1]["psnr"] == psnr_y(bicubic, hr, 4)
    assert report["panels"][2]["psnr"] != report["panels"][3]["psnr"]
    assert report["panels"][0]["psnr"] is None and report["panels"][4]["psnr"] is None
    (x, y, w, h), *_ = report["crops"]
    image = np.asarray(Image.open(out))
    assert image.shape[1] == 5 * (w * 4 + GAP) + GAP
    left = GAP + (w * 4 + GAP)
    assert np.array_equal(image[LABEL_HEIGHT + GAP: LABEL_HEIGHT + GAP + h * 4, left: left + w * 4],
                          bicubic[y * 4: (y + h) * 4, x * 4: (x + w) * 4])


def test_compare_refuses_bad_requests_with_one_line_each(tmp_path: Path, tiny_model: Path) -> None:
    x2 = save_random_model(tmp_path / "x2.safetensors", channels=8, blocks=1, scale=2)
    photo = str(EXAMPLES / "chelsea.png")
    out = str(tmp_path / "s.png")
    cases = [
        (["compare", photo, "-m", str(tiny_model), "-o", str(tmp_path / "s.jpg")], 2, "the sheet is a PNG"),
        (["compare", photo, "-m", str(tiny_model), "-o", out, "--crop", "100,0,20,20"], 2, "does not lie inside the 112x75 input"),
        (["compare", photo, "-m", str(tiny_model), "-o", out, "--crop", "1,2,3"], 2, "give X,Y,W,H"),
        (["compare", photo, "-m", str(tiny_model), "-m", str(x2), "-o", out], 2, "compare models of one scale"),
        (["compare", str(tmp_path / "gone.png"), "-m", str(tiny_model), "-o", out], 1, "gone.png"),
        (["compare", photo, "-m", str(tiny_model), "-o", out, "--reference", photo], 2, "smaller than x4 of the input"),
        (["compare", photo, "-m", str(tiny_model), "-o", out, "--degrade", "jpeg:500"], 2, "jpeg"),
    ]
    for args, code, message in cases:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == code, (args, result.output)
        assert "error:" in result.output and message in result.output.replace("\n", " "), (args, result.output)
        assert "Traceback" not in result.output
    assert not Path(out).exists()


def test_the_bundled_examples_are_found_from_an_installed_wheel(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT), "-w", str(tmp_path)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("*.whl")
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    script = "from upscaler.io.examples import example_photos, example_pixels; print(example_photos()[0]); print(example_pixels().shape)"
    found = subprocess.run([sys.executable, "-c", script],
                           check=True, capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    first, shape = found.stdout.splitlines()
    assert first == str(target / "upscaler" / "examples" / "astronaut.png") and shape == "(128, 128, 3)"
