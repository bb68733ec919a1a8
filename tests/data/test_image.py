"""Image decoding (hostile and unusual files), normalisation and augmentation."""

from __future__ import annotations

import struct
import time
import warnings
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from pydantic import ValidationError

from polyfuse.data.errors import MediaError
from polyfuse.data.modalities.image import (
    ImageAugmentConfig,
    ImageConfig,
    _crop_matrix,
    _flip_matrix,
    _rotate_shift_matrix,
    apply_image_augment,
    augment_image,
    decode_image,
    draw_image_augment,
    image_to_tensor,
    images_to_tensor,
    normalised_black,
)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buffer = BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A ~70-byte PNG whose IHDR claims width x height, with an empty IDAT: a decompression-bomb probe."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def cfg_for(mode: str = "RGB", size: tuple[int, int] = (4, 4), **kwargs: object) -> ImageConfig:
    return ImageConfig.model_validate({"mode": mode, "size": size, **kwargs})


# ---------------------------------------------------------------------------------------------------
# Modes and sizes


def test_rgb_png_to_grey_and_back() -> None:
    rgb = Image.new("RGB", (4, 4), (255, 0, 0))
    grey = decode_image(encode(rgb), cfg_for("L"))
    assert grey.shape == (4, 4, 1) and grey.dtype == np.uint8
    assert np.all(grey == 76)  # ITU-R 601-2 luma of pure red: 0.299 * 255

    grey_png = encode(Image.new("L", (4, 4), 200))
    rgb_out = decode_image(grey_png, cfg_for("RGB"))
    assert rgb_out.shape == (4, 4, 3) and rgb_out.dtype == np.uint8
    assert np.all(rgb_out == 200)


def test_reads_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(encode(Image.new("RGB", (5, 3), (1, 2, 3))))
    pixels = decode_image(path, cfg_for("RGB", (3, 5)))
    assert pixels.shape == (3, 5, 3)
    assert tuple(pixels[1, 2]) == (1, 2, 3)


def test_palette_image() -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert tuple(decode_image(encode(image), cfg_for("RGB"))[0, 0]) == (10, 200, 30)


def test_palette_transparency_composites_on_white() -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pixels = decode_image(encode(image, transparency=1), cfg_for("RGB"))
    assert np.all(pixels == 255)


def test_rgba_composites_on_white() -> None:
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    image.putpixel((0, 0), (0, 0, 0, 255))  # opaque black
    image.putpixel((1, 0), (0, 0, 0, 128))  # half-transparent black
    pixels = decode_image(encode(image), cfg_for("RGB"))
    assert tuple(pixels[3, 3]) == (255, 255, 255)
    assert tuple(pixels[0, 0]) == (0, 0, 0)
    assert all(abs(int(v) - 127) <= 1 for v in pixels[0, 1])


def test_la_and_one_bit() -> None:
    la = Image.new("LA", (4, 4), (0, 0))  # transparent black -> white
    assert np.all(decode_image(encode(la), cfg_for("L")) == 255)
    one_bit = Image.new("1", (4, 4), 1)
    one_bit.putpixel((0, 0), 0)
    pixels = decode_image(encode(one_bit), cfg_for("L"))
    assert pixels[0, 0, 0] == 0 and pixels[3, 3, 0] == 255


def test_cmyk_tiff() -> None:
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # red in CMYK
    assert tuple(decode_image(encode(cmyk, "TIFF"), cfg_for("RGB"))[2, 2]) == (255, 0, 0)


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    values = np.full((4, 4), 257 * 100, dtype=np.uint16)  # 100 in 8-bit terms
    values[0, 0] = 65535
    png = encode(Image.fromarray(values))
    assert Image.open(BytesIO(png)).mode == "I;16"
    pixels = decode_image(png, cfg_for("L"))
    assert pixels[0, 0, 0] == 255
    assert pixels[2, 2, 0] == 100  # Pillow's own convert("L") would clip this to 255


def test_exif_orientation_6_rotates_clockwise() -> None:
    image = Image.new("RGB", (4, 2), (0, 0, 0))  # stored 4 wide, 2 high
    image.putpixel((0, 0), (255, 0, 0))  # stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90° clockwise
    pixels = decode_image(encode(image, exif=exif), cfg_for("RGB", size=(4, 2)))
    assert pixels.shape == (4, 2, 3)  # now 4 high, 2 wide
    assert tuple(pixels[0, 1]) == (255, 0, 0)  # top-left moved to top-right
    assert pixels[:, :, 0].sum() == 255


