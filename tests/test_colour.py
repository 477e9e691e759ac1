"""Y'CbCr <-> RGB in-process: pixel-format layouts, colour tags, reference colours and the two converters.

Fast and deterministic: real PyAV frames and FFmpeg's scaler, no subprocess. The expected codes come from the
published matrices (BT.709, BT.601, BT.2020...) through a float64 reference written here, independently of
the module's own arithmetic; where the reference lies within a hair of a rounding tie, one code either way
is accepted (float32 on the converter's side may round it the other way).
"""

from __future__ import annotations

from contextlib import nullcontext

import av
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from upscaler.io import colour
from upscaler.io.colour import (
    MATRIX_BT470BG,
    MATRIX_BT709,
    MATRIX_BT2020_CL,
    MATRIX_BT2020_NCL,
    MATRIX_FCC,
    MATRIX_RGB,
    MATRIX_SMPTE170M,
    MATRIX_SMPTE240M,
    MATRIX_UNSPECIFIED,
    RANGE_FULL,
    RANGE_LIMITED,
    ColourTags,
    SwscaleConverter,
    TorchConverter,
    YuvLayout,
    bit_depth,
    encoded_tags,
    frame_from_planes,
    frame_planes,
    guess_matrix,
    is_rgb_format,
    open_converter,
    yuv_layout,
)

CPU = torch.device("cpu")
# Published luma weights (Kr, Kb): ITU-R BT.709, BT.601 (470BG and SMPTE 170M), FCC, SMPTE 240M, BT.2020.
PUBLISHED = {
    MATRIX_BT709: (0.2126, 0.0722), MATRIX_FCC: (0.30, 0.11), MATRIX_BT470BG: (0.299, 0.114),
    MATRIX_SMPTE170M: (0.299, 0.114), MATRIX_SMPTE240M: (0.212, 0.087), MATRIX_BT2020_NCL: (0.2627, 0.0593),
    MATRIX_BT2020_CL: (0.2627, 0.0593),
}
MATRICES = sorted(PUBLISHED)
# Limited-range 8-bit codes of pure red (255, 0, 0), as the standards' tables give them.
PUBLISHED_RED = {MATRIX_BT709: (63, 102, 240), MATRIX_SMPTE170M: (81, 90, 240), MATRIX_BT470BG: (81, 90, 240),
                 MATRIX_BT2020_NCL: (74, 97, 240)}


def layout_of(pix_fmt: str) -> YuvLayout:
    layout = yuv_layout(pix_fmt)
    assert layout is not None, pix_fmt
    return layout


def tags(matrix: int = MATRIX_BT709, full: bool = False) -> ColourTags:
    return ColourTags(RANGE_FULL if full else RANGE_LIMITED, matrix)


def quantiser(bits: int, full: bool) -> tuple[float, float, float, float]:
    """(luma offset, luma scale, chroma offset, chroma scale) as BT.601/709/2020 and H.273 define them."""
    if full:
        return 0.0, 2.0**bits - 1, 2.0 ** (bits - 1), 2.0**bits - 1
    step = 2.0 ** (bits - 8)
    return 16 * step, 219 * step, 128 * step, 224 * step


def ref_to_rgb(y: np.ndarray | float, u: np.ndarray | float, v: np.ndarray | float, matrix: int, bits: int, full: bool,
               top: float) -> np.ndarray:
    """Unrounded RGB codes (0..top, unclamped) of full-resolution Y'CbCr codes."""
    kr, kb = PUBLISHED[matrix]
    kg = 1 - kr - kb
    yo, ys, co, cs = quantiser(bits, full)
    luma, cb, cr = (y - yo) / ys, (u - co) / cs, (v - co) / cs
    red, blue = luma + 2 * (1 - kr) * cr, luma + 2 * (1 - kb) * cb
    green = (luma - kr * red - kb * blue) / kg
    return np.stack([red, green, blue], -1) * top


def ref_from_rgb(rgb: np.ndarray, matrix: int, bits: int, full: bool) -> list[np.ndarray]:
    """Unrounded Y', Cb, Cr codes (unclamped, chroma at full resolution) of RGB codes."""
    kr, kb = PUBLISHED[matrix]
    pixels = rgb.astype(np.float64) / (255 if rgb.dtype == np.uint8 else 65535)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    luma = kr * red + (1 - kr - kb) * green + kb * blue
    cb, cr = (blue - luma) / (2 * (1 - kb)), (red - luma) / (2 * (1 - kr))
    yo, ys, co, cs = quantiser(bits, full)
    return [luma * ys + yo, cb * cs + co, cr * cs + co]


def assert_codes(got: np.ndarray, unrounded: np.ndarray, top: float) -> None:
    """`got` is `unrounded` rounded and clamped to 0..top; exactly, except next to a rounding tie."""
    expected = np.clip(np.round(unrounded), 0, top)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    near_tie = np.abs(unrounded % 1 - 0.5) < 0.01
    diff = np.abs(got.astype(np.int64) - expected)
    assert diff[~near_tie].max(initial=0) == 0, (got[~near_tie][:8], expected[~near_tie][:8])
    assert diff.max(initial=0) <= 1


def flat_frame(pix_fmt: str, codes: tuple[int, int, int], width: int = 4, height: int = 2) -> av.VideoFrame:
    layout = layout_of(pix_fmt)
    probe = av.VideoFrame(width, height, pix_fmt)
    planes = [np.full((p.height, p.width), c, layout.dtype) for p, c in zip(probe.planes, codes, strict=True)]
    return frame_from_planes(planes, layout)