def test_resize_modes() -> None:
    # 8 wide x 4 high: columns 0-1 red, 2-5 green, 6-7 blue
    image = Image.new("RGB", (8, 4), (0, 255, 0))
    for x in range(8):
        for y in range(4):
            if x < 2:
                image.putpixel((x, y), (255, 0, 0))
            elif x >= 6:
                image.putpixel((x, y), (0, 0, 255))
    png = encode(image)

    crop = decode_image(png, cfg_for("RGB", (4, 4), resize="center_crop"))
    assert crop.shape == (4, 4, 3) and np.all(crop == [0, 255, 0])  # only the green middle survives

    squash = decode_image(png, cfg_for("RGB", (4, 4), resize="squash"))
    assert squash[0, 0, 0] > 200 and squash[0, 3, 2] > 200  # red and blue edges kept, squeezed

    white = encode(Image.new("L", (8, 4), 255))
    pad = decode_image(white, cfg_for("L", (8, 8), resize="pad"))[:, :, 0]
    assert pad.shape == (8, 8)
    assert np.all(pad[:2] == 0) and np.all(pad[6:] == 0) and np.all(pad[2:6] == 255)


def test_gif_uses_first_frame_only() -> None:
    frames = [Image.new("RGB", (4, 4), colour) for colour in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert getattr(Image.open(BytesIO(gif)), "n_frames", 1) == 3
    assert tuple(decode_image(gif, cfg_for("RGB"))[1, 1]) == (255, 0, 0)


# ---------------------------------------------------------------------------------------------------
# Hostile and broken files


def test_header_claiming_too_many_pixels_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    filters_before = list(warnings.filters)
    cfg = ImageConfig()

    bomb = png_header_only(8000, 8000)  # 64 M pixels: under Pillow's limit, over ours (40 M)
    assert len(bomb) < 80
    start = time.perf_counter()
    with pytest.raises(MediaError, match=r"8000x8000 pixels, over the limit of 40000000") as info:
        decode_image(bomb, cfg)
    assert "max_pixels" in info.value.fix

    for width, height in [(10000, 10000), (20000, 10000)]:  # Pillow's warning and its error
        with pytest.raises(MediaError, match="limit"):
            decode_image(png_header_only(width, height), cfg)
    assert time.perf_counter() - start < 1.0
    assert warnings.filters == filters_before  # the warning became an error only inside decode_image


def test_zero_width_is_refused() -> None:
    for width, height in [(0, 100000), (100, 0)]:
        with pytest.raises(MediaError, match="zero width or height"):
            decode_image(png_header_only(width, height), ImageConfig())


def test_truncated_png_is_refused() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    png = encode(Image.fromarray(noise))
    Image.open(BytesIO(png[: len(png) // 2]))  # the header alone still opens
    with pytest.raises(MediaError, match="truncated or corrupt"):
        decode_image(png[: len(png) // 2], ImageConfig())


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "EPS"),
        (b"%PDF-1.4\n1 0 obj << >> endobj\n%%EOF\n", "PDF"),
        (encode(Image.new("RGB", (16, 16)), "ICO"), "ICO"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00", "WAV"),
    ],
)
def test_formats_outside_the_allowlist_are_named(data: bytes, fmt: str) -> None:
    with pytest.raises(MediaError, match=f"format '{fmt}.*' not allowed; allowed: PNG, JPEG"):
        decode_image(data, ImageConfig())


def test_allowlist_is_configurable() -> None:
    jpeg = encode(Image.new("RGB", (8, 8), (0, 128, 0)), "JPEG")
    assert decode_image(jpeg, cfg_for("RGB")).shape == (4, 4, 3)
    with pytest.raises(MediaError, match=r"format 'JPEG' not allowed; allowed: PNG$"):
        decode_image(jpeg, cfg_for("RGB", formats=["png"]))


def test_garbage_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="not a recognised image"):
        decode_image(b"this is not an image at all", ImageConfig())
    with pytest.raises(MediaError, match="not found"):
        decode_image(tmp_path / "missing.png", ImageConfig())
    with pytest.raises(MediaError, match="limit"):
        decode_image(encode(Image.new("RGB", (8, 8))), cfg_for(max_file_bytes=10))


# ---------------------------------------------------------------------------------------------------
# Config and normalisation


def test_config_round_trips_and_validates() -> None:
    cfg = ImageConfig(mode="L", size=(32, 48), resize="pad", mean=(0.1,), std=(0.3,), formats=["png", "gif"])
    assert cfg.formats == ["PNG", "GIF"]
    assert ImageConfig.model_validate(cfg.model_dump()) == cfg
    assert ImageConfig.model_validate_json(cfg.model_dump_json()) == cfg

    with pytest.raises(ValidationError, match="3 channel"):
        ImageConfig(mode="RGB", mean=(0.1, 0.2))
    with pytest.raises(ValidationError, match="std must be > 0"):
        ImageConfig(std=(0.0,))
    with pytest.raises(ValidationError, match="unknown image format"):
        ImageConfig(formats=["NOPE"])
    with pytest.raises(ValidationError):
        ImageConfig(size=(0, 10))
    with pytest.raises(ValidationError):
        ImageConfig.model_validate({"max_pixel": 5})  # typo: unknown keys are refused


def test_image_to_tensor_normalises_per_channel() -> None:
    cfg = cfg_for("RGB", (2, 2), mean=(0.0, 0.5, 1.0), std=(1.0, 0.5, 0.25))
    pixels = np.zeros((2, 2, 3), dtype=np.uint8)
    pixels[0, 0] = 255
    x = image_to_tensor(pixels, cfg)
    assert x.shape == (3, 2, 2) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, 1.0, 0.0]))
    assert torch.allclose(x[:, 1, 1], torch.tensor([0.0, -1.0, -4.0]))
    assert torch.allclose(x[:, 1, 1], torch.tensor(normalised_black(cfg)))

    grey = cfg_for("L", (2, 2))  # default mean = std = 0.5: [0, 255] -> [-1, 1]
    x = image_to_tensor(np.array([[[0], [255]], [[0], [0]]], dtype=np.uint8), grey)
    assert x.shape == (1, 2, 2) and x[0, 0, 1] == 1.0 and x[0, 0, 0] == -1.0
    with pytest.raises(ValueError, match="expected pixels"):
        image_to_tensor(pixels, grey)


def test_a_batch_of_pixels_becomes_the_tensors_each_image_would() -> None:
    cfg = cfg_for("RGB", (5, 4), mean=(0.1, 0.5, 0.9), std=(0.3, 0.5, 0.25))
    pixels = np.random.default_rng(0).integers(0, 256, size=(6, 5, 4, 3), dtype=np.uint8)
    batch = images_to_tensor(pixels, cfg)
    assert batch.shape == (6, 3, 5, 4) and batch.is_contiguous()
    assert torch.equal(batch, torch.stack([image_to_tensor(p, cfg) for p in pixels]))
    with pytest.raises(ValueError, match="expected pixels"):
        images_to_tensor(pixels[0], cfg)


# ---------------------------------------------------------------------------------------------------
# Augmentation


def test_augment_is_deterministic_per_seed_and_keeps_shape() -> None:
    image = torch.randn(3, 20, 30)
    cfg = ImageAugmentConfig(horizontal_flip=True)

    def run(seed: int) -> torch.Tensor:
        return augment_image(image, cfg, torch.Generator().manual_seed(seed), fill=(-1.0, -2.0, -3.0))

    assert run(0).shape == image.shape
    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))


def test_a_batch_warped_at_once_equals_each_image_warped_alone() -> None:
    """apply_image_augment over a batch (one grid, one resampling) gives bitwise what augment_image gives
    each image, erasing and per-channel fill included, and draws the generator the same way."""
    cfg = ImageAugmentConfig(horizontal_flip=True, erase_probability=0.5)
    images = torch.randn(6, 3, 20, 30)
    fill = (-1.0, -2.0, -3.0)
    alone = [augment_image(images[i], cfg, torch.Generator().manual_seed(i), fill=fill) for i in range(6)]
    generators = [torch.Generator().manual_seed(i) for i in range(6)]
    draws = [draw_image_augment(20, 30, cfg, g) for g in generators]
    assert any(d.erase is not None for d in draws) and any(d.erase is None for d in draws)
    together = apply_image_augment(images, draws, fill)
    for i in range(6):
        assert torch.equal(together[i], alone[i])
    after_alone = torch.Generator().manual_seed(0)
    augment_image(images[0], cfg, after_alone, fill=fill)
    assert torch.equal(after_alone.get_state(), generators[0].get_state())


def test_augment_draws_are_pinned() -> None:
    """The draws of a seed are the same as every earlier version's (a resumed or repeated run replays)."""
    cfg = ImageAugmentConfig(horizontal_flip=True, erase_probability=1.0)
    draw = draw_image_augment(20, 30, cfg, torch.Generator().manual_seed(0))
    expected = (0.8735435492362844, -0.04232046961747972, 0.005967690631948682)
    assert draw.theta[:3] == pytest.approx(expected, abs=1e-12)
    assert draw.theta[3:] == pytest.approx(
        (0.10373799430775502, 0.9516766452350094, 0.14118523315956108), abs=1e-12
    )
    assert draw.erase == (5, 17, 5, 7)
    image = torch.arange(600.0).reshape(1, 20, 30)
    out = augment_image(image, cfg, torch.Generator().manual_seed(0), fill=-1.0)
    assert float(out.sum()) == pytest.approx(176658.4531, abs=0.05)