def both(pix_fmt: str, t: ColourTags, height: int = 2) -> tuple[SwscaleConverter, TorchConverter]:
    layout = layout_of(pix_fmt)
    return (SwscaleConverter(t, height, layout.rgb_format, t, height, pix_fmt),
            TorchConverter(CPU, t, layout, height, t, layout, height))


def as_float(planes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y, u, v = planes
    return y.astype(np.float64), u.astype(np.float64), v.astype(np.float64)


def first_codes(planes: list[np.ndarray]) -> tuple[int, ...]:
    return tuple(int(p[0, 0]) for p in planes)


def upsample(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear with half-pixel centres and clamped edges (align_corners=False), in float64."""
    def weights(size_in: int, size_out: int) -> np.ndarray:
        src = np.maximum((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0)
        low = np.floor(src).astype(int)
        high = np.minimum(low + 1, size_in - 1)
        frac = src - low
        matrix = np.zeros((size_out, size_in))
        matrix[np.arange(size_out), low] += 1 - frac
        matrix[np.arange(size_out), high] += frac
        return matrix
    return weights(plane.shape[0], height) @ plane.astype(np.float64) @ weights(plane.shape[1], width).T


def downsample(plane: np.ndarray, ch: int, cw: int) -> np.ndarray:
    """Box average over ch x cw blocks; partial blocks at the right and bottom edges average what they hold."""
    height, width = plane.shape
    rows = -(-height // ch)
    cols = -(-width // cw)
    out = np.empty((rows, cols))
    for i in range(rows):
        for j in range(cols):
            out[i, j] = plane[i * ch:(i + 1) * ch, j * cw:(j + 1) * cw].mean()
    return out


def smooth_rgb(width: int, height: int, bits: int) -> np.ndarray:
    top = 255 if bits == 8 else 65535
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * top // max(width, 1), yy * top // max(height, 1),
                    (xx + yy) * top // (width + height)], -1)
    return rgb.astype(np.uint8 if bits == 8 else np.uint16)


# --- the untagged guess, layouts, formats ------------------------------------------------------------------------

def test_untagged_video_is_bt601_below_720_lines_and_bt709_from_there() -> None:
    assert guess_matrix(719) == MATRIX_SMPTE170M
    assert guess_matrix(720) == MATRIX_BT709
    assert guess_matrix(721) == MATRIX_BT709
    assert guess_matrix(480) == MATRIX_SMPTE170M and guess_matrix(2160) == MATRIX_BT709


@pytest.mark.parametrize(("pix_fmt", "chroma", "bits"), [
    ("yuv420p", (2, 2), 8), ("yuv422p", (2, 1), 8), ("yuv444p", (1, 1), 8),
    ("yuv420p10le", (2, 2), 10), ("yuv422p10le", (2, 1), 10), ("yuv444p10le", (1, 1), 10),
    ("yuv420p12le", (2, 2), 12), ("yuv422p12le", (2, 1), 12), ("yuv444p12le", (1, 1), 12),
    ("yuv420p16le", (2, 2), 16), ("yuv422p16le", (2, 1), 16), ("yuv444p16le", (1, 1), 16),
    ("yuv440p", (1, 2), 8), ("yuv411p", (4, 1), 8), ("yuv410p", (4, 4), 8), ("yuvj420p", (2, 2), 8),
])
def test_planar_yuv_layouts(pix_fmt: str, chroma: tuple[int, int], bits: int) -> None:
    layout = yuv_layout(pix_fmt)
    assert layout == YuvLayout(pix_fmt, chroma[0], chroma[1], bits)
    assert layout is not None and type(layout.chroma_w) is int and type(layout.chroma_h) is int
    assert layout.dtype is (np.uint8 if bits == 8 else np.uint16)
    assert layout.rgb_format == ("rgb24" if bits == 8 else "rgb48le")
    assert bit_depth(pix_fmt) == bits


@pytest.mark.parametrize("pix_fmt", ["nv12", "nv21", "p010le", "rgb24", "rgb48le", "gbrp", "gbrp10le", "gray",
                                     "gray10le", "yuva420p", "yuva444p10le", "yuv420p10be", "yuv444p16be", "yuyv422",
                                     "pal8", "bgr0"])
def test_formats_that_are_not_three_plane_little_endian_yuv_have_no_layout(pix_fmt: str) -> None:
    assert yuv_layout(pix_fmt) is None


@pytest.mark.parametrize(("pix_fmt", "bits"), [("gray", 8), ("gray10le", 10), ("nv12", 8), ("p010le", 10),
                                               ("rgb24", 8), ("rgb48le", 16), ("gbrp12le", 12), ("pal8", 8),
                                               ("rgb565le", 5)])
def test_bit_depth_is_the_first_components(pix_fmt: str, bits: int) -> None:
    assert bit_depth(pix_fmt) == bits


@pytest.mark.parametrize(("pix_fmt", "rgb"), [
    ("gbrp", True), ("gbrp10le", True), ("rgb24", True), ("bgr0", True), ("rgb48le", True), ("pal8", True),
    ("yuv420p", False), ("yuv444p10le", False), ("nv12", False), ("gray", False), ("yuvj444p", False),
])
def test_rgb_formats_are_rgb_planar_packed_or_palette(pix_fmt: str, rgb: bool) -> None:
    assert is_rgb_format(pix_fmt) is rgb


# --- tags ----------------------------------------------------------------------------------------------------------

def test_colour_tags_default_to_unspecified() -> None:
    t = ColourTags()
    assert (t.range, t.matrix, t.primaries, t.transfer) == (0, MATRIX_UNSPECIFIED, 2, 2)
    assert not t.full_range
    assert ColourTags(RANGE_FULL).full_range and not ColourTags(RANGE_LIMITED).full_range


@pytest.mark.parametrize("matrix", MATRICES)
def test_a_tagged_matrix_is_kept_at_any_height(matrix: int) -> None:
    assert ColourTags(matrix=matrix).resolved_matrix(480) == matrix
    assert ColourTags(matrix=matrix).resolved_matrix(1080) == matrix


@pytest.mark.parametrize("matrix", [MATRIX_RGB, MATRIX_UNSPECIFIED, 3, 8, 11, 12, 14, 99])
def test_an_untagged_or_unknown_matrix_is_guessed_from_the_height(matrix: int) -> None:
    assert ColourTags(matrix=matrix).resolved_matrix(719) == MATRIX_SMPTE170M
    assert ColourTags(matrix=matrix).resolved_matrix(720) == MATRIX_BT709


def test_an_rgb_output_is_tagged_rgb_full_range_keeping_primaries_and_transfer() -> None:
    source = ColourTags(RANGE_LIMITED, MATRIX_BT2020_NCL, primaries=9, transfer=16)
    for out in ("gbrp", "gbrp10le", "rgb24", "bgr0"):
        assert encoded_tags(source, "yuv420p10le", out, 2160) == ColourTags(RANGE_FULL, MATRIX_RGB, 9, 16)


def test_a_ycbcr_source_keeps_its_matrix_and_range() -> None:
    source = ColourTags(RANGE_FULL, MATRIX_BT709, primaries=1, transfer=1)
    assert encoded_tags(source, "yuv420p", "yuv420p", 480) == source
    source = ColourTags(RANGE_LIMITED, MATRIX_SMPTE170M, primaries=6, transfer=6)
    assert encoded_tags(source, "yuv422p10le", "yuv444p", 2160) == source
    assert encoded_tags(ColourTags(), "yuv420p", "yuv420p", 2160) == ColourTags(matrix=MATRIX_BT709)


def test_an_untagged_source_gets_the_guess_for_the_output_height() -> None:
    assert encoded_tags(ColourTags(), "yuv420p", "yuv420p", 720) == ColourTags(matrix=MATRIX_BT709)
    assert encoded_tags(ColourTags(), "yuv420p", "yuv420p", 719) == ColourTags(matrix=MATRIX_SMPTE170M)
    assert encoded_tags(ColourTags(RANGE_FULL, 8), "yuv420p", "yuv420p", 480) == ColourTags(RANGE_FULL, MATRIX_SMPTE170M)


@pytest.mark.parametrize("pix_fmt_in", ["gbrp", "rgb24", "rgb48le", "pal8", "bgr0"])
def test_an_rgb_source_becomes_limited_range_ycbcr_keeping_primaries_and_transfer(pix_fmt_in: str) -> None:
    source = ColourTags(RANGE_FULL, MATRIX_RGB, primaries=1, transfer=13)
    assert encoded_tags(source, pix_fmt_in, "yuv420p", 1080) == ColourTags(RANGE_LIMITED, MATRIX_BT709, 1, 13)
    assert encoded_tags(source, pix_fmt_in, "yuv444p10le", 576) == ColourTags(RANGE_LIMITED, MATRIX_SMPTE170M, 1, 13)


# --- quantisation ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [8, 10, 12, 16])
@pytest.mark.parametrize("full", [False, True])
def test_quantiser_offsets_and_scales(bits: int, full: bool) -> None:
    q = colour._Quantiser(bits, full)
    yo, ys, co, cs = quantiser(bits, full)
    assert q.luma_offset_scale() == (yo, ys)
    assert q.chroma_offset_scale() == (co, cs)


def test_quantiser_published_values() -> None:
    assert colour._Quantiser(8, False).luma_offset_scale() == (16.0, 219.0)
    assert colour._Quantiser(8, False).chroma_offset_scale() == (128.0, 224.0)
    assert colour._Quantiser(10, False).luma_offset_scale() == (64.0, 876.0)  # 64..940
    assert colour._Quantiser(10, False).chroma_offset_scale() == (512.0, 896.0)  # 64..960
    assert colour._Quantiser(8, True).chroma_offset_scale() == (128.0, 255.0)
    assert colour._Quantiser(10, True).luma_offset_scale() == (0.0, 1023.0)
    assert colour._Quantiser(10, True).chroma_offset_scale() == (512.0, 1023.0)
    assert colour._Quantiser(16, True).chroma_offset_scale() == (32768.0, 65535.0)


@pytest.mark.parametrize("matrix", MATRICES)
def test_yuv_matrix_rows_give_rgb_from_ycbcr(matrix: int) -> None:
    kr, kb = PUBLISHED[matrix]
    kg = 1 - kr - kb
    expected = np.array([[1, 0, 2 * (1 - kr)],
                         [1, -2 * (1 - kb) * kb / kg, -2 * (1 - kr) * kr / kg],
                         [1, 2 * (1 - kb), 0]])
    got = colour._yuv_matrix(matrix)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)
    # Gray stays gray: luma alone gives R = G = B.
    np.testing.assert_allclose(got.numpy() @ [0.5, 0, 0], [0.5, 0.5, 0.5], atol=1e-12)


# --- reference colours -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("matrix", MATRICES)
@pytest.mark.parametrize("full", [False, True])
def test_white_and_black_are_exact_in_both_converters(matrix: int, full: bool) -> None:
    white, black = ((255, 128, 128), (0, 128, 128)) if full else ((235, 128, 128), (16, 128, 128))
    for converter in both("yuv444p", tags(matrix, full)):
        assert (converter.to_rgb(flat_frame("yuv444p", white)) == 255).all(), type(converter).__name__
        assert (converter.to_rgb(flat_frame("yuv444p", black)) == 0).all(), type(converter).__name__
        rgb = np.full((2, 4, 3), 255, np.uint8)
        assert first_codes(converter.planes_from_rgb(rgb)) == white
        assert first_codes(converter.planes_from_rgb(rgb * 0)) == black


@pytest.mark.parametrize("matrix", list(PUBLISHED_RED))
def test_pure_red_has_the_published_limited_range_codes(matrix: int) -> None:
    rgb = np.zeros((2, 4, 3), np.uint8)
    rgb[..., 0] = 255
    for converter in both("yuv444p", tags(matrix)):
        planes = converter.planes_from_rgb(rgb)
        assert all((p == p[0, 0]).all() for p in planes)
        assert first_codes(planes) == PUBLISHED_RED[matrix], type(converter).__name__
        back = converter.to_rgb(flat_frame("yuv444p", PUBLISHED_RED[matrix]))
        assert np.abs(back[0, 0].astype(int) - [255, 0, 0]).max() <= 2, (type(converter).__name__, back[0, 0])


@pytest.mark.parametrize("matrix", MATRICES)
@pytest.mark.parametrize("full", [False, True])
def test_primaries_and_secondaries_encode_by_the_published_weights(matrix: int, full: bool) -> None:
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255],
                        [128, 64, 200], [10, 250, 30]], np.uint8)[None]  # 1 x 8
    unrounded = ref_from_rgb(colours, matrix, 8, full)
    swscale, on_device = both("yuv444p", tags(matrix, full), height=1)
    for got, ref in zip(on_device.planes_from_rgb(colours), unrounded, strict=True):
        assert_codes(got, ref, 255)
    # FFmpeg's fixed-point path: within a code of the formula.
    for got, ref in zip(swscale.planes_from_rgb(colours), unrounded, strict=True):
        assert np.abs(got.astype(int) - np.clip(np.round(ref), 0, 255)).max() <= 1


@pytest.mark.parametrize("matrix", MATRICES)
@pytest.mark.parametrize("full", [False, True])
def test_decoding_ycbcr_codes_follows_the_published_weights(matrix: int, full: bool) -> None:
    codes = np.array([[16, 128, 128], [81, 90, 240], [145, 54, 34], [41, 240, 110], [200, 20, 150], [128, 1, 254],
                      [60, 250, 5], [235, 128, 128], [100, 128, 200]])
    planes = [codes[None, :, i].astype(np.uint8) for i in range(3)]
    frame = frame_from_planes(planes, layout_of("yuv444p"))
    unrounded = ref_to_rgb(*as_float(planes), matrix, 8, full, 255)
    swscale, on_device = both("yuv444p", tags(matrix, full), height=1)
    assert_codes(on_device.to_rgb(frame), unrounded, 255)
    # FFmpeg's fixed-point path: within a code of the formula.
    assert np.abs(swscale.to_rgb(frame).astype(int) - np.clip(np.round(unrounded), 0, 255)).max() <= 1


def test_10_bit_limited_range_runs_64_to_940_and_chroma_to_960() -> None:
    swscale, on_device = both("yuv444p10le", tags(MATRIX_BT709))
    converter: SwscaleConverter | TorchConverter
    for converter, top in ((swscale, 65280), (on_device, 65535)):  # FFmpeg's 16-bit white is 65280
        white = converter.planes_from_rgb(np.full((2, 4, 3), top, np.uint16))
        assert first_codes(white) == (940, 512, 512)
        assert first_codes(converter.planes_from_rgb(np.zeros((2, 4, 3), np.uint16))) == (64, 512, 512)
        red = np.zeros((2, 4, 3), np.uint16)
        red[..., 0] = top
        assert first_codes(converter.planes_from_rgb(red)) == (250, 409, 960)  # 4 x (62.5, 102.3, 240)
    assert (on_device.to_rgb(flat_frame("yuv444p10le", (940, 512, 512))) == 65535).all()
    assert (on_device.to_rgb(flat_frame("yuv444p10le", (64, 512, 512))) == 0).all()
    rgb = on_device.to_rgb(flat_frame("yuv444p10le", (64, 512, 960)))  # black luma, Cr at its top: R = 1.5748 x 0.5
    assert rgb.dtype == np.uint16
    np.testing.assert_array_equal(rgb[0, 0], np.round(np.clip(ref_to_rgb(64.0, 512.0, 960.0, MATRIX_BT709, 10, False,
                                                                          65535), 0, 65535)))


@pytest.mark.parametrize("full", [False, True])
def test_16_bit_white_is_65535_not_wrapped_to_0(full: bool) -> None:
    white = (65535, 32768, 32768) if full else (235 * 256, 128 * 256, 128 * 256)
    on_device = both("yuv444p16le", tags(MATRIX_BT709, full))[1]
    rgb = on_device.to_rgb(flat_frame("yuv444p16le", white))
    assert rgb.dtype == np.uint16 and (rgb == 65535).all()
    planes = on_device.planes_from_rgb(np.full((2, 4, 3), 65535, np.uint16))
    assert all(p.dtype == np.uint16 for p in planes)
    assert first_codes(planes) == white
    assert first_codes(on_device.planes_from_rgb(np.zeros((2, 4, 3), np.uint16))) == (0 if full else 4096, *white[1:])
    # FFmpeg's scaler, on its own scale (white at 65280) and fixed-point rounding: within a few codes of 65536.
    swscale = both("yuv444p16le", tags(MATRIX_BT709, full))[0]
    by_swscale = first_codes(swscale.planes_from_rgb(np.full((2, 4, 3), 65280, np.uint16)))
    assert np.abs(np.subtract(by_swscale, white)).max() <= 4, by_swscale


@pytest.mark.parametrize("bits", [10, 12, 16])
def test_full_range_chroma_is_centred_on_half_and_scaled_by_the_top_code(bits: int) -> None:
    """Cb at 0 is -2^(b-1) / (2^b - 1), a hair below -0.5: seen in 16-bit RGB."""
    pix_fmt = f"yuv444p{bits}le"
    top = 2**bits - 1
    half = 2 ** (bits - 1)
    codes = np.array([[half, 0, top], [half, top, 0], [0, half, half], [top, half, half], [half // 3, 5, top - 7]])
    planes = [codes[None, :, i].astype(np.uint16) for i in range(3)]
    frame = frame_from_planes(planes, layout_of(pix_fmt))
    on_device = both(pix_fmt, tags(MATRIX_BT2020_NCL, True), height=1)[1]
    unrounded = ref_to_rgb(*as_float(planes), MATRIX_BT2020_NCL, bits, True, 65535)
    assert_codes(on_device.to_rgb(frame), unrounded, 65535)
    # Gray encodes to chroma exactly at the centre.
    gray = np.full((1, 2, 3), 30000, np.uint16)
    assert first_codes(on_device.planes_from_rgb(gray))[1:] == (half, half)


@pytest.mark.parametrize("matrix", MATRICES)
@pytest.mark.parametrize("bits", [8, 10, 16])
def test_full_range_chroma_spans_every_code_from_0_to_the_top(matrix: int, bits: int) -> None:
    """Yellow's Cb and cyan's Cr are -0.5 (code 0.5, a tie that rounds to even: 0); blue's and red's are +0.5
    (top + 0.5, clamped to the top)."""
    pix_fmt = "yuv444p" if bits == 8 else f"yuv444p{bits}le"
    white = 255 if bits == 8 else 65535
    rgb = np.array([[[white, white, 0], [0, white, white], [0, 0, white], [white, 0, 0]]],
                   np.uint8 if bits == 8 else np.uint16)
    on_device = both(pix_fmt, tags(matrix, True), height=1)[1]
    _, cb, cr = on_device.planes_from_rgb(rgb)
    top = 2**bits - 1
    assert (cb[0, 0], cr[0, 1], cb[0, 2], cr[0, 3]) == (0, 0, top, top)


@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)), min_size=1, max_size=24),
       st.sampled_from(MATRICES), st.booleans(), st.sampled_from([8, 10, 12, 16]))
@settings(max_examples=60, deadline=None)
def test_torch_encoding_matches_the_formula(colours: list[tuple[int, int, int]], matrix: int, full: bool,
                                            bits: int) -> None:
    rgb = np.array(colours, np.uint8)[None]
    if bits > 8:
        rgb = rgb.astype(np.uint16) * 257 + 100 * (rgb < 128)  # 16-bit codes, not only multiples of 257
    layout = layout_of("yuv444p" if bits == 8 else f"yuv444p{bits}le")
    on_device = TorchConverter(CPU, tags(matrix, full), layout, 1, tags(matrix, full), layout, 1)
    for got, ref in zip(on_device.planes_from_rgb(rgb), ref_from_rgb(rgb, matrix, bits, full), strict=True):
        assert got.dtype == layout.dtype
        assert_codes(got, ref, 2**bits - 1)


@given(st.lists(st.tuples(st.integers(0, 1023), st.integers(0, 1023), st.integers(0, 1023)), min_size=1, max_size=24),
       st.sampled_from(MATRICES), st.booleans(), st.sampled_from([8, 10, 12, 16]))
@settings(max_examples=60, deadline=None)
def test_torch_decoding_matches_the_formula(codes: list[tuple[int, int, int]], matrix: int, full: bool,
                                            bits: int) -> None:
    layout = layout_of("yuv444p" if bits == 8 else f"yuv444p{bits}le")
    array = np.array(codes, np.int64) * (2**bits - 1) // 1023
    planes = [array[None, :, i].astype(layout.dtype) for i in range(3)]
    on_device = TorchConverter(CPU, tags(matrix, full), layout, 1, tags(matrix, full), layout, 1)
    top = 255 if bits == 8 else 65535
    rgb = on_device.to_rgb(frame_from_planes(planes, layout))
    assert rgb.dtype == (np.uint8 if bits == 8 else np.uint16)
    assert_codes(rgb, ref_to_rgb(*as_float(planes), matrix, bits, full, top), top)


# --- subsampled chroma and odd sizes --------------------------------------------------------------------------------

SUBSAMPLED = ["yuv420p", "yuv422p", "yuv440p", "yuv411p", "yuv420p10le", "yuv422p10le"]


@pytest.mark.parametrize("pix_fmt", SUBSAMPLED + ["yuv444p", "yuv444p10le"])
@pytest.mark.parametrize(("width", "height"), [(8, 6), (7, 5), (5, 3), (9, 2)])
def test_torch_encoding_averages_chroma_blocks_rounded_up(pix_fmt: str, width: int, height: int) -> None:
    layout = layout_of(pix_fmt)
    rgb = smooth_rgb(width, height, layout.bits)
    t = tags(MATRIX_BT709)
    on_device = TorchConverter(CPU, t, layout, height, t, layout, height)
    planes = on_device.planes_from_rgb(rgb)
    probe = av.VideoFrame(width, height, pix_fmt)
    assert [p.shape for p in planes] == [(p.height, p.width) for p in probe.planes]  # ceil, as FFmpeg sizes them
    luma, cb, cr = ref_from_rgb(rgb, MATRIX_BT709, layout.bits, False)
    top = 2**layout.bits - 1
    assert_codes(planes[0], luma, top)
    for got, ref in zip(planes[1:], (cb, cr), strict=True):
        assert_codes(got, downsample(ref, layout.chroma_h, layout.chroma_w), top)


@pytest.mark.parametrize("pix_fmt", SUBSAMPLED)
@pytest.mark.parametrize(("width", "height"), [(8, 6), (7, 5), (5, 3)])
def test_torch_decoding_interpolates_chroma_bilinearly(pix_fmt: str, width: int, height: int) -> None:
    layout = layout_of(pix_fmt)
    probe = av.VideoFrame(width, height, pix_fmt)
    rng = np.random.default_rng(width * height)
    scale = 2 ** (layout.bits - 8)
    planes = [rng.integers(16 * scale, 235 * scale, (p.height, p.width), endpoint=True).astype(layout.dtype)
              for p in probe.planes]
    t = tags(MATRIX_SMPTE170M)
    on_device = TorchConverter(CPU, t, layout, height, t, layout, height)
    rgb = on_device.to_rgb(frame_from_planes(planes, layout))
    top = 255 if layout.bits == 8 else 65535
    u, v = (upsample(p, height, width) for p in planes[1:])
    assert_codes(rgb, ref_to_rgb(planes[0].astype(np.float64), u, v, MATRIX_SMPTE170M, layout.bits, False, top), top)


def gentle_rgb(width: int, height: int, bits: int) -> np.ndarray:
    """A gentle ramp (a code or two a pixel), 16-bit on FFmpeg's scale of 65280 for white."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([60 + 2 * xx, 100 + 2 * yy, 150 - xx - yy], -1)
    return rgb.astype(np.uint8) if bits == 8 else (rgb * 256).astype(np.uint16)


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv422p", "yuv444p", "yuv420p10le", "yuv422p10le", "yuv444p10le"])
@pytest.mark.parametrize(("width", "height"), [(32, 24), (15, 9)])
@pytest.mark.parametrize("full", [False, True])
def test_swscale_and_torch_agree_both_ways(pix_fmt: str, width: int, height: int, full: bool) -> None:
    """Within a code (8-bit) on even sizes. FFmpeg's scaler reads and writes 16-bit RGB with white at 65280, not
    65535, so the torch side gets the same light rescaled; on odd sizes FFmpeg samples chroma at 8/15 spacing
    rather than in 2x2 blocks, a code more."""
    layout = layout_of(pix_fmt)
    t = tags(MATRIX_BT709, full)
    swscale, on_device = both(pix_fmt, t, height)
    rgb = gentle_rgb(width, height, layout.bits)
    wide = layout.bits > 8
    rgb_torch = np.round(rgb * (65535 / 65280)).astype(np.uint16) if wide else rgb
    by_swscale, by_torch = swscale.planes_from_rgb(rgb), on_device.planes_from_rgb(rgb_torch)
    odd = width % 2 == 1
    for a, b in zip(by_swscale, by_torch, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype == layout.dtype
        assert np.abs(a.astype(int) - b).max() <= ((5 if odd else 1) if wide else (2 if odd else 1))
    frame = frame_from_planes(by_torch, layout)
    rgb_swscale, rgb_torch = swscale.to_rgb(frame), on_device.to_rgb(frame)
    assert rgb_swscale.shape == rgb_torch.shape == (height, width, 3)
    assert rgb_swscale.dtype == rgb_torch.dtype == rgb.dtype
    if wide:
        assert np.abs(rgb_swscale * (65535 / 65280) - rgb_torch).max() <= 1.25 * 257
    else:
        assert np.abs(rgb_swscale.astype(int) - rgb_torch).max() <= 1


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv422p10le", "yuv444p"])
def test_from_rgb_gives_a_frame_of_the_output_format(pix_fmt: str) -> None:
    layout = layout_of(pix_fmt)
    rgb = smooth_rgb(7, 5, layout.bits)
    for converter in both(pix_fmt, tags(MATRIX_BT709), 5):
        frame = converter.from_rgb(rgb)
        assert (frame.format.name, frame.width, frame.height) == (pix_fmt, 7, 5)
        for a, b in zip(frame_planes(frame, layout), converter.planes_from_rgb(rgb), strict=True):
            np.testing.assert_array_equal(a, b)


def test_swscale_reads_the_source_matrix_and_writes_the_output_matrix() -> None:
    """Untagged: BT.601 at 480 lines in, BT.709 at 1080 lines out; limited range both ways."""
    untagged = ColourTags()
    layout = layout_of("yuv444p")
    swscale = SwscaleConverter(untagged, 480, "rgb24", untagged, 1080, "yuv444p")
    on_device = TorchConverter(CPU, untagged, layout, 480, untagged, layout, 1080)
    for converter in (swscale, on_device):
        rgb = converter.to_rgb(flat_frame("yuv444p", PUBLISHED_RED[MATRIX_SMPTE170M]))
        assert np.abs(rgb[0, 0].astype(int) - [255, 0, 0]).max() <= 2, (type(converter).__name__, rgb[0, 0])
        red = np.zeros((2, 4, 3), np.uint8)
        red[..., 0] = 255
        assert first_codes(converter.planes_from_rgb(red)) == PUBLISHED_RED[MATRIX_BT709], type(converter).__name__
    mixed = SwscaleConverter(ColourTags(RANGE_FULL, MATRIX_BT709), 2, "rgb24", ColourTags(RANGE_LIMITED, MATRIX_BT2020_NCL),
                             2, "yuv444p")
    assert (mixed.to_rgb(flat_frame("yuv444p", (255, 128, 128))) == 255).all()  # full-range white in
    red = np.zeros((2, 4, 3), np.uint8)
    red[..., 0] = 255
    assert first_codes(mixed.planes_from_rgb(red)) == PUBLISHED_RED[MATRIX_BT2020_NCL]


def test_swscale_full_range_output() -> None:
    swscale = SwscaleConverter(tags(MATRIX_BT709), 2, "rgb24", tags(MATRIX_BT709, True), 2, "yuvj444p")
    assert swscale.from_rgb(np.full((2, 4, 3), 255, np.uint8)).format.name == "yuvj444p"
    swscale = SwscaleConverter(tags(MATRIX_BT709), 2, "rgb24", tags(MATRIX_BT709, True), 2, "yuv444p")
    assert first_codes(swscale.planes_from_rgb(np.zeros((2, 4, 3), np.uint8))) == (0, 128, 128)
    assert first_codes(swscale.planes_from_rgb(np.full((2, 4, 3), 255, np.uint8))) == (255, 128, 128)


def test_swscale_decodes_420_chroma_accurately() -> None:
    """Accurate rounding and full chroma interpolation: within a code of the formula on smooth content."""
    width, height = 32, 16
    layout = layout_of("yuv420p")
    yy, xx = np.mgrid[0:height, 0:width]
    luma = (40 + xx * 5 + yy).astype(np.uint8)
    cy, cx = np.mgrid[0:height // 2, 0:width // 2]
    cb, cr = (60 + cx * 8).astype(np.uint8), (200 - cy * 10 - cx * 3).astype(np.uint8)
    frame = frame_from_planes([luma, cb, cr], layout)
    swscale = SwscaleConverter(tags(MATRIX_BT709), height, "rgb24", tags(MATRIX_BT709), height, "yuv420p")
    reference = ref_to_rgb(luma.astype(np.float64), upsample(cb, height, width), upsample(cr, height, width),
                           MATRIX_BT709, 8, False, 255)
    diff = np.abs(swscale.to_rgb(frame).astype(int) - np.clip(np.round(reference), 0, 255))[1:-1, 1:-1]
    assert diff.mean() < 0.6 and diff.max() <= 3, (diff.mean(), diff.max())


# --- planes in and out of frames ------------------------------------------------------------------------------------

@given(st.sampled_from(["yuv420p", "yuv422p", "yuv444p", "yuv410p", "yuv420p10le", "yuv422p12le", "yuv444p16le"]),
       st.integers(1, 37), st.integers(1, 19), st.integers(0, 2**32 - 1))
@settings(max_examples=40, deadline=None)
def test_planes_round_trip_through_frames_exactly(pix_fmt: str, width: int, height: int, seed: int) -> None:
    layout = layout_of(pix_fmt)
    probe = av.VideoFrame(width, height, pix_fmt)
    rng = np.random.default_rng(seed)
    planes = [rng.integers(0, 2**layout.bits, (p.height, p.width)).astype(layout.dtype) for p in probe.planes]
    frame = frame_from_planes(planes, layout)
    assert (frame.format.name, frame.width, frame.height) == (pix_fmt, width, height)
    again = frame_planes(frame, layout)
    assert len(again) == 3
    for a, b in zip(again, planes, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("pix_fmt", "width"), [("yuv444p", 5), ("yuv444p", 33), ("yuv444p16le", 3),
                                                ("yuv444p16le", 13)])
def test_frame_planes_cut_row_padding_off_what_pyav_holds(pix_fmt: str, width: int) -> None:
    layout = layout_of(pix_fmt)
    rng = np.random.default_rng(width)
    array = rng.integers(0, 2**layout.bits, (3, 4, width)).astype(layout.dtype)
    # PyAV takes 8-bit 4:4:4 as planes first, 16-bit as pixels last.
    frame = av.VideoFrame.from_ndarray(array if layout.bits == 8 else array.transpose(1, 2, 0), format=pix_fmt)
    assert frame.planes[0].line_size > width * np.dtype(layout.dtype).itemsize  # padded rows
    planes = frame_planes(frame, layout)
    assert [p.shape for p in planes] == [(4, width)] * 3
    np.testing.assert_array_equal(np.stack(planes), array)
    np.testing.assert_array_equal(np.stack(frame_planes(frame_from_planes(planes, layout), layout)), array)


def test_frame_planes_of_420_match_pyav() -> None:
    layout = layout_of("yuv420p")
    rng = np.random.default_rng(3)
    array = rng.integers(0, 256, (6 * 3 // 2, 10)).astype(np.uint8)
    frame = av.VideoFrame.from_ndarray(array, format="yuv420p")
    y, u, v = frame_planes(frame, layout)
    np.testing.assert_array_equal(y, array[:6])
    np.testing.assert_array_equal(u, array[6:].reshape(-1)[:15].reshape(3, 5))
    np.testing.assert_array_equal(v, array[6:].reshape(-1)[15:].reshape(3, 5))


def test_frame_from_planes_takes_exactly_three_planes() -> None:
    layout = layout_of("yuv444p")
    planes = [np.zeros((2, 2), np.uint8)] * 2
    with pytest.raises(ValueError):
        frame_from_planes(planes, layout)


# --- choosing a converter ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("pix_fmt_in", "rgb_format"), [("yuv420p", "rgb24"), ("yuv422p10le", "rgb48le"),
                                                        ("nv12", "rgb24"), ("p010le", "rgb48le"), ("gbrp", "rgb24"),
                                                        ("gbrp12le", "rgb48le"), ("yuv444p16le", "rgb48le")])
def test_open_converter_picks_swscale_on_the_cpu(pix_fmt_in: str, rgb_format: str) -> None:
    t_in, t_out = ColourTags(RANGE_FULL, MATRIX_BT2020_NCL), ColourTags()
    converter = open_converter(CPU, t_in, pix_fmt_in, 480, t_out, "yuv420p10le", 1080)
    assert isinstance(converter, SwscaleConverter)
    assert (converter.rgb_format, converter.pix_fmt_out) == (rgb_format, "yuv420p10le")
    # The source's own matrix and range in, the output's guess (untagged 1080 lines: BT.709) and range out.
    assert converter._in == (9, "JPEG") and converter._out == (1, "MPEG")


class RecordingConverter:
    """Stands in for TorchConverter, whose CUDA streams and tensors need a GPU: records what it is built with."""

    def __init__(self, *args: object) -> None:
        self.args = args


@pytest.mark.parametrize(("pix_fmt_in", "pix_fmt_out"), [("yuv420p10le", "yuv444p"), ("yuv422p", "yuv420p12le")])
def test_open_converter_picks_torch_on_cuda_for_planar_yuv_both_ways(monkeypatch: pytest.MonkeyPatch, pix_fmt_in: str,
                                                                     pix_fmt_out: str) -> None:
    monkeypatch.setattr(colour, "TorchConverter", RecordingConverter)
    cuda = torch.device("cuda", 0)
    t_in, t_out = ColourTags(RANGE_FULL, MATRIX_BT709), ColourTags(RANGE_LIMITED, MATRIX_SMPTE240M)
    converter = open_converter(cuda, t_in, pix_fmt_in, 480, t_out, pix_fmt_out, 1080)
    assert isinstance(converter, RecordingConverter)
    assert converter.args == (cuda, t_in, layout_of(pix_fmt_in), 480, t_out, layout_of(pix_fmt_out), 1080)


@pytest.mark.parametrize(("pix_fmt_in", "pix_fmt_out"), [("nv12", "yuv420p"), ("yuv420p", "nv12"), ("gbrp", "yuv420p"),
                                                         ("yuv420p", "gbrp"), ("p010le", "p010le")])
def test_open_converter_uses_swscale_on_cuda_unless_both_are_planar_yuv(monkeypatch: pytest.MonkeyPatch,
                                                                        pix_fmt_in: str, pix_fmt_out: str) -> None:
    monkeypatch.setattr(colour, "TorchConverter", RecordingConverter)
    converter = open_converter(torch.device("cuda"), ColourTags(), pix_fmt_in, 480, ColourTags(), pix_fmt_out, 480)
    assert isinstance(converter, SwscaleConverter) and converter.pix_fmt_out == pix_fmt_out


def test_torch_converter_on_the_cpu_has_no_streams_and_its_matrices() -> None:
    layout_in, layout_out = layout_of("yuv422p10le"), layout_of("yuv420p")
    converter = TorchConverter(CPU, ColourTags(), layout_in, 480, ColourTags(RANGE_FULL, MATRIX_BT709), layout_out, 480)
    assert converter._in_stream is None and converter._out_stream is None
    assert converter.rgb_dtype == torch.uint16 and converter.rgb_max == 65535.0
    torch.testing.assert_close(converter._to_rgb, colour._yuv_matrix(MATRIX_SMPTE170M).float())
    torch.testing.assert_close(converter._from_rgb, torch.linalg.inv(colour._yuv_matrix(MATRIX_BT709)).float())
    assert converter._q_in == colour._Quantiser(10, False) and converter._q_out == colour._Quantiser(8, True)
    assert isinstance(colour._on(None), nullcontext)