def test_augment_disabled_and_zero_strength_are_identity() -> None:
    image = torch.randn(3, 12, 18)
    disabled = ImageAugmentConfig(enabled=False)
    assert augment_image(image, disabled, torch.Generator().manual_seed(0)) is image

    # enabled but every range collapsed: the affine map must be exactly the identity grid
    still = ImageAugmentConfig(
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        max_rotation_degrees=0,
        max_translate=0,
        erase_probability=0.0,
    )
    out = augment_image(image, still, torch.Generator().manual_seed(0))
    assert torch.allclose(out, image, atol=1e-5)


def test_augment_flip_mirrors_exactly() -> None:
    image = torch.randn(1, 6, 10)
    flip_only = ImageAugmentConfig(
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        max_rotation_degrees=0,
        max_translate=0,
        horizontal_flip=True,
        erase_probability=0.0,
    )
    outs = [augment_image(image, flip_only, torch.Generator().manual_seed(s)) for s in range(12)]
    flipped = [torch.allclose(o, image.flip(-1), atol=1e-5) for o in outs]
    unchanged = [torch.allclose(o, image, atol=1e-5) for o in outs]
    assert all(f or u for f, u in zip(flipped, unchanged, strict=True))
    assert any(flipped) and any(unchanged)


def test_augment_fills_outside_with_the_given_value() -> None:
    image = torch.full((2, 16, 16), 1.0)
    shift_only = ImageAugmentConfig(
        crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), max_rotation_degrees=0, max_translate=0.5
    )
    fill = (-1.0, -3.0)
    out = torch.stack(
        [augment_image(image, shift_only, torch.Generator().manual_seed(s), fill) for s in range(4)]
    )
    for channel, value in enumerate(fill):
        values = out[:, channel]
        assert values.min() >= value - 1e-5 and values.max() <= 1.0 + 1e-5  # only blends of fill and image
        assert torch.isclose(values, torch.tensor(value)).any()  # some pixels came from outside


NO_AFFINE = {
    "crop_scale": (1.0, 1.0),
    "crop_ratio": (1.0, 1.0),
    "max_rotation_degrees": 0,
    "max_translate": 0,
}


def test_erasing_paints_one_rectangle_of_the_fill_within_the_area_range() -> None:
    image = torch.full((2, 20, 30), 5.0)
    cfg = ImageAugmentConfig(**NO_AFFINE, erase_probability=1.0, erase_scale=(0.05, 0.2))
    fill = (-1.0, -3.0)
    for seed in range(20):
        out = augment_image(image, cfg, torch.Generator().manual_seed(seed), fill)
        erased = ~torch.isclose(out[0], torch.tensor(5.0), atol=1e-4)  # (H, W)
        rows, cols = erased.any(dim=1).nonzero().flatten(), erased.any(dim=0).nonzero().flatten()
        # exactly the bounding box of the erased pixels is erased: one solid rectangle
        box = erased[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all() and int(erased.sum()) == box.numel()
        assert 0.05 * 600 - 30 <= box.numel() <= 0.2 * 600 + 30  # area range, up to rounding of the sides
        for channel, value in enumerate(fill):
            assert torch.allclose(out[channel][erased], torch.tensor(value))
            assert torch.allclose(out[channel][~erased], torch.tensor(5.0), atol=1e-4)


def test_erasing_probability_zero_draws_only_the_affine_and_half_erases_some() -> None:
    image = torch.randn(1, 16, 16)
    never = ImageAugmentConfig(erase_probability=0.0)
    for seed in range(3):
        # p = 0 draws from the generator exactly what the affine draws (flip, rotation + shift, crop), so
        # runs configured without erasing replay as they did before erasing existed
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        augment_image(image, never, g1)
        _flip_matrix(never, g2)
        _rotate_shift_matrix(16, 16, never, g2)
        _crop_matrix(never, g2)
        assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))
        # with p > 0 the erase draw comes on top, so the streams part
        g3, g4 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        augment_image(image, ImageAugmentConfig(erase_probability=0.5), g3)
        augment_image(image, never, g4)
        assert not torch.equal(torch.rand(3, generator=g3), torch.rand(3, generator=g4))
    half = ImageAugmentConfig(**NO_AFFINE, erase_probability=0.5)
    flat = torch.ones(1, 16, 16)
    hit = [
        not torch.allclose(augment_image(flat, half, torch.Generator().manual_seed(s), -1.0), flat)
        for s in range(40)
    ]
    assert 8 <= sum(hit) <= 32


def test_erasing_ranges_are_validated() -> None:
    with pytest.raises(ValueError, match="area fraction"):
        ImageAugmentConfig(erase_scale=(0.3, 0.1))
    with pytest.raises(ValueError, match="aspect ratio"):
        ImageAugmentConfig(erase_ratio=(0.0, 2.0))
    with pytest.raises(ValueError):
        ImageAugmentConfig(erase_probability=1.5)
